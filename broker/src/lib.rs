//! KubeMQTT broker: an MQTT 3.1, 3.1.1 and 5.0 broker built for Kubernetes.
//!
//! Module map (one concern each):
//! - [`codec`]: packet model, decoder and encoder for every protocol version.
//! - [`topic`]: topic name and filter validation and matching.
//! - [`router`]: the subscription table (a trie) that maps a topic to subscribers.
//! - [`retained`]: retained messages, looked up by filter.
//! - [`store`]: durable storage of retained messages and persistent sessions.
//! - [`config`]: the TOML configuration file.
//! - [`log`]: mosquitto-style event and packet log lines (text or JSON).

pub mod codec;
pub mod config;
pub mod log;
pub mod retained;
pub mod router;
pub mod store;
pub mod topic;
