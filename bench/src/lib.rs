//! The `kubemqtt-bench` crate: two load generators for MQTT 3.1.1 brokers
//! that share their command line, their phases and their report.
//!
//! - `kubemqtt-bench` (src/main.rs) drives its own minimal client
//!   ([`client`], [`codec`]): several PUBLISHes per write, cheap per
//!   message, so it can saturate a broker from one core.
//! - `kubemqtt-bench-rumqttc` (src/bin/) drives the rumqttc library
//!   ([`rumqttc`]), an independent client, to cross-check that no figure
//!   depends on one client's speed or on one client's reading of the
//!   protocol.
//!
//! [`run`] runs a workload with either [`run::Driver`]; [`stats`] holds
//! the counters and the report, [`payload`] the stamped payloads, [`seen`]
//! the duplicate tracking. [`cluster`] holds the scenarios where clients
//! move between the nodes of a cluster (queued messages caught up on
//! another node, takeover, load through a rolling restart).

// The documentation is read with `cargo doc --document-private-items`
// (scripts/test.sh checks it): links to private items are welcome.
#![allow(rustdoc::private_intra_doc_links)]
pub mod cli;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod payload;
pub mod rumqttc;
pub mod run;
pub mod seen;
pub mod stats;
pub mod template;
