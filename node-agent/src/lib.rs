//! Periscope node agent: loads the eBPF datapath, turns topology and policies into map entries,
//! reads the per-CPU perf ring and decodes flow events into Hubble flows.
pub mod accounting;
pub mod agent;
pub mod datapath;
pub mod decoder;
pub mod dns;
pub mod etcd;
pub mod events;
pub mod export;
pub mod fieldmask;
/// Flow filters live in their own crate (the relay and its alert rules use them too).
pub use periscope_filter as filters;
pub mod identity;
pub mod k8s;
pub mod k8s_policy;
pub mod lb;
pub mod local_pods;
pub mod metrics;
pub mod monitor;
pub mod observer;
pub mod perf;
pub mod pipeline;
pub mod policy;
pub mod policy_export;
pub mod ring;
pub mod sources;
pub mod status;
