//! Packet, flow-control and queue limits (`[limits]`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

/// The back-pressure limits' rules; `prefix` is where they sit
/// (`limits.` or a listener's `listeners[0].limits.`).
pub(super) fn validate_backpressure(limits: &Limits, prefix: &str) -> Result<(), ConfigError> {
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
