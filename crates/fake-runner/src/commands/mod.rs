//! The three commands of the stand-in.

pub mod create_runner_file;
pub mod one_job;
pub mod register;

use runner_proto::connect::Codec;

use crate::compat::Compat;
use crate::config::Config;

/// What every command needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Env {
    pub config: Config,
    pub codec: Codec,
    pub compat: Compat,
}
