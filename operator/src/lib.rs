//! KubeMQTT operator: the `MqttBroker` resource and everything needed to
//! turn one into a running broker.
//!
//! - [`api`]: the custom resource (spec, status, CRD).
//! - [`plan`]: pure builders from a broker to the objects that run it.
//! - [`certs`]: CA and server certificates, and when to renew them.
//! - [`render`]: YAML in and out, for the `crd` and `render` commands.
//! - [`controller`]: the reconcile loop, its status, Events, and the
//!   `run` command (leader election, watches).
//! - [`metrics`], [`http`]: what the operator exposes to Prometheus and
//!   to the kubelet's probes.

// The documentation is read with `cargo doc --document-private-items`
// (scripts/test.sh checks it): links to private items are welcome.
#![allow(rustdoc::private_intra_doc_links)]
pub mod api;
pub mod certs;
pub mod controller;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod render;
