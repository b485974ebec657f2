//! The broker's TOML configuration file: schema, defaults and validation.
//!
//! The schema is documented for operators in `docs/configuration.md`; keep the
//! two in step. Every type here serializes back to the same TOML it was read
//! from, because the Kubernetes operator writes this file.
//!
//! Errors name the file, the line and the key, so an operator can go straight
//! to the mistake:
//!
//! ```text
//! broker.toml:7: key `limits.max_packet_size`: invalid type: string "big", expected u32
//! ```

mod auth;
mod error;
mod limits;
mod listener;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, CertificateUsers};
pub use error::ConfigError;
pub use limits::{Limits, QueueFullPolicy, RateLimitAction, SlowSubscriberAction};
pub use listener::{
    CertUsername, ClientAuth, ListenerConfig, ListenerLimits, ListenerProtocol, TlsConfig,
};
pub use sections::{
    DrainConfig, FsyncMode, HttpConfig, LogConfig, LogFormat, LogLevel, PersistenceConfig,
    SysConfig,
};

use error::{line_at, line_of_key, one_line};
use limits::validate_backpressure;

/// The smallest accepted `limits.max_packet_size`: below this the broker
/// could not send its own CONNACK, SUBACK or DISCONNECT with properties.
pub const MIN_PACKET_SIZE: u32 = 64;

/// The largest packet MQTT can express (a Remaining Length of 268,435,455).
pub const MAX_PACKET_SIZE: u32 = 268_435_455;

/// The shortest client identifier limit a server may impose: MQTT 3.1.1
/// requires servers to accept identifiers of 1 to 23 bytes [MQTT-3.1.3-5].
pub const MIN_CLIENT_ID_LEN: u16 = 23;

/// The MQTT port, used by the default listeners.
const MQTT_PORT: u16 = 1883;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this broker node, shown in logs and `$SYS` topics. Must not be
    /// empty or contain `/`, `+` or `#`. Default: the `HOSTNAME` environment
    /// variable, else `/etc/hostname`, else `kubemqtt`.
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Whether clients may connect without a user name. Default: false when a
    /// configuration file is given (the no-file local-only mode allows them).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// The sockets the broker accepts connections on. Default: one TCP
    /// listener on `0.0.0.0:1883`. At least one is required.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Packet, flow-control and queue limits.
    #[serde(default)]
    pub limits: Limits,
    /// Durable storage of retained messages and persistent sessions.
    #[serde(default)]
    pub persistence: PersistenceConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// `$SYS` topics.
    #[serde(default)]
    pub sys: SysConfig,
    /// Who may connect and what each client may do.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The HTTP server: health, readiness, Prometheus metrics, admin API.
    #[serde(default)]
    pub http: HttpConfig,
    /// Graceful shutdown on SIGTERM.
    #[serde(default)]
    pub drain: DrainConfig,
    /// Publish a JSON event to `$SYS/brokers/{node}/clients/{clientid}/connected`
    /// and `.../disconnected` when clients come and go. Default: true.
    #[serde(default = "default_true")]
    pub presence_events: bool,
    /// Several replicas of this broker sharing one NATS with JetStream
    /// (see docs/clustering.md). Absent: the broker runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Config {
    /// Defaults with no config file, like mosquitto 2.0's local-only mode:
    /// one TCP listener on `127.0.0.1:1883`, anonymous clients allowed,
    /// persistence off.
    pub fn local_default() -> Config {
        Config {
            node_name: default_node_name(),
            allow_anonymous: true,
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                MQTT_PORT,
            )))],
            limits: Limits::default(),
            persistence: PersistenceConfig::default(),
            log: LogConfig::default(),
            sys: SysConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            drain: DrainConfig::default(),
            presence_events: true,
            cluster: None,
        }
    }

    /// Reads, parses and validates a configuration file. With a file,
    /// `allow_anonymous` defaults to false and, when no `[[listeners]]` are
    /// given, the broker listens on `0.0.0.0:1883`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors
    /// (usually the file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|error| {
                let path = error.path().to_string();
                let key = (error.path().iter().next().is_some()).then_some(path);
                let inner = error.into_inner();
                ConfigError::Invalid {
                    origin: Some(origin.to_owned()),
                    line: inner.span().map(|span| line_at(text, span.start)),
                    key,
                    message: one_line(inner.message()),
                }
            })?;
        config.validate().map_err(|error| match error {
            ConfigError::Invalid {
                key, message, line, ..
            } => ConfigError::Invalid {
                origin: Some(origin.to_owned()),
                line: line.or_else(|| key.as_deref().and_then(|key| line_of_key(text, key))),
                key,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks the rules that the schema alone cannot express. The error's
    /// key names the offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(ConfigError::rule("node_name", "must not be empty"));
        }
        if self.node_name.contains(['/', '+', '#']) {
            return Err(ConfigError::rule(
                "node_name",
                "must not contain `/`, `+` or `#`",
            ));
        }
        self.validate_listeners()?;
        crate::auth::fleet::config::validate(&self.auth.fleets)
            .map_err(|(key, message)| ConfigError::rule(key, message))?;
        if let Some(cluster) = &self.cluster {
            cluster
                .check(&self.node_name)
                .map_err(|(key, message)| ConfigError::rule(key, message))?;
            if self.persistence.enabled {
                return Err(ConfigError::rule(
                    "persistence.enabled",
                    "with [cluster], sessions and retained messages are kept in NATS JetStream: \
                     turn local persistence off",
                ));
            }
        }

        let limits = &self.limits;
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&limits.max_packet_size) {
            return Err(ConfigError::rule(
                "limits.max_packet_size",
                format!("must be between {MIN_PACKET_SIZE} and {MAX_PACKET_SIZE} bytes"),
            ));
        }
        if limits.receive_maximum == 0 {
            return Err(ConfigError::rule(
                "limits.receive_maximum",
                "must be at least 1",
            ));
        }
        if limits.max_inflight == 0 {
            return Err(ConfigError::rule(
                "limits.max_inflight",
                "must be at least 1",
            ));
        }
        if limits.max_client_id_len < MIN_CLIENT_ID_LEN {
            return Err(ConfigError::rule(
                "limits.max_client_id_len",
                format!("must be at least {MIN_CLIENT_ID_LEN}, as MQTT requires"),
            ));
        }
        validate_backpressure(limits, "limits.")?;

        let persistence = &self.persistence;
        if persistence.fsync == FsyncMode::Interval && persistence.fsync_interval_ms == 0 {
            return Err(ConfigError::rule(
                "persistence.fsync_interval_ms",
                "must be above 0 when fsync = \"interval\"",
            ));
        }
        if persistence.enabled && persistence.dir.as_os_str().is_empty() {
            return Err(ConfigError::rule(
                "persistence.dir",
                "must not be empty when persistence is enabled",
            ));
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::rule(
                "listeners",
                "at least one listener is required",
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (index, listener) in self.listeners.iter().enumerate() {
            let mut earlier = self.listeners.iter().take(index).enumerate();
            if let Some((other, other_listener)) =
                earlier.find(|(_, other)| binds_overlap(other.bind, listener.bind))
            {
                return Err(ConfigError::rule(
                    format!("listeners[{index}].bind"),
                    format!(
                        "`{}` overlaps listeners[{other}] (`{}`)",
                        listener.bind, other_listener.bind
                    ),
                ));
            }
            let key = |field: &str| format!("listeners[{index}].{field}");
            match (&listener.tls, listener.protocol.is_tls()) {
                (None, true) => {
                    return Err(ConfigError::rule(
                        key("tls"),
                        format!(
                            "a `{}` listener needs a [listeners.tls] section with cert_file and key_file",
                            listener.protocol.as_str()
                        ),
                    ))
                }
                (Some(_), false) => {
                    return Err(ConfigError::rule(
                        key("tls"),
                        "only `tls` and `wss` listeners take TLS settings",
                    ))
                }
                (Some(tls), true) if tls.client_auth != ClientAuth::None && tls.ca_file.is_none() => {
                    return Err(ConfigError::rule(
                        key("tls.ca_file"),
                        "client_auth needs a ca_file to verify client certificates",
                    ))
                }
                _ => {}
            }
            if let Some(size) = listener.limits.max_packet_size {
                if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&size) {
                    return Err(ConfigError::rule(
                        key("limits.max_packet_size"),
                        format!("must be between {MIN_PACKET_SIZE} and {MAX_PACKET_SIZE} bytes"),
                    ));
                }
            }
            if listener.limits.max_inflight == Some(0) {
                return Err(ConfigError::rule(
                    key("limits.max_inflight"),
                    "must be at least 1",
                ));
            }
            validate_backpressure(&listener.limits.apply(&self.limits), &key("limits."))?;
            if listener.protocol.is_websocket() && !listener.path.starts_with('/') {
                return Err(ConfigError::rule(key("path"), "must start with `/`"));
            }
            if let Some(name) = listener.name.as_deref() {
                if let Some(other) = names.insert(name, index) {
                    return Err(ConfigError::rule(
                        format!("listeners[{index}].name"),
                        format!("name `{name}` is already used by listeners[{other}]"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether two listeners would fight over a port: same port, and the same
/// address or a wildcard address of the same family. Port 0 asks the system
/// for a free port, so it never conflicts.
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// The host name: `HOSTNAME`, else `/etc/hostname`, else `kubemqtt`.
fn default_node_name() -> String {
    fn non_empty(name: Option<String>) -> Option<String> {
        name.map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
    }
    non_empty(std::env::var("HOSTNAME").ok())
        .or_else(|| non_empty(std::fs::read_to_string("/etc/hostname").ok()))
        .unwrap_or_else(|| "kubemqtt".to_owned())
}

pub(super) fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::tcp(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        MQTT_PORT,
    )))]
}

pub(super) fn default_true() -> bool {
    true
}
