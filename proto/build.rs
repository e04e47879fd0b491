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
//!
//! With the `json` feature, `pbjson-build` also writes `<package>.serde.rs` (serde
//! impls following the protobuf JSON mapping, proto field names on output). Its
//! output is adjusted in two places, see [`json`].

use std::path::PathBuf;

use anyhow::{Context, Result};

/// File name of the encoded `FileDescriptorSet` written into `OUT_DIR`.
const DESCRIPTOR_SET: &str = "periscope_proto_descriptor.bin";

const PROTOS: &[&str] = &[
    "api/flow/flow.proto",
    "api/relay/relay.proto",
    "api/peer/peer.proto",
    "api/observer/observer.proto",
    "api/periscope/policy.proto",
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

    for package in PACKAGES {
        strip_deprecated_attributes(&out_dir.join(format!("{package}.rs")))?;
    }

    #[cfg(feature = "json")]
    json::generate(&out_dir, &out_dir.join(DESCRIPTOR_SET))?;
    Ok(())
}

/// Proto packages, which are also the Rust modules (`periscope.policy` is
/// `periscope::policy`) and the generated file names.
const PACKAGES: [&str; 5] = ["flow", "relay", "peer", "observer", "periscope.policy"];

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

/// Generation of the `json` feature's serde impls.
///
/// pbjson-build expects the well-known types to come from `pbjson-types`, but the
/// message structs keep `prost-types` (other crates build `Flow.time` from
/// `prost_types::Timestamp`, and a feature must not change field types under
/// them). pbjson's generated code never names a field's type, it only needs
/// `Serialize`/`Deserialize` on it, so two edits of its output are enough:
///
/// 1. `Timestamp` / `FieldMask` fields are (de)serialized through the adapters in
///    `src/json.rs` (RFC 3339 with `Z`, comma-joined camelCase paths). Wrapper
///    types need nothing: prost already maps them to `Option<bool>`, `Option<u32>`...
/// 2. Enum values without a name are written as their number, like protojson,
///    instead of failing the whole message.
///
/// Every edit must hit exactly the expected number of places; otherwise the build
/// fails instead of silently producing different JSON after a pbjson upgrade.
#[cfg(feature = "json")]
mod json {
    use std::collections::BTreeMap;
    use std::path::Path;

    use anyhow::{Context, Result, bail, ensure};
    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Label};

    use super::PACKAGES;

    /// Well-known message types that have an adapter in `src/json.rs`.
    const ADAPTED: [(&str, &str); 2] = [
        (".google.protobuf.Timestamp", "::prost_types::Timestamp"),
        (".google.protobuf.FieldMask", "::prost_types::FieldMask"),
    ];

    /// Well-known types that prost maps to plain Rust values (`Option<u32>` ...),
    /// which serialize as the protobuf JSON mapping wants without help. 64-bit
    /// wrappers are left out on purpose: they would need quoting.
    const PLAIN: [&str; 5] = [
        ".google.protobuf.BoolValue",
        ".google.protobuf.UInt32Value",
        ".google.protobuf.Int32Value",
        ".google.protobuf.StringValue",
        ".google.protobuf.FloatValue",
    ];

    const ENUM_ERROR: &str =
        r#".map_err(|_| serde::ser::Error::custom(format!("Invalid variant {}", "#;

    /// One singular field of an adapted well-known type.
    struct WktField {
        name: String,
        rust_type: &'static str,
    }

    pub fn generate(out_dir: &Path, descriptor_path: &Path) -> Result<()> {
        let descriptors = std::fs::read(descriptor_path)
            .with_context(|| format!("reading {}", descriptor_path.display()))?;
        let packages: Vec<String> = PACKAGES.iter().map(|p| format!(".{p}")).collect();
        pbjson_build::Builder::new()
            .register_descriptors(&descriptors)
            .context("registering descriptors with pbjson-build")?
            .out_dir(out_dir)
            .preserve_proto_field_names()
            .build(&packages)
            .context("generating serde impls")?;

        let set = FileDescriptorSet::decode(descriptors.as_slice())
            .context("decoding the descriptor set")?;
        let mut wkt_fields = BTreeMap::new();
        for file in set.file.iter().filter(|f| PACKAGES.contains(&f.package())) {
            for message in &file.message_type {
                collect_wkt_fields(&format!("{}.", file.package()), message, &mut wkt_fields)?;
            }
        }

        for package in PACKAGES {
            let path = out_dir.join(format!("{package}.serde.rs"));
            let code = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let code = adapt_well_known_types(&code, &wkt_fields)
                .with_context(|| format!("adapting well-known types in {}", path.display()))?;
            let code = number_for_unknown_enum_values(&code)
                .with_context(|| format!("adapting enum serialization in {}", path.display()))?;
            std::fs::write(&path, code).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Records, per full message name (`observer.GetFlowsRequest.Experimental`),
    /// its fields of adapted well-known types; rejects well-known types that would
    /// need an adapter we do not have.
    fn collect_wkt_fields(
        prefix: &str,
        message: &DescriptorProto,
        out: &mut BTreeMap<String, Vec<WktField>>,
    ) -> Result<()> {
        let full_name = format!("{prefix}{}", message.name());
        for field in &message.field {
            let type_name = field.type_name();
            if !type_name.starts_with(".google.protobuf.") || PLAIN.contains(&type_name) {
                continue;
            }
            let Some((_, rust_type)) = ADAPTED.iter().find(|(proto, _)| *proto == type_name) else {
                bail!(
                    "{full_name}.{}: no JSON adapter for {type_name}",
                    field.name()
                );
            };
            ensure!(
                field.label() != Label::Repeated && field.oneof_index.is_none(),
                "{full_name}.{}: repeated or oneof {type_name} fields are not adapted",
                field.name()
            );
            ensure!(
                field
                    .name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{full_name}.{}: only snake_case names are adapted",
                field.name()
            );
            out.entry(full_name.clone()).or_default().push(WktField {
                name: field.name().to_owned(),
                rust_type,
            });
        }
        for nested in &message.nested_type {
            collect_wkt_fields(&format!("{full_name}."), nested, out)?;
        }
        Ok(())
    }

    /// Routes the adapted fields through `crate::json::{WktRef, Wkt}`.
    fn adapt_well_known_types(
        code: &str,
        wkt_fields: &BTreeMap<String, Vec<WktField>>,
    ) -> Result<String> {
        let mut out = String::with_capacity(code.len() + 1024);
        for block in impl_blocks(code) {
            let Some(fields) = message_name(block).and_then(|name| wkt_fields.get(name)) else {
                out.push_str(block);
                continue;
            };
            let mut block = block.to_owned();
            for field in fields {
                let name = &field.name;
                let (from, to) = if block.starts_with("impl serde::Serialize") {
                    (
                        format!("struct_ser.serialize_field(\"{name}\", v)?;"),
                        format!(
                            "struct_ser.serialize_field(\"{name}\", &crate::json::WktRef(v))?;"
                        ),
                    )
                } else {
                    (
                        format!("{name}__ = map_.next_value()?;"),
                        format!(
                            "{name}__ = map_.next_value::<::std::option::Option<crate::json::Wkt<{}>>>()?.map(|w| w.0);",
                            field.rust_type
                        ),
                    )
                };
                ensure!(
                    block.matches(&from).count() == 1,
                    "expected exactly one `{from}` in:\n{block}"
                );
                block = block.replacen(&from, &to, 1);
            }
            out.push_str(&block);
        }
        Ok(out)
    }

    /// Splits generated code at each top-level `impl`.
    fn impl_blocks(code: &str) -> Vec<&str> {
        let mut starts: Vec<usize> = code.match_indices("\nimpl").map(|(i, _)| i + 1).collect();
        starts.insert(0, 0);
        starts.dedup();
        starts.push(code.len());
        starts.windows(2).map(|w| &code[w[0]..w[1]]).collect()
    }

    /// The full proto name a generated impl block is for, if it is a message.
    fn message_name(block: &str) -> Option<&str> {
        ["serialize_struct(\"", "deserialize_struct(\""]
            .iter()
            .find_map(|marker| {
                let start = block.find(marker)? + marker.len();
                let len = block[start..].find('"')?;
                Some(&block[start..start + len])
            })
    }

    /// Rewrites
    /// ```text
    /// let v = Verdict::try_from(self.verdict)
    ///     .map_err(|_| serde::ser::Error::custom(format!("Invalid variant {}", self.verdict)))?;
    /// ```
    /// (and the same inside the closure used for repeated enums) to
    /// `Ok::<_, S::Error>(crate::json::EnumValue::<Verdict>::new(self.verdict))?`.
    fn number_for_unknown_enum_values(code: &str) -> Result<String> {
        let lines: Vec<&str> = code.split_inclusive('\n').collect();
        let mut out: Vec<String> = Vec::with_capacity(lines.len());
        for line in lines {
            let Some(at) = line.find(ENUM_ERROR) else {
                out.push(line.to_owned());
                continue;
            };
            let rest = &line[at + ENUM_ERROR.len()..];
            let close = rest
                .find(")))")
                .with_context(|| format!("unexpected enum error line: {line}"))?;
            let suffix = &rest[close + 3..];

            let previous = out
                .pop()
                .with_context(|| format!("enum error line without a conversion: {line}"))?;
            let body = previous.trim_end();
            let indent_len = body.len() - body.trim_start().len();
            let (indent, body) = body.split_at(indent_len);
            let (prefix, conversion) = match body.strip_prefix("let v = ") {
                Some(conversion) => ("let v = ", conversion),
                None => ("", body),
            };
            let (enum_type, value) = conversion
                .strip_suffix(')')
                .and_then(|c| c.split_once("::try_from("))
                .with_context(|| format!("unexpected enum conversion: {previous}"))?;
            let wrapped = format!("crate::json::EnumValue::<{enum_type}>::new({value})");
            out.push(match (prefix, suffix.trim_end()) {
                // A plain `let`: nothing can fail any more.
                ("let v = ", "?;") => format!("{indent}{prefix}{wrapped};\n"),
                // Inside the closure collected into a `Result` for repeated fields.
                ("", "") => format!("{indent}Ok::<_, S::Error>({wrapped})\n"),
                _ => bail!("unexpected enum conversion: {previous}{line}"),
            });
        }
        Ok(out.concat())
    }
}
