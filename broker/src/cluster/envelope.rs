//! A message routed from one node to another: the message as the durable
//! store keeps it, where it comes from, and which shared subscriptions
//! the receiving node serves with it.

use serde::{Deserialize, Serialize};

use crate::store::StoredMessage;

/// A routed message, encoded with postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node the message was published on.
    pub origin: String,
    /// The message's cluster id.
    pub id: u64,
    /// The shared subscriptions (by share name) this node delivers the
    /// message to; its ordinary subscriptions always get it.
    pub shared_groups: Vec<String>,
    pub message: StoredMessage,
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredProperties;
    use bytes::Bytes;

    #[test]
    fn an_envelope_round_trips() {
        let envelope = Envelope {
            origin: "broker-0".into(),
            id: 7,
            shared_groups: vec!["workers".into()],
            message: StoredMessage {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"\x00\xffpayload"),
                qos: 1,
                retain: true,
                properties: StoredProperties {
                    content_type: Some("application/json".into()),
                    user_properties: vec![("k".into(), "v".into())],
                    ..StoredProperties::default()
                },
                expires_at_ms: Some(1_800_000_000_000),
            },
        };
        let bytes = envelope.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
