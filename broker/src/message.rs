//! An application message as the broker holds it: immutable and shared
//! (`Arc<Message>`) by every session it is delivered to, so a fan-out copies
//! pointers, not payloads.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::{Publish, PublishProperties, QoS, Will};
use crate::store::{StoredMessage, StoredProperties};

#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS the publisher used; each delivery is downgraded to the
    /// subscription's QoS.
    pub qos: QoS,
    /// The RETAIN flag as published.
    pub retain: bool,
    /// Forwarded properties (topic alias and subscription identifiers are
    /// always cleared here: they are per connection / per delivery).
    pub properties: PublishProperties,
    /// When the message expires (MQTT 5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// Id in the durable store, once written there.
    pub store_id: std::sync::OnceLock<u64>,
    /// Id across the nodes of a cluster, once sent to another node or an
    /// offline session (the same message is then delivered once).
    pub route_id: std::sync::OnceLock<u64>,
    /// When the broker received it (for the delivery latency histogram).
    pub received_at: Instant,
}

impl Message {
    /// Builds a message from a client's PUBLISH whose topic alias was already
    /// resolved into `topic`, received at `received_at`.
    pub fn from_publish(publish: Publish, topic: Arc<str>, received_at: Instant) -> Message {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| received_at + Duration::from_secs(u64::from(secs)));
        Message {
            topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            store_id: std::sync::OnceLock::new(),
            route_id: std::sync::OnceLock::new(),
            received_at,
        }
    }

    pub fn from_will(will: Will) -> Message {
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: Arc::from(will.topic.as_str()),
            packet_id: None,
            properties: will.properties,
            payload: will.payload,
        };
        let topic = publish.topic.clone();
        Message::from_publish(publish, topic, Instant::now())
    }

    /// A message the broker itself publishes (`$SYS`).
    pub fn internal(topic: &str, payload: impl Into<Bytes>, retain: bool) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain,
            properties: PublishProperties::default(),
            expires_at: None,
            store_id: std::sync::OnceLock::new(),
            route_id: std::sync::OnceLock::new(),
            received_at: Instant::now(),
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Remaining lifetime in whole seconds (rounded up), for the Message
    /// Expiry Interval of a delivery.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// When the message expires, as Unix time in milliseconds (how stored
    /// and routed messages carry it).
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            unix_ms(SystemTime::now() + left)
        })
    }

    pub fn to_stored(&self) -> StoredMessage {
        let expires_at_ms = self.expires_at_ms();
        let p = &self.properties;
        StoredMessage {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: self.qos.as_u8(),
            retain: self.retain,
            properties: StoredProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
            expires_at_ms,
        }
    }

    pub fn from_stored(stored: StoredMessage) -> Message {
        let expires_at = expiry_instant(stored.expires_at_ms);
        let p = stored.properties;
        Message {
            topic: Arc::from(stored.topic.as_str()),
            payload: stored.payload,
            qos: QoS::from_u8(stored.qos).unwrap_or(QoS::AtMostOnce),
            retain: stored.retain,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                subscription_identifiers: Vec::new(),
                content_type: p.content_type,
            },
            expires_at,
            store_id: std::sync::OnceLock::new(),
            route_id: std::sync::OnceLock::new(),
            received_at: Instant::now(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The instant of an expiry kept as Unix time in milliseconds
/// ([`Message::expires_at_ms`]).
pub fn expiry_instant(expires_at_ms: Option<u64>) -> Option<Instant> {
    expires_at_ms.map(|ms| Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms())))
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
