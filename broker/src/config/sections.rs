//! The smaller tables: `[http]`, `[drain]`, `[persistence]`, `[log]`
//! and `[sys]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::default_true;

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

fn default_drain_rate() -> u32 {
    500
}

fn default_drain_deadline_secs() -> u64 {
    25
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

fn default_sys_interval_secs() -> u64 {
    10
}
