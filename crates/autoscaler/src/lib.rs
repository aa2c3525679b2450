//! forgejo-autoscaler library.
