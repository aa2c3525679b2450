//! The `forgejo-autoscaler` binary: a thin shell over the library (see `cli`).
//!
//! It is also a multi-call binary: started under the name `fake-forgejo-runner` (the demo
//! links that name to it), it is the runner stand-in, so `cargo run -- demo` needs no
//! second build step.

use std::process::ExitCode;

fn main() -> ExitCode {
    let invoked_as = std::env::args_os().next().and_then(|a| {
        std::path::Path::new(&a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    if invoked_as.as_deref() == Some("fake-forgejo-runner") {
        use clap::Parser;
        let cli = fake_forgejo_runner::cli::Cli::parse();
        fake_forgejo_runner::logging::init();
        return fake_forgejo_runner::run(cli);
    }
    forgejo_autoscaler::cli::main()
}
