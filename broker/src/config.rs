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

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Authentication and authorization files (`[auth]`). Each file is
/// re-read when it changes on disk (checked every `reload_interval_secs`)
/// and on SIGHUP; a file that fails to parse is refused with a log line and
/// the previous contents stay in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A mosquitto password file (`mosquitto_passwd` output, `$7$` and `$6$`
    /// hashes), used unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// KubeMQTT's credentials file (TOML): users with several password
    /// hashes, each optionally valid only until `not_after`, per-user quotas
    /// and ACL rules. See docs/auth.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A mosquitto `acl_file`, used unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
    /// How often the files (and `broker.toml` itself) are checked for
    /// changes, in seconds. Default: 2.
    #[serde(default = "default_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// Which clients that log in with a certificate (a TLS listener with
    /// `username_from`) are let in: `any` (default, as mosquitto's
    /// `use_identity_as_username`) or `known`: only when the certificate's
    /// user name is a user of the password or credentials file, so that
    /// removing the user revokes the certificate too.
    #[serde(default)]
    pub certificate_users: CertificateUsers,
    /// Device fleets (`[[auth.fleets]]`): devices that log in with a
    /// fleet's certificates, derived passwords, JWTs or HTTP hook, with
    /// nothing stored per device. See docs/fleets.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleets: Vec<crate::auth::fleet::FleetConfig>,
    /// A directory of fleet files: each `*.toml` in it holds one fleet (the
    /// keys of an `[[auth.fleets]]` table), with paths relative to the
    /// directory. Re-read when its files change; fleets come and go
    /// without a restart (the operator mounts its fleets Secret here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleets_dir: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            credentials_file: None,
            acl_file: None,
            reload_interval_secs: default_reload_interval_secs(),
            certificate_users: CertificateUsers::Any,
            fleets: Vec::new(),
            fleets_dir: None,
        }
    }
}

/// Which certificate-authenticated clients are let in (`auth.certificate_users`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateUsers {
    /// Every client with a certificate the CA signed.
    #[default]
    Any,
    /// Only those whose certificate names a known user.
    Known,
}

/// The HTTP server (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server (`/healthz`, `/readyz`, `/metrics`,
    /// `/api/v1/...`). Default: none (no HTTP server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// File holding the bearer token of the admin API. Without it the admin
    /// API is disabled (health and metrics stay open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

/// Graceful shutdown (`[drain]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// Clients disconnected per second while draining, so that the other
    /// pods behind a load balancer are not stampeded. 0 means all at once.
    /// Default: 500.
    #[serde(default = "default_drain_rate")]
    pub rate_per_sec: u32,
    /// The process exits at the latest this many seconds after SIGTERM.
    /// Keep it below the pod's terminationGracePeriodSeconds. Default: 25.
    #[serde(default = "default_drain_deadline_secs")]
    pub deadline_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            rate_per_sec: default_drain_rate(),
            deadline_secs: default_drain_deadline_secs(),
        }
    }
}

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

/// Packet, flow-control and queue limits (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted or sent, in bytes, between 64 and 268435455.
    /// Default: 1048576.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: u32,
    /// QoS 1 and 2 PUBLISHes a client may have unacknowledged towards the
    /// broker (our Receive Maximum). At least 1. Default: 100.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// QoS 1 and 2 PUBLISHes the broker keeps unacknowledged towards one
    /// client; also capped by the client's Receive Maximum. At least 1.
    /// Default: 32.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// QoS 1 and 2 messages queued per session behind the in-flight window
    /// or while the client is offline. Default: 1000.
    #[serde(default = "default_max_queued_messages")]
    pub max_queued_messages: u32,
    /// Payload bytes queued per session. Default: 67108864 (64 MiB).
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: u64,
    /// What to drop when a session's queue is full. Default: `drop_new`.
    #[serde(default)]
    pub queue_full: QueueFullPolicy,
    /// Topic aliases a client may use towards the broker (MQTT 5.0); 0
    /// turns them off. Default: 64.
    #[serde(default = "default_topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// Longest keep alive granted, in seconds; MQTT 5.0 clients asking for
    /// more are told the Server Keep Alive. Default: 65535.
    #[serde(default = "default_max_keepalive")]
    pub max_keepalive: u16,
    /// Longest session expiry interval granted, in seconds. Default:
    /// 4294967295 (never expire).
    #[serde(default = "default_max_session_expiry")]
    pub max_session_expiry: u32,
    /// Longest client identifier accepted, in bytes; at least 23, as MQTT
    /// requires. Default: 65535.
    #[serde(default = "default_max_client_id_len")]
    pub max_client_id_len: u16,
    /// PUBLISH packets per second one client may send (a token bucket with
    /// a burst of the same size); 0 means no limit. Per-user quotas may set
    /// their own. Default: 0.
    #[serde(default)]
    pub publish_rate: u32,
    /// What happens to a client over its publish rate: `disconnect` (5.0
    /// DISCONNECT 0x96 Message rate too high) or `throttle` (the broker
    /// stops reading from it until it is back under the rate).
    /// Default: disconnect.
    #[serde(default)]
    pub publish_rate_action: RateLimitAction,
    /// Subscriptions one session may hold; 0 means no limit. Default: 0.
    #[serde(default)]
    pub max_subscriptions: u32,
    /// Back-pressure: once a connected subscriber has this many messages
    /// queued, the broker stops reading PUBLISHes from the clients feeding
    /// it until its queue is back under half this mark, so publishers go at
    /// the pace of the slowest subscriber that is still reading instead of
    /// losing messages. (`max_queued_messages` bounds the queues of
    /// offline sessions.) At least 1. Default: 500.
    #[serde(default = "default_queue_high_water")]
    pub queue_high_water: u32,
    /// The same mark in queued payload bytes. At least 1. Default: 4194304
    /// (4 MiB).
    #[serde(default = "default_queue_high_water_bytes")]
    pub queue_high_water_bytes: u64,
    /// A connected subscriber above its high-water mark that takes no
    /// message for this long stops holding publishers back, and
    /// `slow_subscriber_action` applies to it. At least 100. Default: 5000.
    #[serde(default = "default_slow_subscriber_timeout_ms")]
    pub slow_subscriber_timeout_ms: u32,
    /// What happens to a subscriber past `slow_subscriber_timeout_ms`:
    /// `disconnect` (5.0: DISCONNECT 0x97 Quota exceeded; a persistent
    /// session keeps its queue, within `max_queued_messages`) or `drop`
    /// (its further messages are dropped, and counted, until it catches
    /// up). Default: disconnect.
    #[serde(default)]
    pub slow_subscriber_action: SlowSubscriberAction,
    /// Broker-wide budget for the payload bytes queued in every session.
    /// From 90 % of it messages for offline sessions are dropped and
    /// connected subscribers pause their publishers at an eighth of their
    /// high-water marks; at 100 % every new message is dropped. 0: half
    /// the memory limit of the container (its cgroup), or half the
    /// machine's memory when there is none. Broker-wide only. Default: 0.
    #[serde(default)]
    pub memory_budget_bytes: u64,
}

/// What to do with a connected subscriber that stopped taking messages
/// (`limits.slow_subscriber_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowSubscriberAction {
    /// Disconnect it (5.0: reason 0x97 Quota exceeded).
    #[default]
    Disconnect,
    /// Keep it connected and drop its further messages until it catches up.
    Drop,
}

/// What to do with a client that publishes faster than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    #[default]
    Disconnect,
    Throttle,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: default_max_packet_size(),
            receive_maximum: default_receive_maximum(),
            max_inflight: default_max_inflight(),
            max_queued_messages: default_max_queued_messages(),
            max_queued_bytes: default_max_queued_bytes(),
            queue_full: QueueFullPolicy::default(),
            topic_alias_maximum: default_topic_alias_maximum(),
            max_keepalive: default_max_keepalive(),
            max_session_expiry: default_max_session_expiry(),
            max_client_id_len: default_max_client_id_len(),
            publish_rate: 0,
            publish_rate_action: RateLimitAction::Disconnect,
            max_subscriptions: 0,
            queue_high_water: default_queue_high_water(),
            queue_high_water_bytes: default_queue_high_water_bytes(),
            slow_subscriber_timeout_ms: default_slow_subscriber_timeout_ms(),
            slow_subscriber_action: SlowSubscriberAction::Disconnect,
            memory_budget_bytes: 0,
        }
    }
}

/// What to drop when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the message that does not fit (`drop_new`).
    #[default]
    DropNew,
    /// Drop the oldest queued message to make room (`drop_oldest`).
    DropOldest,
}

/// Durable storage (`[persistence]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    /// Whether retained messages and persistent sessions survive a restart.
    /// Default: false.
    #[serde(default)]
    pub enabled: bool,
    /// Directory of the append log and snapshots; must not be empty when
    /// persistence is enabled. Default: `/var/lib/kubemqtt`.
    #[serde(default = "default_persistence_dir")]
    pub dir: PathBuf,
    /// When appended records are flushed to disk. Default: `interval`.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// Period of `fsync = "interval"`, in milliseconds; must be above 0 in
    /// that mode. Default: 1000.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Log size, in bytes, past which a snapshot is written and the log is
    /// truncated. Default: 67108864 (64 MiB).
    #[serde(default = "default_compact_after_bytes")]
    pub compact_after_bytes: u64,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enabled: false,
            dir: default_persistence_dir(),
            fsync: FsyncMode::default(),
            fsync_interval_ms: default_fsync_interval_ms(),
            compact_after_bytes: default_compact_after_bytes(),
        }
    }
}

/// When the store flushes appended records to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before every acknowledgement that depends on the record.
    Always,
    /// Every `fsync_interval_ms`.
    #[default]
    Interval,
    /// Leave it to the operating system.
    Never,
}

/// Log output (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Least severe level written. Default: `info`.
    #[serde(default)]
    pub level: LogLevel,
    /// `text` (mosquitto-style lines) or `json` (one object per line).
    /// Default: `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// Per-packet lines, like `mosquitto -v`; implies `level = "debug"`.
    /// Default: false.
    #[serde(default)]
    pub verbose: bool,
    /// Prefix text lines with the Unix time (`1732569600: `), as mosquitto
    /// does. JSON lines always carry a `ts` field. Default: true.
    #[serde(default = "default_true")]
    pub timestamps: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::default(),
            format: LogFormat::default(),
            verbose: false,
            timestamps: true,
        }
    }
}

/// Format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// mosquitto-style text lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Severity of a log line, most severe first (mosquitto's log types).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures of the broker itself.
    Error,
    /// Something the operator should look at.
    Warning,
    /// Connections and disconnections.
    Notice,
    /// Startup, shutdown and other informational lines.
    #[default]
    Info,
    /// Per-packet lines.
    Debug,
}

impl LogLevel {
    /// The name used in the configuration file and in JSON log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Notice => "notice",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// `$SYS` topics (`[sys]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysConfig {
    /// Period of the `$SYS` publications, in seconds; 0 turns them off.
    /// Default: 10.
    #[serde(default = "default_sys_interval_secs")]
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            interval_secs: default_sys_interval_secs(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not TOML, does not fit the schema, or breaks a rule that
    /// spans several fields.
    #[error("{}", describe(origin.as_deref(), *line, key.as_deref(), message))]
    Invalid {
        /// The file (or other source) name, when parsing text.
        origin: Option<String>,
        /// 1-based line of the offending key, when known.
        line: Option<usize>,
        /// Dotted path of the offending key, e.g. `limits.max_packet_size` or
        /// `listeners[1].bind`; `None` for TOML syntax errors.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The dotted path of the offending key, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// The 1-based line of the error in the source text, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }

    /// A rule violation found by [`Config::validate`] (no file or line yet).
    fn rule(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: None,
            line: None,
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

/// Renders `origin:line: key `k`: message`, leaving out what is unknown.
fn describe(origin: Option<&str>, line: Option<usize>, key: Option<&str>, message: &str) -> String {
    let mut text = String::new();
    match (origin, line) {
        (Some(origin), Some(line)) => text.push_str(&format!("{origin}:{line}: ")),
        (Some(origin), None) => text.push_str(&format!("{origin}: ")),
        (None, Some(line)) => text.push_str(&format!("line {line}: ")),
        (None, None) => {}
    }
    if let Some(key) = key {
        text.push_str(&format!("key `{key}`: "));
    }
    text.push_str(message);
    text
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

/// Joins the lines of a multi-line parser message with `; `, so that every
/// error is one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("; ")
}

/// The 1-based line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// Finds the line that sets `key` (a path such as `limits.max_inflight` or
/// `listeners[1].bind`) by following table headers. Falls back to the line of
/// the innermost enclosing table or inline table; `None` if neither appears.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut array_lengths: HashMap<String, usize> = HashMap::new();
    let mut enclosing = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let path = if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or_default().trim();
            let length = array_lengths.entry(name.to_owned()).or_insert(0);
            table = format!("{name}[{length}]");
            *length += 1;
            table.clone()
        } else if let Some(rest) = line.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or_default().trim().to_owned();
            // A sub-table of an array of tables (`[auth.fleets.derived]`
            // after `[[auth.fleets]]`) belongs to its last element.
            let array = array_lengths
                .iter()
                .filter(|(name, _)| {
                    table
                        .strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
                })
                .max_by_key(|(name, _)| name.len());
            if let Some((name, length)) = array {
                table = format!("{name}[{}]{}", length - 1, &table[name.len()..]);
            }
            table.clone()
        } else if let Some((name, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            let name = name.trim().trim_matches('"');
            if table.is_empty() {
                name.to_owned()
            } else {
                format!("{table}.{name}")
            }
        } else {
            continue;
        };
        if path == key {
            return Some(index + 1);
        }
        if key
            .strip_prefix(path.as_str())
            .is_some_and(|rest| rest.starts_with(['.', '[']))
        {
            enclosing = Some(index + 1);
        }
    }
    enclosing
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

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::tcp(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        MQTT_PORT,
    )))]
}

fn default_ws_path() -> String {
    "/mqtt".to_owned()
}

fn default_reload_interval_secs() -> u64 {
    2
}

fn default_drain_rate() -> u32 {
    500
}

fn default_drain_deadline_secs() -> u64 {
    25
}

fn default_max_packet_size() -> u32 {
    1024 * 1024
}

fn default_receive_maximum() -> u16 {
    100
}

fn default_max_inflight() -> u16 {
    32
}

fn default_max_queued_messages() -> u32 {
    1000
}

fn default_max_queued_bytes() -> u64 {
    64 * 1024 * 1024
}

/// The back-pressure limits' rules; `prefix` is where they sit
/// (`limits.` or a listener's `listeners[0].limits.`).
fn validate_backpressure(limits: &Limits, prefix: &str) -> Result<(), ConfigError> {
    if limits.queue_high_water == 0 {
        return Err(ConfigError::rule(
            format!("{prefix}queue_high_water"),
            "must be at least 1",
        ));
    }
    if limits.queue_high_water_bytes == 0 {
        return Err(ConfigError::rule(
            format!("{prefix}queue_high_water_bytes"),
            "must be at least 1",
        ));
    }
    if limits.slow_subscriber_timeout_ms < MIN_SLOW_SUBSCRIBER_TIMEOUT_MS {
        return Err(ConfigError::rule(
            format!("{prefix}slow_subscriber_timeout_ms"),
            format!("must be at least {MIN_SLOW_SUBSCRIBER_TIMEOUT_MS}"),
        ));
    }
    Ok(())
}

fn default_queue_high_water() -> u32 {
    500
}

fn default_queue_high_water_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_slow_subscriber_timeout_ms() -> u32 {
    5000
}

/// The shortest `slow_subscriber_timeout_ms` accepted.
const MIN_SLOW_SUBSCRIBER_TIMEOUT_MS: u32 = 100;

fn default_topic_alias_maximum() -> u16 {
    64
}

fn default_max_keepalive() -> u16 {
    u16::MAX
}

fn default_max_session_expiry() -> u32 {
    u32::MAX
}

fn default_max_client_id_len() -> u16 {
    u16::MAX
}

fn default_persistence_dir() -> PathBuf {
    PathBuf::from("/var/lib/kubemqtt")
}

fn default_fsync_interval_ms() -> u64 {
    1000
}

fn default_compact_after_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_true() -> bool {
    true
}

fn default_sys_interval_secs() -> u64 {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "broker.toml")
    }

    /// Parses `text`, expecting an error, and returns (key, line, display).
    fn parse_err(text: &str) -> (Option<String>, Option<usize>, String) {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => (
                error.key().map(str::to_owned),
                error.line(),
                error.to_string(),
            ),
        }
    }

    #[test]
    fn empty_file_gives_file_defaults() {
        let config = parse("").unwrap();
        assert!(!config.node_name.is_empty());
        assert!(!config.allow_anonymous);
        assert_eq!(config.listeners, default_listeners());
        assert_eq!(config.listeners[0].bind, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(config.listeners[0].display_name(), "tcp-1883");
        let limits = &config.limits;
        assert_eq!(limits.max_packet_size, 1_048_576);
        assert_eq!(limits.receive_maximum, 100);
        assert_eq!(limits.max_inflight, 32);
        assert_eq!(limits.max_queued_messages, 1000);
        assert_eq!(limits.max_queued_bytes, 67_108_864);
        assert_eq!(limits.queue_full, QueueFullPolicy::DropNew);
        assert_eq!(limits.topic_alias_maximum, 64);
        assert_eq!(limits.max_keepalive, 65535);
        assert_eq!(limits.max_session_expiry, 4_294_967_295);
        assert_eq!(limits.max_client_id_len, 65535);
        assert_eq!(
            config.persistence,
            PersistenceConfig {
                enabled: false,
                dir: PathBuf::from("/var/lib/kubemqtt"),
                fsync: FsyncMode::Interval,
                fsync_interval_ms: 1000,
                compact_after_bytes: 67_108_864,
            }
        );
        assert_eq!(
            config.log,
            LogConfig {
                level: LogLevel::Info,
                format: LogFormat::Text,
                verbose: false,
                timestamps: true,
            }
        );
        assert_eq!(config.sys.interval_secs, 10);
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let config = parse("[limits]\nmax_inflight = 5\n[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(config.limits.max_inflight, 5);
        assert_eq!(config.limits.receive_maximum, 100);
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(config.log.timestamps);
    }

    #[test]
    fn local_default_is_local_only_and_anonymous() {
        let config = Config::local_default();
        assert!(config.allow_anonymous);
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].bind, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(config.listeners[0].protocol, ListenerProtocol::Tcp);
        assert!(!config.persistence.enabled);
        assert_eq!(config.limits, Limits::default());
        config.validate().unwrap();
    }

    /// The example in docs/broker-design.md and docs/configuration.md.
    const EXAMPLE: &str = r#"
node_name = "kubemqtt-0"
allow_anonymous = false

[[listeners]]
name = "mqtt"
bind = "0.0.0.0:1883"
protocol = "tcp"

[limits]
max_packet_size = 1048576
receive_maximum = 100
max_inflight = 32
max_queued_messages = 1000
max_queued_bytes = 67108864
queue_full = "drop_new"
topic_alias_maximum = 64
max_keepalive = 65535
max_session_expiry = 4294967295
max_client_id_len = 65535

[persistence]
enabled = false
dir = "/var/lib/kubemqtt"
fsync = "interval"
fsync_interval_ms = 1000
compact_after_bytes = 67108864

[log]
level = "info"
format = "text"
verbose = false
timestamps = true

[sys]
interval_secs = 10
"#;

    #[test]
    fn documented_example_parses() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.node_name, "kubemqtt-0");
        assert_eq!(config.listeners[0].name.as_deref(), Some("mqtt"));
        assert_eq!(config.listeners[0].display_name(), "mqtt");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.persistence, PersistenceConfig::default());
        assert_eq!(config.log, LogConfig::default());
        assert_eq!(config.sys, SysConfig::default());
    }

    #[test]
    fn serialize_round_trips() {
        let config = Config {
            node_name: "node-7".to_owned(),
            allow_anonymous: true,
            listeners: vec![
                ListenerConfig {
                    name: Some("inside".to_owned()),
                    ..ListenerConfig::tcp("10.0.0.1:1883".parse().unwrap())
                },
                ListenerConfig {
                    protocol: ListenerProtocol::Wss,
                    path: "/ws".to_owned(),
                    max_connections: 100,
                    max_connection_rate: 10,
                    proxy_protocol: true,
                    tls: Some(TlsConfig {
                        cert_file: PathBuf::from("/tls/tls.crt"),
                        key_file: PathBuf::from("/tls/tls.key"),
                        ca_file: Some(PathBuf::from("/tls/ca.crt")),
                        client_auth: ClientAuth::Optional,
                        username_from: CertUsername::Cn,
                    }),
                    limits: ListenerLimits {
                        max_packet_size: Some(1024),
                        publish_rate: Some(5),
                        slow_subscriber_timeout_ms: Some(1000),
                        slow_subscriber_action: Some(SlowSubscriberAction::Disconnect),
                        ..ListenerLimits::default()
                    },
                    ..ListenerConfig::tcp("[::]:1884".parse().unwrap())
                },
            ],
            limits: Limits {
                max_packet_size: 4096,
                receive_maximum: 10,
                max_inflight: 3,
                max_queued_messages: 7,
                max_queued_bytes: 9999,
                queue_full: QueueFullPolicy::DropOldest,
                topic_alias_maximum: 0,
                max_keepalive: 120,
                max_session_expiry: 3600,
                max_client_id_len: 64,
                publish_rate: 100,
                publish_rate_action: RateLimitAction::Throttle,
                max_subscriptions: 20,
                queue_high_water: 50,
                queue_high_water_bytes: 4096,
                slow_subscriber_timeout_ms: 2500,
                slow_subscriber_action: SlowSubscriberAction::Drop,
                memory_budget_bytes: 1 << 30,
            },
            persistence: PersistenceConfig {
                enabled: true,
                dir: PathBuf::from("/data"),
                fsync: FsyncMode::Always,
                fsync_interval_ms: 5,
                compact_after_bytes: 1 << 20,
            },
            log: LogConfig {
                level: LogLevel::Debug,
                format: LogFormat::Json,
                verbose: true,
                timestamps: false,
            },
            sys: SysConfig { interval_secs: 0 },
            auth: AuthConfig {
                password_file: Some(PathBuf::from("/auth/passwd")),
                credentials_file: Some(PathBuf::from("/auth/credentials.toml")),
                acl_file: Some(PathBuf::from("/auth/acl")),
                reload_interval_secs: 5,
                certificate_users: CertificateUsers::Known,
                fleets: Vec::new(),
                fleets_dir: None,
            },
            http: HttpConfig {
                bind: Some("0.0.0.0:8080".parse().unwrap()),
                admin_token_file: Some(PathBuf::from("/auth/admin-token")),
            },
            drain: DrainConfig {
                rate_per_sec: 50,
                deadline_secs: 60,
            },
            presence_events: false,
            // With local persistence on, no [cluster] (see cluster::config).
            cluster: None,
        };
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("queue_full = \"drop_oldest\""), "{text}");
        assert_eq!(parse(&text).unwrap(), config, "{text}");

        let local = Config::local_default();
        assert_eq!(parse(&toml::to_string(&local).unwrap()).unwrap(), local);
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let (key, line, text) = parse_err("node_name = \"a\"\n\n[limits\nmax_inflight = 3\n");
        assert_eq!(key, None);
        assert_eq!(line, Some(3));
        assert_eq!(
            text,
            "broker.toml:3: invalid table header; expected `.`, `]`"
        );
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let text = "node_name = \"a\"\n\n[[listeners]]\nbind = \"0.0.0.0:1883\"\n\n[limits]\nmax_packet_size = \"big\"\n";
        let (key, line, display) = parse_err(text);
        assert_eq!(key.as_deref(), Some("limits.max_packet_size"));
        assert_eq!(line, Some(7));
        assert_eq!(
            display,
            "broker.toml:7: key `limits.max_packet_size`: invalid type: string \"big\", expected u32"
        );
    }

    #[test]
    fn wrong_value_inside_listener_array_names_its_index() {
        let text = "[[listeners]]\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nbind = \"nowhere\"\n";
        let (key, line, display) = parse_err(text);
        assert_eq!(key.as_deref(), Some("listeners[1].bind"));
        assert_eq!(line, Some(4));
        assert!(
            display.starts_with("broker.toml:4: key `listeners[1].bind`: "),
            "{display}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let (key, line, display) =
            parse_err("[limits]\nreceive_maximum = 5\nmax_pakcet_size = 10\n");
        assert_eq!(key.as_deref(), Some("limits.max_pakcet_size"));
        assert_eq!(line, Some(3));
        assert!(
            display.starts_with(
                "broker.toml:3: key `limits.max_pakcet_size`: unknown field `max_pakcet_size`, expected one of `max_packet_size`"
            ),
            "{display}"
        );
        let (key, line, _) = parse_err("colour = \"red\"\n");
        assert_eq!(key.as_deref(), Some("colour"));
        assert_eq!(line, Some(1));
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let (key, line, display) = parse_err("[log]\n\nlevel = \"loud\"\n");
        assert_eq!(key.as_deref(), Some("log.level"));
        assert_eq!(line, Some(3));
        assert!(display.contains("unknown variant `loud`"), "{display}");
    }

    #[test]
    fn missing_bind_is_reported() {
        let (key, _, display) = parse_err("[[listeners]]\nname = \"x\"\n");
        assert_eq!(key.as_deref(), Some("listeners[0]"));
        assert!(display.contains("missing field `bind`"), "{display}");
    }

    /// Each rule of `validate`, reached through the file so the line is set.
    #[test]
    fn cross_field_rules_name_key_and_line() {
        let cases: &[(&str, &str, usize)] = &[
            ("node_name = \"\"\n", "node_name", 1),
            ("\nnode_name = \"a/b\"\n", "node_name", 2),
            ("listeners = []\n", "listeners", 1),
            (
                "[[listeners]]\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nbind = \"0.0.0.0:1883\"\n",
                "listeners[1].bind",
                4,
            ),
            (
                "[[listeners]]\nbind = \"127.0.0.1:1883\"\n[[listeners]]\nname = \"all\"\nbind = \"0.0.0.0:1883\"\n",
                "listeners[1].bind",
                5,
            ),
            (
                "[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:1884\"\n",
                "listeners[1].name",
                5,
            ),
            ("[limits]\nmax_packet_size = 10\n", "limits.max_packet_size", 2),
            ("[limits]\nmax_packet_size = 268435456\n", "limits.max_packet_size", 2),
            ("[limits]\nreceive_maximum = 0\n", "limits.receive_maximum", 2),
            ("[limits]\nmax_inflight = 0\n", "limits.max_inflight", 2),
            ("[limits]\nmax_client_id_len = 22\n", "limits.max_client_id_len", 2),
            (
                "[persistence]\nfsync_interval_ms = 0\n",
                "persistence.fsync_interval_ms",
                2,
            ),
            (
                "[persistence]\nenabled = true\ndir = \"\"\n",
                "persistence.dir",
                3,
            ),
            // Inline tables fall back to the line of the enclosing key.
            ("limits = { max_inflight = 0 }\n", "limits.max_inflight", 1),
        ];
        for &(text, want_key, want_line) in cases {
            let (key, line, display) = parse_err(text);
            assert_eq!(key.as_deref(), Some(want_key), "{text}");
            assert_eq!(line, Some(want_line), "{text}");
            let prefix = format!("broker.toml:{want_line}: key `{want_key}`: ");
            assert!(display.starts_with(&prefix), "{display}");
        }
    }

    #[test]
    fn valid_edge_values_are_accepted() {
        let text = concat!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n",
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n",
            "[[listeners]]\nbind = \"127.0.0.1:1883\"\n",
            "[[listeners]]\nbind = \"127.0.0.2:1883\"\n",
            "[[listeners]]\nbind = \"[::]:1883\"\n",
            "[limits]\nmax_packet_size = 268435455\nmax_client_id_len = 23\n",
            "[persistence]\nfsync = \"never\"\nfsync_interval_ms = 0\ndir = \"\"\n",
        );
        let config = parse(text).unwrap();
        assert_eq!(config.listeners.len(), 5);
        assert_eq!(config.limits.max_packet_size, MAX_PACKET_SIZE);
    }

    #[test]
    fn validate_without_source_has_key_but_no_line() {
        let mut config = Config::local_default();
        config.limits.receive_maximum = 0;
        let error = config.validate().unwrap_err();
        assert_eq!(error.key(), Some("limits.receive_maximum"));
        assert_eq!(error.line(), None);
        assert_eq!(
            error.to_string(),
            "key `limits.receive_maximum`: must be at least 1"
        );
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "node_name = \"n1\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().node_name, "n1");

        std::fs::write(&path, "node_name = 5\n").unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}:1: key `node_name`: ", path.display())),
            "{error}"
        );

        let missing = dir.path().join("missing.toml");
        let error = Config::load(&missing).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error.to_string().contains("missing.toml"), "{error}");
    }

    #[test]
    fn line_of_key_follows_headers_and_skips_comments() {
        let text =
            "# bind = \"x\"\n[[listeners]]\nbind = \"a\"\n[[listeners]]\n# note\nbind = \"b\"\n";
        assert_eq!(line_of_key(text, "listeners[0].bind"), Some(3));
        assert_eq!(line_of_key(text, "listeners[1].bind"), Some(6));
        assert_eq!(line_of_key(text, "listeners[1].name"), Some(4));
        assert_eq!(line_of_key(text, "limits.max_inflight"), None);
    }
}
