//! Periscope node agent: loads the eBPF datapath, turns topology and policies into map entries,
//! reads the per-CPU perf ring and decodes flow events into Hubble flows.
pub mod agent;
pub mod datapath;
pub mod decoder;
pub mod identity;
pub mod monitor;
pub mod perf;
pub mod policy;
pub mod status;
