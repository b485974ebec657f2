//! A message routed from one node to another: the message as the durable
//! store keeps it ([`StoredMessage`]'s encoding), where it comes from, and
//! which shared subscriptions the receiving node serves with it.
//!
//! Encoded with postcard straight from the [`Message`] ([`encode`]) and
//! read back borrowing from the received bytes ([`Envelope::decode`]):
//! routing a message between nodes copies its topic and payload once on
//! each side, no more.
//!
//! [`StoredMessage`]: crate::store::StoredMessage

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{PublishProperties, QoS};
use crate::message::{expiry_instant, Message};

/// A routed message as received, borrowing from the NATS message.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct Envelope<'a> {
    /// The node the message was published on.
    pub origin: &'a str,
    /// The message's cluster id.
    pub id: u64,
    /// The shared subscriptions (by share name) this node delivers the
    /// message to; its ordinary subscriptions always get it.
    pub shared_groups: Vec<String>,
    #[serde(borrow)]
    pub message: MessageView<'a>,
}

/// [`crate::store::StoredMessage`], borrowed.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct MessageView<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    #[serde(borrow)]
    pub properties: PropertiesView<'a>,
    pub expires_at_ms: Option<u64>,
}

/// [`crate::store::StoredProperties`], borrowed.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct PropertiesView<'a> {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<&'a str>,
    pub response_topic: Option<&'a str>,
    pub correlation_data: Option<&'a [u8]>,
    pub user_properties: Vec<(String, String)>,
}

/// What [`encode`] writes: the fields of [`Envelope`], from a [`Message`].
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    origin: &'a str,
    id: u64,
    shared_groups: &'a [String],
    message: MessageRef<'a>,
}

#[derive(Serialize)]
struct MessageRef<'a> {
    topic: &'a str,
    payload: &'a Bytes,
    qos: u8,
    retain: bool,
    properties: PropertiesRef<'a>,
    expires_at_ms: Option<u64>,
}

#[derive(Serialize)]
struct PropertiesRef<'a> {
    payload_format_indicator: Option<u8>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<&'a Bytes>,
    user_properties: &'a [(String, String)],
}

/// The envelope of `msg` from node `origin`, with cluster id `id`, for a
/// node that serves `shared_groups` with it.
pub fn encode(
    origin: &str,
    id: u64,
    shared_groups: &[String],
    msg: &Message,
) -> Result<Vec<u8>, postcard::Error> {
    // Room for everything but unusual properties, so that the buffer is
    // allocated once.
    let size = 32 + origin.len() + msg.topic.len() + msg.payload.len();
    postcard::to_extend(
        &envelope_ref(origin, id, shared_groups, msg),
        Vec::with_capacity(size),
    )
}

/// As [`encode`], appended to `out`.
pub fn encode_into(
    origin: &str,
    id: u64,
    shared_groups: &[String],
    msg: &Message,
    out: &mut bytes::BytesMut,
) -> Result<(), postcard::Error> {
    postcard::serialize_with_flavor(&envelope_ref(origin, id, shared_groups, msg), Appender(out))
}

/// A `BytesMut` as postcard's output (slices copied whole, not byte by
/// byte as through `Extend`).
struct Appender<'a>(&'a mut bytes::BytesMut);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn envelope_ref<'a>(
    origin: &'a str,
    id: u64,
    shared_groups: &'a [String],
    msg: &'a Message,
) -> EnvelopeRef<'a> {
    let p = &msg.properties;
    EnvelopeRef {
        origin,
        id,
        shared_groups,
        message: MessageRef {
            topic: &msg.topic,
            payload: &msg.payload,
            qos: msg.qos.as_u8(),
            retain: msg.retain,
            properties: PropertiesRef {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.as_deref(),
                response_topic: p.response_topic.as_deref(),
                correlation_data: p.correlation_data.as_ref(),
                user_properties: &p.user_properties,
            },
            expires_at_ms: msg.expires_at_ms(),
        },
    }
}

impl<'a> Envelope<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Envelope<'a>, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The message, as this node holds it.
    pub fn to_message(&self) -> Message {
        self.to_message_at(Instant::now())
    }

    /// As [`Envelope::to_message`], received at `received_at` (one reading
    /// of the clock for a whole batch).
    pub fn to_message_at(&self, received_at: Instant) -> Message {
        let m = &self.message;
        let p = &m.properties;
        let msg = Message {
            topic: Arc::from(m.topic),
            payload: Bytes::copy_from_slice(m.payload),
            qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtMostOnce),
            retain: m.retain,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: p.response_topic.map(str::to_string),
                correlation_data: p.correlation_data.map(Bytes::copy_from_slice),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: Vec::new(),
                content_type: p.content_type.map(str::to_string),
            },
            expires_at: expiry_instant(m.expires_at_ms),
            store_id: std::sync::OnceLock::new(),
            route_id: std::sync::OnceLock::new(),
            received_at,
        };
        // A QoS 0 message has no cluster id (see `Cluster::send`).
        if msg.qos != QoS::AtMostOnce {
            let _ = msg.route_id.set(self.id);
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoredMessage, StoredProperties};

    fn message() -> Message {
        Message::from_stored(StoredMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\xffpayload"),
            qos: 1,
            retain: true,
            properties: StoredProperties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".into()),
                response_topic: Some("replies/1".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![("k".into(), "v".into())],
            },
            expires_at_ms: Some(crate::message::now_ms() + 600_000),
        })
    }

    #[test]
    fn an_envelope_round_trips() {
        let msg = message();
        let groups = vec!["workers".to_string()];
        let bytes = encode("broker-0", 7, &groups, &msg).unwrap();
        let envelope = Envelope::decode(&bytes).unwrap();
        assert_eq!(envelope.origin, "broker-0");
        assert_eq!(envelope.id, 7);
        assert_eq!(envelope.shared_groups, groups);
        let back = envelope.to_message();
        assert_eq!(back.route_id.get(), Some(&7));
        assert_eq!(
            (&*back.topic, &back.payload, back.qos, back.retain),
            (&*msg.topic, &msg.payload, msg.qos, msg.retain)
        );
        assert_eq!(back.properties, msg.properties);
        let left = back.remaining_expiry(Instant::now()).unwrap();
        assert!((595..=600).contains(&left), "expires in {left} s");
        assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn an_envelope_appended_to_a_batch_is_the_same_bytes() {
        let msg = message();
        let groups = vec!["g".to_string()];
        let mut batch = bytes::BytesMut::from(&b"before"[..]);
        encode_into("n", 3, &groups, &msg, &mut batch).unwrap();
        let alone = encode("n", 3, &groups, &msg).unwrap();
        assert_eq!(&batch[..6], b"before");
        // The expiry is computed at each encoding: compare the rest.
        let mut appended = Envelope::decode(&batch[6..]).unwrap();
        let alone = Envelope::decode(&alone).unwrap();
        appended.message.expires_at_ms = alone.message.expires_at_ms;
        assert_eq!(appended, alone);
    }

    /// Nodes of two versions read each other's envelopes during a rolling
    /// upgrade: the encoding is that of the fields in order, the message
    /// as the store keeps it.
    #[test]
    fn the_encoding_is_the_stored_message_behind_origin_id_and_groups() {
        let msg = message();
        let groups = vec!["g".to_string()];
        let bytes = encode("n", 3, &groups, &msg).unwrap();
        let mut stored = msg.to_stored();
        let decoded = Envelope::decode(&bytes).unwrap();
        // The expiry is computed at each encoding, the rest is fixed.
        stored.expires_at_ms = decoded.message.expires_at_ms;
        let expected = postcard::to_allocvec(&("n", 3u64, &groups, &stored)).unwrap();
        assert_eq!(bytes, expected);
    }
}
