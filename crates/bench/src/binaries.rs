//! The executables the harness starts: the simulator, the autoscaler and the runner stand-in,
//! built with the harness's own profile (release under `cargo run --release`) and found next
//! to the harness's executable in the target directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

pub struct Binaries {
    pub sim: PathBuf,
    pub autoscaler: PathBuf,
    /// The separate stand-in of crates/fake-runner, used by every system.
    pub runner: PathBuf,
}

const PACKAGES: [&str; 3] = ["forgejo-sim", "forgejo-autoscaler", "fake-forgejo-runner"];

/// True when the harness itself was built with optimizations.
pub fn release_profile() -> bool {
    !cfg!(debug_assertions)
}

impl Binaries {
    /// Builds the three binaries (unless `build` is false) and returns their paths.
    pub fn locate(build: bool) -> anyhow::Result<Binaries> {
        let dir = profile_dir()?;
        if build {
            cargo_build()?;
        }
        let binaries = Binaries {
            sim: dir.join("forgejo-sim"),
            autoscaler: dir.join("forgejo-autoscaler"),
            runner: dir.join("fake-forgejo-runner"),
        };
        for path in [&binaries.sim, &binaries.autoscaler, &binaries.runner] {
            if !path.is_file() {
                bail!(
                    "{} is missing; build it with cargo build{} -p {}",
                    path.display(),
                    if release_profile() { " --release" } else { "" },
                    PACKAGES.join(" -p ")
                );
            }
        }
        Ok(binaries)
    }
}

/// The target directory (parent of the profile directory).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let dir = profile_dir()?;
    Ok(dir.parent().map(Path::to_path_buf).unwrap_or(dir))
}

/// `target/release` or `target/debug`: the directory of the harness's executable (tests run
/// from its `deps/` subdirectory).
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("executable without a directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

fn cargo_build() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"));
    if release_profile() {
        command.arg("--release");
    }
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", PACKAGES.join(", "));
    }
    Ok(())
}
