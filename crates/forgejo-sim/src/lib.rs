//! A Forgejo 13/14/15 Actions simulator: the `/api/v1` endpoints an autoscaler uses, the
//! Connect runner protocol under `/api/actions`, workflows turned into jobs, the server-side
//! timers, and a `/_sim/` control API for tests and benchmarks.
//!
//! The behaviour follows `forgejo-contract.md` (the team's specification); every place where a
//! version differs asks [`ForgejoVersion`] instead of comparing numbers inline.
//!
//! Code map:
//! - [`state`]: the in-memory model (users, repos, runs, jobs, tasks, runners) and every
//!   state transition, behind one mutex held only for short, allocation-light sections.
//! - [`auth`]: `/api/v1` credentials (basic, token) and token scopes.
//! - [`api`]: the `/api/v1` routes, one module per route group.
//! - [`connect`]: the `/api/actions` Connect service (both codecs, gzip, error bodies).
//! - [`scheduler`]: cron schedules of workflows and Forgejo's own cron jobs, in simulated time.
//! - [`control`]: the unauthenticated `/_sim/` API; [`faults`] and [`stats`] its middleware.

#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod clock;
pub mod connect;
pub mod control;
pub mod faults;
pub mod http;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod stats;
pub mod version;
pub mod workflow;

pub use server::SimServer;
pub use version::ForgejoVersion;

/// How a simulator instance behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub version: ForgejoVersion,
    pub admin_user: String,
    pub admin_password: String,
    /// 1.0 = real time; 60.0 = a minute of Forgejo time per real second. Scales cron
    /// schedules, the server-side timers and the runner status thresholds alike.
    pub time_scale: f64,
}
