//! The broker's black-box tests, one module per concern (`common` is the
//! harness). The cluster tests (`tests/cluster/`, three nats-servers
//! and several brokers per test) are a binary of their own, run alone.
//!
//! One test binary for all of them (each `tests/*.rs` would be its own
//! binary, linking the whole crate again: slow to link and gigabytes of
//! disk). Run one file's tests with `cargo test -p <crate> --test
//! integration <file>::`.

mod common;

mod acl;
mod auth;
mod certs;
mod check_config;
mod codec_props;
mod connect;
mod docs_samples;
mod drain;
mod dual_stack;
mod durability;
mod fleets;
mod flow_control;
mod http_admin;
mod image_config;
mod keepalive;
mod malformed;
mod mqtt5;
mod observability;
mod proxy_protocol;
mod publish_qos;
mod quotas;
mod reload;
mod retained;
mod sessions;
mod subscribe;
mod sys;
mod tls;
mod websocket;
mod will;
