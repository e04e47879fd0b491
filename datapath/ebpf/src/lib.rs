//! Empty host library target; the programs are in `main.rs` (built for bpfel-unknown-none).
#![no_std]
