//! fake-forgejo-runner (see README.md).
