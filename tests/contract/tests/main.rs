//! Contract tests: the operator's rendered objects on real brokers. The
//! simulated cluster (`tests/cluster_rollout.rs`) is a binary of its own.
//!
//! One test binary for all of them (each `tests/*.rs` would be its own
//! binary, linking the whole crate again: slow to link and gigabytes of
//! disk). Run one file's tests with `cargo test -p <crate> --test
//! integration <file>::`.

mod common;

mod broker;
mod ca_rotation;
mod fleets;
mod managed_nats;
mod users;
