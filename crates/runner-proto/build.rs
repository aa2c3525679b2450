//! Generates the runner protocol types from `proto/` with protox (pure Rust, no `protoc`)
//! and prost-build, and derives `prost_reflect::ReflectMessage` on every message so that
//! the protojson codec can be driven by the real descriptors.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/ping/v1/ping.proto",
    "proto/runner/v1/messages.proto",
    "proto/runner/v1/forgejo_unverified.proto",
    "proto/runner/v1/services.proto",
];

fn main() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut compiler = protox::Compiler::new(["proto"]).expect("proto include path");
    compiler.include_imports(true);
    compiler
        .open_files(PROTOS)
        .unwrap_or_else(|e| panic!("invalid .proto file: {e}"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(
        out_dir.join("descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .expect("write descriptors");

    let mut config = prost_build::Config::new();
    for message in compiler.descriptor_pool().all_messages() {
        let name = message.full_name();
        if name.starts_with("google.") {
            continue;
        }
        config
            .type_attribute(name, "#[derive(::prost_reflect::ReflectMessage)]")
            .type_attribute(
                name,
                format!(r#"#[prost_reflect(message_name = "{name}")]"#),
            )
            .type_attribute(
                name,
                r#"#[prost_reflect(descriptor_pool = "crate::DESCRIPTOR_POOL")]"#,
            );
    }
    config
        .compile_fds(compiler.file_descriptor_set())
        .expect("generate Rust from descriptors");
}
