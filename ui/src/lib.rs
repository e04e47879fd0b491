//! Periscope's web UI: a Leptos app rendered in the browser (wasm), served by the relay.
//!
//! Pure logic (queries and routes, layout, formatting, the SVG text) lives in plain modules
//! with host unit tests; the browser parts are in [`app`].
#![forbid(unsafe_code)]

pub mod format;
pub mod layout;
pub mod mapstate;
pub mod query;
pub mod svg;

pub mod api;
pub mod app;
