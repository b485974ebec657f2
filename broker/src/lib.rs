//! KubeMQTT broker: an MQTT 3.1, 3.1.1 and 5.0 broker built for Kubernetes.
//!
//! Module map (one concern each):
//! - [`codec`]: packet model, decoder and encoder for every protocol version.
//! - [`topic`]: topic name and filter validation and matching.
//! - [`router`]: the subscription table (a trie) that maps a topic to subscribers.
//! - [`retained`]: retained messages, looked up by filter.
//! - [`store`]: durable storage of retained messages and persistent sessions.
//! - [`config`]: the TOML configuration file.
//! - [`check`]: `--check-config`'s reading of every file the configuration names.
//! - [`certs`]: `kubemqtt-broker certs`, certificates for a local TLS listener.
//! - [`log`]: mosquitto-style event and packet log lines (text or JSON).
//! - [`message`]: an application message as the broker shares it.
//! - [`session`]: per-client state that outlives connections.
//! - [`queue`]: a session's queue of deliveries, its limits and back-pressure.
//! - [`client`]: a connected client's identity and its connection's mailbox.
//! - [`cluster`]: several replicas sharing one NATS with JetStream.
//! - [`inflight`]: a session's window of sent, unacknowledged deliveries.
//! - [`budget`]: the broker-wide budget of queued bytes.
//! - [`broker`]: shared state; publish, attach/detach, expiry, wills, recovery.
//! - [`connection`]: the protocol state machine of one connection.
//! - [`keepalive`]: one timer for the keep-alive deadlines of all connections.
//! - [`server`]: listeners, start and shutdown.
//! - [`sys`]: the `$SYS` topic tree.
//! - [`transport`]: PROXY protocol, TLS and WebSocket.
//! - [`listener`]: accepting connections with per-listener limits.
//! - [`access`]: the current authenticator and ACL, reloaded on change.
//! - [`reload`]: re-reading the configuration at run time (SIGHUP, admin API).
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: health, readiness, metrics and the admin API over HTTP.
//! - [`trace_log`]: `tracing` events from the store and libraries into the log.
//! - [`ratelimit`], [`filewatch`]: small helpers.

// The documentation is read with `cargo doc --document-private-items`
// (scripts/test.sh checks it): links to private items are welcome.
#![allow(rustdoc::private_intra_doc_links)]
pub mod access;
pub mod admin;
pub mod auth;
pub mod broker;
pub mod budget;
pub mod certs;
pub mod check;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod connection;
pub mod filewatch;
pub mod inflight;
pub mod keepalive;
pub mod listener;
pub mod log;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod ratelimit;
pub mod reload;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod sys;
pub mod topic;
pub mod trace_log;
pub mod transport;
