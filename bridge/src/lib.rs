//! `kubemqtt-bridge`: moves messages from an MQTT broker into databases,
//! message queues and web services (acknowledging each to the broker only
//! once its sink committed it), and commands from them back into the
//! broker.
//!
//! Without the default `runtime` feature the crate holds only what the
//! operator needs to render and check a bridge configuration: [`config`],
//! [`expr`] and [`topic`].

// The documentation is read with `cargo doc --document-private-items`
// (scripts/test.sh checks it): links to private items are welcome.
#![allow(rustdoc::private_intra_doc_links)]
pub mod config;
pub mod expr;
pub mod topic;

#[cfg(feature = "runtime")]
pub mod commands;
#[cfg(feature = "runtime")]
pub mod message;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod mqtt;
#[cfg(feature = "runtime")]
pub mod route;
#[cfg(feature = "runtime")]
pub mod run;
#[cfg(feature = "runtime")]
pub mod secrets;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod sink;
#[cfg(feature = "runtime")]
pub mod source;
