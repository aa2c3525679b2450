//! Talking to Forgejo: the `/api/v1` HTTP client, the version capabilities, and the runner
//! protocol `Register` call used for Forgejo 13/14 identities.

mod client;
mod retry;
mod types;
mod version;

pub use client::{ForgejoClient, ForgejoClientOptions, RequestCounts as RequestCountsSnapshot};
pub use retry::RetryPolicy;
pub use types::{ApiScope, CreatedRunner, ForgejoError, Job, JobStatus, RunnerInfo};
pub use version::{Capabilities, ForgejoVersion};
