//! Forgejo simulator (see README.md).
