//! `spec.auth` and `spec.limits`: who may connect, and how much each
//! client may do.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may connect.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthSpec {
    /// Whether clients may connect without a user name. Default: false.
    pub anonymous: bool,
}

/// The broker's limits. Each unset field keeps the broker's default, shown
/// here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsSpec {
    /// Largest packet accepted or sent, in bytes. Default: 1048576.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 268435455))]
    pub max_packet_size: Option<u32>,
    /// QoS 1 and 2 messages a client may have unacknowledged towards the
    /// broker (its Receive Maximum). Default: 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub receive_maximum: Option<u16>,
    /// QoS 1 and 2 messages the broker keeps unacknowledged towards one
    /// client. Default: 32.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_inflight: Option<u16>,
    /// QoS 1 and 2 messages queued per session while the client is
    /// offline or its in-flight window is full. Default: 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<u32>,
    /// Payload bytes queued per session. Default: 67108864 (64 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
    /// What to drop when a session's queue is full. Default: DropNew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_full_policy: Option<QueueFullPolicy>,
    /// Topic aliases a client may use (MQTT 5.0); 0 turns them off.
    /// Default: 64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_alias_maximum: Option<u16>,
    /// Longest keep alive granted, in seconds. Default: 65535.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keep_alive_seconds: Option<u16>,
    /// Longest session expiry interval granted, in seconds. Default:
    /// 4294967295 (sessions never expire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_session_expiry_seconds: Option<u32>,
    /// Longest client identifier accepted, in bytes; MQTT requires at
    /// least 23. Default: 65535.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 23))]
    pub max_client_id_length: Option<u16>,
    /// PUBLISH packets per second one client may send; 0 means no limit.
    /// Default: 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// What happens to a client over its publish rate: Disconnect, or
    /// Throttle (the broker stops reading from it until it is back under
    /// the rate). Default: Disconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate_action: Option<RateLimitAction>,
    /// Subscriptions one session may hold; 0 means no limit. Default: 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u32>,
}

/// What to do with a client that publishes faster than allowed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RateLimitAction {
    /// Disconnect it (MQTT 5.0 clients are told "message rate too high").
    Disconnect,
    /// Stop reading from it until it is back under the rate.
    Throttle,
}

/// What to drop when a session's queue is full.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QueueFullPolicy {
    /// Drop the message that does not fit.
    DropNew,
    /// Drop the oldest queued message to make room.
    DropOldest,
}
