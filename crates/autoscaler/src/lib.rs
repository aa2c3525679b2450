//! forgejo-autoscaler: one fresh Forgejo Actions runner per waiting job, nothing left behind.
//!
//! See ARCHITECTURE.md at the repository root for the code map and the invariants.

pub mod backend;
pub mod cleanup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod forgejo;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod pools;
pub mod provision;
pub mod reconcile;
pub mod runtime;
pub mod secret;
pub mod store;
