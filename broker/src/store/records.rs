//! The data model of the store: what is written to disk ([`Record`]) and
//! what is handed back after a restart ([`Recovered`]).
//!
//! These types are deliberately independent of the codec's packet types so
//! that the on-disk format does not change when the wire model does; the
//! `From` conversions below bridge the two.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{PublishProperties, QoS, SubscriptionOptions};

/// When the writer calls fsync on the log.
///
/// Every policy survives a crash of the broker process (including
/// `kill -9`): an append is acknowledged only after its records were handed
/// to the operating system. The policies differ in what survives a power
/// loss or a kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before acknowledging every append (group commit shares one
    /// fsync among all appends queued at the same time). Nothing
    /// acknowledged is lost on power loss.
    Always,
    /// fsync at most once per interval, and only when something was
    /// written. On power loss up to about one interval of acknowledged
    /// appends may be lost.
    Interval(Duration),
    /// Never fsync except on [`Store::flush`](super::Store::flush); the
    /// operating system writes back when it chooses.
    Never,
}

impl Default for FsyncPolicy {
    /// `Interval(1000 ms)`, the documented default.
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(1000))
    }
}

/// An application message as stored: one copy, however many sessions it
/// was queued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: u8,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    pub properties: StoredProperties,
    /// When the message expires (unix time, milliseconds), from the Message
    /// Expiry Interval; `None` if it never does.
    pub expires_at_ms: Option<u64>,
}

/// The application-message properties that are forwarded to subscribers.
/// Message expiry is kept as an absolute time in
/// [`StoredMessage::expires_at_ms`]; topic alias and subscription
/// identifiers are per delivery and not stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl From<&PublishProperties> for StoredProperties {
    fn from(p: &PublishProperties) -> Self {
        StoredProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        }
    }
}

impl From<StoredProperties> for PublishProperties {
    /// The forwarded properties; the caller sets `message_expiry_interval`
    /// (from [`StoredMessage::expires_at_ms`]) and the per-delivery fields.
    fn from(p: StoredProperties) -> Self {
        PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            ..PublishProperties::default()
        }
    }
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The filter as the client sent it (including any `$share/group/`).
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    /// The Subscription Identifier (5.0), if any.
    pub identifier: Option<u32>,
}

impl StoredSubscription {
    /// Builds the stored form of one SUBSCRIBE entry.
    pub fn new(filter: String, options: SubscriptionOptions, identifier: Option<u32>) -> Self {
        StoredSubscription {
            filter,
            qos: options.qos.as_u8(),
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: options.retain_handling,
            identifier,
        }
    }

    /// The subscription options; an out-of-range stored QoS reads as 0.
    pub fn options(&self) -> SubscriptionOptions {
        SubscriptionOptions {
            qos: QoS::from_u8(self.qos).unwrap_or_default(),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: self.retain_handling,
        }
    }
}

/// One change to the durable state. The broker appends records; recovery
/// replays them in order.
///
/// Records naming a session that does not exist, a queue entry that does
/// not exist or a message id that is not stored are ignored on replay.
///
/// The variant order is part of the file format: add new variants at the
/// end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Stores a message under `id` (from [`Store::next_message_id`]). It must
    /// be appended in the same batch as at least one `RetainSet` or
    /// `Enqueue` referencing it: a message no record references at the end
    /// of its batch is discarded, as is a message whose last reference goes
    /// away.
    ///
    /// [`Store::next_message_id`]: super::Store::next_message_id
    Message { id: u64, msg: StoredMessage },
    /// Makes message `msg_id` the retained message of `topic`, replacing any
    /// previous one.
    RetainSet { topic: String, msg_id: u64 },
    /// Removes the retained message of `topic`.
    RetainClear { topic: String },
    /// Creates a session, or replaces an existing one with an empty session
    /// (clean start): subscriptions, queue and inbound QoS 2 state are wiped.
    SessionOpen {
        client_id: String,
        expiry_interval: u32,
    },
    /// An existing session was taken up by a new connection without clean
    /// start: the expiry clock stops and the expiry interval is updated; its
    /// state is kept.
    SessionResume {
        client_id: String,
        expiry_interval: u32,
    },
    /// The session's connection went away at `at_ms` (unix ms); the session
    /// expires `expiry_interval` seconds later.
    SessionDisconnected {
        client_id: String,
        expiry_interval: u32,
        at_ms: u64,
    },
    /// Removes a session and everything it holds.
    SessionDelete { client_id: String },
    /// Adds a subscription, replacing one with the same filter.
    Subscribe {
        client_id: String,
        sub: StoredSubscription,
    },
    /// Removes the subscription with this filter.
    Unsubscribe { client_id: String, filter: String },
    /// Queues message `msg_id` for delivery at `qos`. `seq` is strictly
    /// increasing per session; a repeated `seq` is ignored.
    Enqueue {
        client_id: String,
        seq: u64,
        msg_id: u64,
        qos: u8,
    },
    /// The queued message `seq` was sent with `packet_id`.
    Inflight {
        client_id: String,
        seq: u64,
        packet_id: u16,
    },
    /// QoS 2: PUBREC was received for `seq`; the PUBREL phase has begun.
    Released { client_id: String, seq: u64 },
    /// The queued message `seq` was acknowledged (PUBACK / PUBCOMP) or
    /// dropped.
    Dequeue { client_id: String, seq: u64 },
    /// PUBREC was sent for an inbound QoS 2 PUBLISH with `packet_id`.
    InboundQos2 { client_id: String, packet_id: u16 },
    /// PUBREL was received for inbound `packet_id`.
    InboundQos2Done { client_id: String, packet_id: u16 },
}

/// The durable state found by [`Store::open`](super::Store::open).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Retained messages by topic, in topic order.
    pub retained: Vec<(String, StoredMessage)>,
    /// Persistent sessions, in client id order.
    pub sessions: Vec<StoredSession>,
    /// The next message id the store hands out.
    pub next_message_id: u64,
}

/// A persistent session as recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// When the session's last connection went away (unix ms). `None` means
    /// it was connected when the broker stopped; the broker should start the
    /// expiry clock at its own start time.
    pub disconnected_at_ms: Option<u64>,
    /// In filter order.
    pub subscriptions: Vec<StoredSubscription>,
    /// Queued and in-flight outbound messages, in `seq` order.
    pub queue: Vec<QueuedEntry>,
    /// Packet ids of inbound QoS 2 PUBLISHes awaiting PUBREL, ascending.
    pub inbound_qos2: Vec<u16>,
}

/// An outbound message of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEntry {
    pub seq: u64,
    /// The QoS it is delivered at (already reduced to the subscription's).
    pub qos: u8,
    pub msg: StoredMessage,
    /// Set once it was sent; resend with DUP and this packet id.
    pub packet_id: Option<u16>,
    /// QoS 2 only: PUBREC was received, so send PUBREL instead of PUBLISH.
    pub released: bool,
}
