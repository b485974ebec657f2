//! The bridge's tests against real servers (`common` starts them).
//!
//! One test binary for all of them (each `tests/*.rs` would be its own
//! binary, linking the whole crate again: slow to link and gigabytes of
//! disk). Run one file's tests with `cargo test -p <crate> --test
//! integration <file>::`.

mod common;

mod amqp;
mod commands;
mod http;
mod mqtt;
mod nats;
mod postgres;
mod tls;
