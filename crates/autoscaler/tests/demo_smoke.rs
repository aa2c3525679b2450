//! The README's first command, on every Forgejo version: `demo` ends with every job done and
//! zero leftovers, and exits 0.

use std::process::Command;

fn demo(version: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-autoscaler"))
        .args([
            "demo",
            "--forgejo-version",
            version,
            "--jobs",
            "12",
            "--max-runners",
            "6",
        ])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo on {version} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("jobs done:            14/14 succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("leftovers:            0"), "{stdout}");
}

#[test]
fn demo_on_forgejo_13() {
    demo("13");
}

#[test]
fn demo_on_forgejo_14() {
    demo("14");
}

#[test]
fn demo_on_forgejo_15() {
    demo("15");
}
