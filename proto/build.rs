//! Generates the Rust code for the Hubble-compatible API from `api/**/*.proto`.
//!
//! The protobuf compiler and the `google/protobuf/*.proto` includes come from the
//! `protoc-bin-vendored` crate, so building needs nothing installed on the system
//! (Debian's `protobuf-compiler` ships without the well-known-type includes, and
//! fresh CI machines may not have it at all). Well-known types map to `prost-types`.
//!
//! Server and client stubs are always generated, but their modules carry
//! `#[cfg(feature = "server")]` / `#[cfg(feature = "client")]`, so without those
//! features the crate compiles (and links) no tonic code at all.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// File name of the encoded `FileDescriptorSet` written into `OUT_DIR`.
const DESCRIPTOR_SET: &str = "periscope_proto_descriptor.bin";

const PROTOS: &[&str] = &[
    "api/flow/flow.proto",
    "api/relay/relay.proto",
    "api/peer/peer.proto",
    "api/observer/observer.proto",
];

fn main() -> Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR is not set")?);

    let protoc = protoc_bin_vendored::protoc_bin_path().context("locating vendored protoc")?;
    let wkt_include =
        protoc_bin_vendored::include_path().context("locating vendored protobuf includes")?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    println!("cargo:rerun-if-changed=api");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let includes = [PathBuf::from("api"), wkt_include];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .server_mod_attribute(".", r#"#[cfg(feature = "server")]"#)
        .client_mod_attribute(".", r#"#[cfg(feature = "client")]"#)
        .file_descriptor_set_path(out_dir.join(DESCRIPTOR_SET))
        .compile_with_config(config, &protos, &includes)
        .context("compiling api/**/*.proto")?;

    for package in ["flow", "relay", "peer", "observer"] {
        strip_deprecated_attributes(&out_dir.join(format!("{package}.rs")))?;
    }
    Ok(())
}

/// Drops the `#[deprecated]` attributes prost puts on fields marked
/// `[deprecated = true]` (Flow.drop_reason, Flow.reply, Flow.Summary,
/// ServiceUpsertNotification.traffic_policy).
///
/// The option stays in the .proto files and in the descriptor set, but for us
/// these are not legacy: Hubble clients still read them (the CLI prints
/// `Summary`), so every producer must fill them, and a Rust deprecation would
/// force `#[allow(deprecated)]` onto every crate that builds a `Flow`.
fn strip_deprecated_attributes(path: &std::path::Path) -> Result<()> {
    let code =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let kept: String = code
        .split_inclusive('\n')
        .filter(|line| line.trim() != "#[deprecated]")
        .collect();
    if kept.len() != code.len() {
        std::fs::write(path, kept).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
