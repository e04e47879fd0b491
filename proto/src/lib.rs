//! Hubble-compatible API types for Periscope (Cilium API v1.14 wire format).
//!
//! The `.proto` files live in `proto/api/` (include root for `protoc -I`); the code is
//! generated at build time by `tonic-prost-build` with a vendored `protoc`.
//!
//! - Messages and enums are always available, with well-known types from
//!   [`prost_types`] (`Timestamp`, `BoolValue` as `Option<bool>`, ...).
//! - Feature `server`: `observer::observer_server`, `peer::peer_server` and
//!   `periscope::policy::policies_server`.
//! - Feature `client`: `observer::observer_client`, `peer::peer_client` and
//!   `periscope::policy::policies_client` (including `connect(addr)`).
//! - Feature `json`: serde `Serialize`/`Deserialize` for every message and enum,
//!   following the protobuf JSON mapping the way the `hubble` CLI prints it
//!   (proto field names, enums by name, RFC 3339 timestamps); see [`json`].
//! - Without features the crate does not depend on tonic at all.
//!
//! Fields marked `[deprecated = true]` in the schema (e.g. `Flow.Summary`) are
//! *not* deprecated in Rust: Hubble clients still read them, so producers fill them.

#![forbid(unsafe_code)]

/// Package `flow`: `Flow`, its sub-messages, `FlowFilter`, events and enums.
pub mod flow {
    include!(concat!(env!("OUT_DIR"), "/flow.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/flow.serde.rs"));
}

/// Package `relay`: node status notices sent by the relay inside `GetFlows`.
pub mod relay {
    include!(concat!(env!("OUT_DIR"), "/relay.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/relay.serde.rs"));
}

/// Package `peer`: the `peer.Peer` service (peer discovery for relays).
pub mod peer {
    include!(concat!(env!("OUT_DIR"), "/peer.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/peer.serde.rs"));
}

/// Package `observer`: the `observer.Observer` service and its messages.
pub mod observer {
    include!(concat!(env!("OUT_DIR"), "/observer.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/observer.serde.rs"));
}

/// Periscope's own APIs (not Hubble's).
pub mod periscope {
    /// Package `periscope.policy`: the `Policies` service (the policies in force, as agents
    /// report them and relays merge them).
    pub mod policy {
        include!(concat!(env!("OUT_DIR"), "/periscope.policy.rs"));
        #[cfg(feature = "json")]
        include!(concat!(env!("OUT_DIR"), "/periscope.policy.serde.rs"));
    }
}

pub mod util;

#[cfg(feature = "json")]
pub mod json;

/// Encoded `google.protobuf.FileDescriptorSet` of every file above, including the
/// imported `google/protobuf/*.proto` files (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/periscope_proto_descriptor.bin"));

#[cfg(test)]
mod tests;
