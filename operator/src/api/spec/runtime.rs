//! `spec.persistence`, `spec.logging` and `spec.probes`: how the broker's
//! pods keep their data, log and are probed.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_default;

/// Durable storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PersistenceSpec {
    /// Whether retained messages and persistent sessions survive restarts,
    /// on a PersistentVolumeClaim per pod. Default: false.
    pub enabled: bool,
    /// Size of each pod's volume. Default: 1Gi.
    pub size: Quantity,
    /// StorageClass of the volumes. Default: the cluster's default class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        PersistenceSpec {
            enabled: false,
            size: Quantity("1Gi".to_owned()),
            storage_class_name: None,
        }
    }
}

/// Log output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LoggingSpec {
    /// Least severe level written. Default: info.
    pub level: LogLevel,
    /// `text` (mosquitto-style lines) or `json` (one object per line).
    /// Default: text.
    pub format: LogFormat,
}

/// Severity of a log line, most severe first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures of the broker itself.
    Error,
    /// Something to look at.
    Warning,
    /// Connections and disconnections.
    Notice,
    /// Startup, shutdown and other informational lines.
    #[default]
    Info,
    /// Per-packet lines.
    Debug,
}

/// Format of log lines.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// mosquitto-style text lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Timing of the broker container's probes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProbesSpec {
    /// The startup probe (`/readyz`). Default: every 2 seconds, 60
    /// failures allowed (two minutes, for replaying a large persistence
    /// log), 1-second timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub startup: ProbeSpec,
    /// The liveness probe (`/healthz`). Default: every 10 seconds, 3
    /// failures, 1-second timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub liveness: ProbeSpec,
    /// The readiness probe (`/readyz`). Default: every 5 seconds, 2
    /// failures, 1-second timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub readiness: ProbeSpec,
}

/// One probe's timing; unset fields keep the probe's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProbeSpec {
    /// Seconds after the container starts before the first probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the probe fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<i32>,
}
