//! Periscope relay: one place to see the whole fleet.
//!
//! - peers ([`peers`]: static agents, an agent's Peer service, other relays as remote
//!   clusters; reconnects with backoff and jitter) and the time-ordered merge of their streams
//!   ([`merge`], [`fanout`]: bounded sort buffer, drain timeout, node-status events for peers
//!   that are down or fail), served as the Hubble-compatible Observer API on :4245
//!   ([`server`]), with optional mutual TLS ([`tls`]); settings in [`config`];
//! - [`ingest`]: the live merged stream of every peer's flows, for the store and the alerts;
//! - [`store`]: every flow written to ClickHouse (batched, spooled to disk during outages,
//!   replayed idempotently), and history read back through the same API;
//! - [`alerts`]: alert rules on denied flows, evaluated on the live merged stream;
//! - [`ui`]: the web UI's bundle and JSON API (service map, flows, policies), with live updates.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod codec;
pub mod config;
pub mod fanout;
pub mod history;
pub mod ingest;
pub mod k8s;
pub mod merge;
pub mod metrics;
pub mod peers;
pub mod policies;
pub mod server;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod ui;
pub use periscope_tls as tls;
pub mod window;
