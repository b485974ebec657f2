//! A message from the broker, what expressions see of it, and the record a
//! route makes of it for its sink.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::CompiledRoute;
use crate::expr::{truthy, EvalError, Scope};

/// One PUBLISH received from the broker.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload bytes.
    pub payload: Bytes,
    /// QoS it arrived with.
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The publisher's client id, from the configured user property
    /// (empty when the publisher did not set it).
    pub client_id: String,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// When the bridge received it.
    pub received_at: SystemTime,
    /// The payload parsed as JSON, when it is JSON.
    pub json: Option<Value>,
}

impl Message {
    /// A message, with its payload parsed when it is JSON.
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: u8,
        user_properties: Vec<(String, String)>,
        client_id_property: &str,
    ) -> Message {
        let client_id = user_properties
            .iter()
            .find(|(name, _)| name == client_id_property)
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let json = serde_json::from_slice(&payload).ok();
        Message {
            topic,
            payload,
            qos,
            retain: false,
            client_id,
            user_properties,
            received_at: SystemTime::now(),
            json,
        }
    }

    /// The payload as text (invalid UTF-8 replaced).
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Receive time in milliseconds since the Unix epoch.
    pub fn received_at_ms(&self) -> u64 {
        self.received_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    }

    /// Receive time as RFC 3339 UTC with milliseconds.
    pub fn received_at_rfc3339(&self) -> String {
        rfc3339(self.received_at)
    }
}

/// A time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let at = at
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The names expressions may use for a message; `key` once computed.
struct MessageScope<'a> {
    message: &'a Message,
    key: Option<&'a str>,
}

impl Scope for MessageScope<'_> {
    fn var(&self, name: &str) -> Option<Value> {
        let message = self.message;
        Some(match name {
            "topic" => Value::String(message.topic.clone()),
            "client_id" => Value::String(message.client_id.clone()),
            "qos" => Value::from(message.qos),
            "retain" => Value::Bool(message.retain),
            "payload" => match &message.json {
                Some(json) => json.clone(),
                None => match std::str::from_utf8(&message.payload) {
                    Ok(text) => Value::String(text.to_owned()),
                    Err(_) => Value::Null,
                },
            },
            "payload_text" => Value::String(message.payload_text()),
            "payload_base64" => {
                use base64::Engine;
                Value::String(base64::engine::general_purpose::STANDARD.encode(&message.payload))
            }
            "props" => Value::Object(
                message
                    .user_properties
                    .iter()
                    .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                    .collect(),
            ),
            "received_at" => Value::String(message.received_at_rfc3339()),
            "received_at_ms" => Value::from(message.received_at_ms()),
            "key" => Value::String(self.key?.to_owned()),
            _ => return None,
        })
    }
}

/// What a route makes of a message for its sink.
#[derive(Debug, Clone)]
pub struct Record {
    /// The idempotency key: hex of SHA-256 over topic, publisher client id
    /// and the route's key expression, 32 characters.
    pub key: String,
    /// The mapped fields (`map`); `None` when the route maps nothing and
    /// the sink gets the payload as it came.
    pub fields: Option<Map<String, Value>>,
    /// The NATS subject, AMQP routing key or MQTT topic.
    pub target: Option<String>,
    /// The message it came from.
    pub message: Arc<Message>,
}

impl Record {
    /// The body a message sink sends: the mapped fields as JSON, or the
    /// payload unchanged.
    pub fn body(&self) -> Bytes {
        match &self.fields {
            Some(fields) => Bytes::from(serde_json::to_vec(fields).unwrap_or_default()),
            None => self.message.payload.clone(),
        }
    }

    /// The record as a JSON value: the mapped fields, or the payload (as
    /// JSON when it is, otherwise as a string).
    pub fn json(&self) -> Value {
        match &self.fields {
            Some(fields) => Value::Object(fields.clone()),
            None => match &self.message.json {
                Some(json) => json.clone(),
                None => Value::String(self.message.payload_text()),
            },
        }
    }
}

/// What a route does with a message.
#[derive(Debug)]
pub enum Selected {
    /// The message meets the condition: this record goes to the sink.
    Record(Record),
    /// The condition is false: acknowledge, count, nothing to write.
    Filtered,
}

impl CompiledRoute {
    /// Applies the route's condition, key and mapping to `message`. An
    /// error (a type mistake in an expression for this message) makes the
    /// message a poison message for the route.
    pub fn apply(&self, message: &Arc<Message>) -> Result<Selected, EvalError> {
        let scope = MessageScope { message, key: None };
        if let Some(condition) = &self.condition {
            if !truthy(&condition.eval(&scope)?) {
                return Ok(Selected::Filtered);
            }
        }
        let key_part = match self.key.eval(&scope)? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let mut hash = Sha256::new();
        for part in [&message.topic, &message.client_id, &key_part] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let key = hex::encode(&hash.finalize()[..16]);
        let scope = MessageScope {
            message,
            key: Some(&key),
        };
        let fields = if self.map.is_empty() {
            None
        } else {
            let mut fields = Map::new();
            for (name, expr) in &self.map {
                fields.insert(name.clone(), expr.eval(&scope)?);
            }
            Some(fields)
        };
        let target = match &self.target {
            Some(expr) => match expr.eval(&scope)? {
                Value::String(s) if !s.is_empty() => Some(s),
                other => {
                    return Err(EvalError::Type(format!(
                        "the sink's topic/subject/routing key is {other}, not a string"
                    )))
                }
            },
            None => None,
        };
        Ok(Selected::Record(Record {
            key,
            fields,
            target,
            message: message.clone(),
        }))
    }
}
