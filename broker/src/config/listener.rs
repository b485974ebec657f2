//! One listening socket (`[[listeners]]`): its transport, TLS and limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Limits, SlowSubscriberAction};

/// One listening socket (`[[listeners]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics. Default: `<protocol>-<port>`, e.g.
    /// `tcp-1883`. Names given explicitly must be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Address and port to bind, e.g. `0.0.0.0:1883` or `[::]:1883`. Two
    /// listeners may not bind the same port on overlapping addresses (port 0,
    /// "any free port", is exempt).
    pub bind: SocketAddr,
    /// Transport spoken on the socket. Default: `tcp`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// HTTP path of the WebSocket endpoint (`ws` and `wss`). Default: `/mqtt`.
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// Most simultaneous connections on this listener; 0 means no limit.
    /// Default: 0.
    #[serde(default)]
    pub max_connections: u32,
    /// Most new connections accepted per second (a token bucket with a burst
    /// of the same size); 0 means no limit. Default: 0.
    #[serde(default)]
    pub max_connection_rate: u32,
    /// Expect a PROXY protocol v1 or v2 header (as sent by cloud load
    /// balancers) before any other byte, and use the client address it
    /// carries. Default: false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Certificate settings, required for `tls` and `wss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Limits for clients of this listener, overriding `[limits]` field by
    /// field (`[listeners.limits]`), e.g. a smaller packet size and publish
    /// rate on the internet-facing listener than on the in-cluster one.
    #[serde(default, skip_serializing_if = "ListenerLimits::is_empty")]
    pub limits: ListenerLimits,
}

/// Per-listener overrides of `[limits]`; an absent field keeps the
/// broker-wide value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Overrides `limits.max_packet_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_packet_size: Option<u32>,
    /// Overrides `limits.max_inflight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u16>,
    /// Overrides `limits.max_queued_messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<u32>,
    /// Overrides `limits.max_queued_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
    /// Overrides `limits.max_subscriptions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u32>,
    /// Overrides `limits.publish_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// Overrides `limits.queue_high_water`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_high_water: Option<u32>,
    /// Overrides `limits.queue_high_water_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_high_water_bytes: Option<u64>,
    /// Overrides `limits.slow_subscriber_timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_subscriber_timeout_ms: Option<u32>,
    /// Overrides `limits.slow_subscriber_action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_subscriber_action: Option<SlowSubscriberAction>,
}

impl ListenerLimits {
    pub fn is_empty(&self) -> bool {
        *self == ListenerLimits::default()
    }

    /// The broker-wide limits with this listener's overrides applied.
    pub fn apply(&self, global: &Limits) -> Limits {
        let mut l = global.clone();
        if let Some(v) = self.max_packet_size {
            l.max_packet_size = v;
        }
        if let Some(v) = self.max_inflight {
            l.max_inflight = v;
        }
        if let Some(v) = self.max_queued_messages {
            l.max_queued_messages = v;
        }
        if let Some(v) = self.max_queued_bytes {
            l.max_queued_bytes = v;
        }
        if let Some(v) = self.max_subscriptions {
            l.max_subscriptions = v;
        }
        if let Some(v) = self.publish_rate {
            l.publish_rate = v;
        }
        if let Some(v) = self.queue_high_water {
            l.queue_high_water = v;
        }
        if let Some(v) = self.queue_high_water_bytes {
            l.queue_high_water_bytes = v;
        }
        if let Some(v) = self.slow_subscriber_timeout_ms {
            l.slow_subscriber_timeout_ms = v;
        }
        if let Some(v) = self.slow_subscriber_action {
            l.slow_subscriber_action = v;
        }
        l
    }
}

/// TLS settings of a listener (`[listeners.tls]`). Files are re-read when
/// they change (Kubernetes swaps Secret files through a symlink); a new
/// certificate that does not load is refused with a log line and the old
/// one keeps serving. TLS 1.2 is the minimum version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to. Required when
    /// `client_auth` is `optional` or `require`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificates: `none` (default), `optional` or `require`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Take the MQTT user name from the client certificate: `none` (default:
    /// the CONNECT user name is used), `cn` (subject common name) or `san`
    /// (first DNS or e-mail subject alternative name). A client that
    /// authenticated with a certificate needs no password.
    #[serde(default)]
    pub username_from: CertUsername,
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Require,
}

/// Where the user name of a certificate-authenticated client comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertUsername {
    #[default]
    None,
    Cn,
    San,
}

impl ListenerConfig {
    /// A plain TCP listener with every other setting at its default.
    pub fn tcp(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: None,
            bind,
            protocol: ListenerProtocol::Tcp,
            path: default_ws_path(),
            max_connections: 0,
            max_connection_rate: 0,
            proxy_protocol: false,
            tls: None,
            limits: ListenerLimits::default(),
        }
    }

    /// The listener's name: `name` if given, else `<protocol>-<port>`.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{}-{}", self.protocol.as_str(), self.bind.port()),
        }
    }
}

/// Transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Plain MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerProtocol {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Tls => "tls",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }

    /// Whether the transport is encrypted.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Tls | ListenerProtocol::Wss)
    }

    /// Whether the transport is WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

fn default_ws_path() -> String {
    "/mqtt".to_owned()
}
