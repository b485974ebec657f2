//! The debug lines of each packet received and sent (`mosquitto -v`).

use serde_json::{json, Value};

use crate::codec::{Packet, PubResponse, Publish};
use crate::config::LogLevel;

use super::{Event, Logger};

impl Logger {
    /// The debug line for a packet received from `client_id`, e.g.
    /// `Received PUBLISH from dev-1 (d0, q1, r0, m1, 'a/b', ... (5 bytes))`;
    /// does nothing unless verbose. CONNECT has no line (see
    /// [`Logger::client_connected`]). Pass a PUBLISH after topic alias
    /// resolution, so that the topic is shown.
    #[inline]
    pub fn received(&self, client_id: &str, packet: &Packet) {
        if self.verbose() {
            self.log_received(client_id, packet);
        }
    }

    /// The debug line for a packet sent to `client_id`, e.g. `Sending
    /// CONNACK to dev-1 (0, 0)`; does nothing unless verbose. Before a
    /// client identifier is adopted (a refused CONNECT), mosquitto passes
    /// the peer's IP address as `client_id`. Reason codes are printed as
    /// MQTT 5.0 codes whatever the protocol version.
    #[inline]
    pub fn sending(&self, client_id: &str, packet: &Packet) {
        if self.verbose() {
            self.log_sending(client_id, packet);
        }
    }

    fn log_received(&self, client_id: &str, packet: &Packet) {
        let name = packet.name();
        let mut detail = Vec::new();
        let mut fields = Vec::new();
        let message = match packet {
            Packet::Connect(_) => return,
            Packet::Publish(publish) => {
                publish_fields(publish, &mut fields);
                format!(
                    "Received PUBLISH from {client_id} {}",
                    publish_summary(publish)
                )
            }
            Packet::Puback(response) | Packet::Pubcomp(response) => {
                response_fields(response, &mut fields);
                format!(
                    "Received {name} from {client_id} (Mid: {}, RC:{})",
                    response.packet_id, response.reason.0
                )
            }
            Packet::Pubrec(response) | Packet::Pubrel(response) => {
                response_fields(response, &mut fields);
                format!(
                    "Received {name} from {client_id} (Mid: {})",
                    response.packet_id
                )
            }
            Packet::Subscribe(subscribe) => {
                let mut filters = Vec::new();
                for (filter, options) in &subscribe.filters {
                    let qos = options.qos.as_u8();
                    detail.push(format!("\t{filter} (QoS {qos})"));
                    detail.push(format!("{client_id} {qos} {filter}"));
                    filters.push(json!({ "filter": filter, "qos": qos }));
                }
                fields.push(("packet_id", json!(subscribe.packet_id)));
                fields.push(("filters", Value::Array(filters)));
                format!("Received SUBSCRIBE from {client_id}")
            }
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.filters {
                    detail.push(format!("\t{filter}"));
                    detail.push(format!("{client_id} {filter}"));
                }
                fields.push(("packet_id", json!(unsubscribe.packet_id)));
                fields.push(("filters", json!(unsubscribe.filters)));
                format!("Received UNSUBSCRIBE from {client_id}")
            }
            Packet::Auth(auth) => {
                let method = auth.properties.authentication_method.as_deref();
                fields.push(("reason", json!(auth.reason.0)));
                fields.push(("method", json!(method)));
                format!(
                    "Received AUTH from {client_id} (rc{}, {})",
                    auth.reason.0,
                    method.unwrap_or_default()
                )
            }
            _ => format!("Received {name} from {client_id}"),
        };
        let mut event = Event::new(LogLevel::Debug, "packet_received", message)
            .field("client_id", client_id)
            .field("packet", name);
        event.fields.extend(fields);
        event.detail = detail;
        self.emit(event);
    }

    fn log_sending(&self, client_id: &str, packet: &Packet) {
        let name = packet.name();
        let mut fields = Vec::new();
        let message = match packet {
            Packet::Connack(connack) => {
                fields.push(("session_present", json!(connack.session_present)));
                fields.push(("reason", json!(connack.reason.0)));
                format!(
                    "Sending CONNACK to {client_id} ({}, {})",
                    u8::from(connack.session_present),
                    connack.reason.0
                )
            }
            Packet::Publish(publish) => {
                publish_fields(publish, &mut fields);
                format!(
                    "Sending PUBLISH to {client_id} {}",
                    publish_summary(publish)
                )
            }
            Packet::Puback(response) | Packet::Pubrec(response) => {
                response_fields(response, &mut fields);
                format!(
                    "Sending {name} to {client_id} (m{}, rc{})",
                    response.packet_id, response.reason.0
                )
            }
            Packet::Pubrel(response) | Packet::Pubcomp(response) => {
                response_fields(response, &mut fields);
                format!("Sending {name} to {client_id} (m{})", response.packet_id)
            }
            Packet::Suback(suback) => {
                let reasons: Vec<u8> = suback.reasons.iter().map(|reason| reason.0).collect();
                fields.push(("packet_id", json!(suback.packet_id)));
                fields.push(("reasons", json!(reasons)));
                format!("Sending SUBACK to {client_id}")
            }
            Packet::Unsuback(unsuback) => {
                fields.push(("packet_id", json!(unsuback.packet_id)));
                format!("Sending UNSUBACK to {client_id}")
            }
            Packet::Disconnect(disconnect) => {
                fields.push(("reason", json!(disconnect.reason.0)));
                format!(
                    "Sending DISCONNECT to {client_id} (rc{})",
                    disconnect.reason.0
                )
            }
            Packet::Auth(auth) => {
                let method = auth.properties.authentication_method.as_deref();
                fields.push(("reason", json!(auth.reason.0)));
                fields.push(("method", json!(method)));
                format!(
                    "Sending AUTH to {client_id} (rc{}, {})",
                    auth.reason.0,
                    method.unwrap_or_default()
                )
            }
            _ => format!("Sending {name} to {client_id}"),
        };
        let mut event = Event::new(LogLevel::Debug, "packet_sent", message)
            .field("client_id", client_id)
            .field("packet", name);
        event.fields.extend(fields);
        self.emit(event);
    }
}

/// `(d0, q1, r0, m3, 'a/b', ... (5 bytes))`, mosquitto's PUBLISH summary.
fn publish_summary(publish: &Publish) -> String {
    format!(
        "(d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
        u8::from(publish.dup),
        publish.qos.as_u8(),
        u8::from(publish.retain),
        publish.packet_id.unwrap_or(0),
        publish.topic,
        publish.payload.len()
    )
}

fn publish_fields(publish: &Publish, fields: &mut Vec<(&'static str, Value)>) {
    fields.push(("dup", json!(publish.dup)));
    fields.push(("qos", json!(publish.qos.as_u8())));
    fields.push(("retain", json!(publish.retain)));
    if let Some(packet_id) = publish.packet_id {
        fields.push(("packet_id", json!(packet_id)));
    }
    fields.push(("topic", json!(&*publish.topic)));
    fields.push(("payload_len", json!(publish.payload.len())));
}

fn response_fields(response: &PubResponse, fields: &mut Vec<(&'static str, Value)>) {
    fields.push(("packet_id", json!(response.packet_id)));
    fields.push(("reason", json!(response.reason.0)));
}
