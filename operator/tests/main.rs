//! The operator's tests of its binary, chart, examples and generated CRDs.
//!
//! One test binary for all of them (each `tests/*.rs` would be its own
//! binary, linking the whole crate again: slow to link and gigabytes of
//! disk). Run one file's tests with `cargo test -p <crate> --test
//! integration <file>::`.

mod common;

mod bridge_examples;
mod chart;
mod crd_drift;
mod examples;
mod fleet_examples;
mod run;
