//! The encoder: a [`Packet`] to bytes for one protocol version.
//!
//! The model speaks MQTT 5.0; for 3.1 and 3.1.1 properties are dropped and
//! reason codes are mapped to the older return codes. In 5.0 the short forms
//! the specification allows are used: an acknowledgement with reason
//! "success" and no properties is just its packet identifier.

use bytes::BytesMut;

use super::error::EncodeError;
use super::packet::*;
use super::properties::{properties_len, put_properties, put_publish_properties, Ctx};
use super::wire::{put_binary, put_string, put_varint, varint_len, Counter, Sink, MAX_VARINT};

/// Appends `packet`, encoded for `version`, to `buf`.
///
/// A CONNECT is written with the protocol name and level of `version`
/// (its `protocol` field is not consulted). Properties that the packet type
/// does not allow (MQTT 5.0 table 2-4) are left out. On error nothing is
/// written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let first = first_byte(packet, version)?;
    // A dry run finds every error and the remaining length before any byte
    // is written; the second run cannot fail.
    let mut counter = Counter::default();
    put_body(&mut counter, packet, version)?;
    put_fixed_header(buf, first, counter.0)?;
    put_body(buf, packet, version)
}

/// Appends a PUBLISH given by reference to its parts, encoded for `version`:
/// the delivery path, which thus builds no [`Publish`] (nor a [`Packet`]) per
/// message. The same bytes, and the same errors, as [`encode`] of the
/// equivalent `Packet::Publish`. On error nothing is written.
pub fn encode_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    let mut counter = Counter::default();
    put_publish(&mut counter, publish, v5)?;
    put_fixed_header(buf, publish_first_byte(publish), counter.0)?;
    put_publish(buf, publish, v5)
}

/// Writes the fixed header of a packet whose body, measured by a dry run,
/// is `remaining` bytes long, and reserves room for the body. Nothing is
/// written when the body is too long to encode.
fn put_fixed_header(buf: &mut BytesMut, first: u8, remaining: usize) -> Result<(), EncodeError> {
    if remaining > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge { size: remaining });
    }
    buf.reserve(1 + varint_len(remaining) + remaining);
    Sink::put_u8(buf, first);
    put_varint(buf, remaining)
}

/// A PUBLISH by reference: what [`encode_publish`] needs.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in 5.0 when `properties` carries a topic alias.
    pub topic: &'a str,
    /// Present iff qos > 0.
    pub packet_id: Option<u16>,
    /// Only encoded in 5.0.
    pub properties: &'a PublishProperties,
    pub payload: &'a [u8],
}

impl<'a> From<&'a Publish> for PublishRef<'a> {
    fn from(p: &'a Publish) -> Self {
        PublishRef {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
            payload: &p.payload,
        }
    }
}

/// Number of bytes [`encode`] writes for `packet`, fixed header included.
/// For a packet that `encode` rejects the value is meaningless.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut counter = Counter::default();
    // Errors are reported by `encode`; here they only cut the count short.
    let _ = put_body(&mut counter, packet, version);
    1 + varint_len(counter.0) + counter.0
}

/// Packet type and flags.
fn first_byte(packet: &Packet, version: ProtocolVersion) -> Result<u8, EncodeError> {
    Ok(match packet {
        Packet::Connect(_) => 0x10,
        Packet::Connack(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(&p.into()),
        Packet::Puback(_) => 0x40,
        Packet::Pubrec(_) => 0x50,
        Packet::Pubrel(_) => 0x62,
        Packet::Pubcomp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::Suback(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::Unsuback(_) => 0xB0,
        Packet::Pingreq => 0xC0,
        Packet::Pingresp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) if version.is_v5() => 0xF0,
        Packet::Auth(_) => {
            return Err(EncodeError::NotInVersion {
                packet: "AUTH",
                version,
            })
        }
    })
}

/// PUBLISH's packet type and flags.
fn publish_first_byte(p: &PublishRef<'_>) -> u8 {
    // DUP is only meaningful, and only allowed, for QoS > 0 ([MQTT-3.3.1-2]).
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    0x30 | u8::from(dup) << 3 | p.qos.as_u8() << 1 | u8::from(p.retain)
}

/// Everything after the fixed header.
fn put_body(
    out: &mut impl Sink,
    packet: &Packet,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => put_connect(out, c, version),
        Packet::Connack(c) => put_connack(out, c, version),
        Packet::Publish(p) => put_publish(out, &p.into(), v5),
        Packet::Puback(r) | Packet::Pubrec(r) | Packet::Pubrel(r) | Packet::Pubcomp(r) => {
            out.put_u16(r.packet_id);
            if v5 {
                put_reason_and_properties(out, r.reason, &r.properties, Ctx::PUB_RESPONSE)?;
            }
            Ok(())
        }
        Packet::Subscribe(s) => put_subscribe(out, s, v5),
        Packet::Suback(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                put_properties(out, &s.properties, Ctx::SUBACK)?;
                s.reasons.iter().for_each(|r| out.put_u8(r.0));
            } else {
                s.reasons
                    .iter()
                    .for_each(|r| out.put_u8(suback_return_code(*r)));
            }
            Ok(())
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                put_properties(out, &u.properties, Ctx::UNSUBSCRIBE)?;
            }
            u.filters.iter().try_for_each(|f| put_string(out, f))
        }
        Packet::Unsuback(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                put_properties(out, &u.properties, Ctx::UNSUBACK)?;
                u.reasons.iter().for_each(|r| out.put_u8(r.0));
            }
            Ok(())
        }
        Packet::Pingreq | Packet::Pingresp => Ok(()),
        Packet::Disconnect(d) if v5 => {
            put_reason_and_properties(out, d.reason, &d.properties, Ctx::DISCONNECT)
        }
        Packet::Disconnect(_) => Ok(()),
        Packet::Auth(a) if v5 => put_reason_and_properties(out, a.reason, &a.properties, Ctx::AUTH),
        Packet::Auth(_) => Err(EncodeError::NotInVersion {
            packet: "AUTH",
            version,
        }),
    }
}

/// The trailing reason code and properties of PUBACK, PUBREC, PUBREL,
/// PUBCOMP, DISCONNECT and AUTH in 5.0, in the shortest form allowed.
fn put_reason_and_properties(
    out: &mut impl Sink,
    reason: ReasonCode,
    properties: &Properties,
    ctx: Ctx,
) -> Result<(), EncodeError> {
    if properties_len(properties, ctx)? == 0 {
        if reason != ReasonCode::SUCCESS {
            out.put_u8(reason.0);
        }
        return Ok(());
    }
    out.put_u8(reason.0);
    put_properties(out, properties, ctx)
}

fn put_connect(
    out: &mut impl Sink,
    c: &Connect,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::InvalidPacket(
            "a 3.x CONNECT cannot carry a password without a user name",
        ));
    }
    let name: &[u8] = match version {
        ProtocolVersion::V31 => b"MQIsdp",
        ProtocolVersion::V311 | ProtocolVersion::V5 => b"MQTT",
    };
    put_binary(out, name)?;
    out.put_u8(version.level());

    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | w.qos.as_u8() << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        put_properties(out, &c.properties, Ctx::CONNECT)?;
    }
    put_string(out, &c.client_id)?;
    if let Some(w) = &c.will {
        if v5 {
            put_publish_properties(out, &w.properties, w.delay_interval, Ctx::WILL)?;
        }
        put_string(out, &w.topic)?;
        put_binary(out, &w.payload)?;
    }
    if let Some(username) = &c.username {
        put_string(out, username)?;
    }
    if let Some(password) = &c.password {
        put_binary(out, password)?;
    }
    Ok(())
}

fn put_connack(
    out: &mut impl Sink,
    c: &Connack,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    match version {
        ProtocolVersion::V5 => {
            out.put_u8(u8::from(c.session_present));
            out.put_u8(c.reason.0);
            put_properties(out, &c.properties, Ctx::CONNACK)
        }
        ProtocolVersion::V311 => {
            out.put_u8(u8::from(c.session_present));
            out.put_u8(connack_return_code(c.reason));
            Ok(())
        }
        // 3.1 has no session present flag; the byte is unused.
        ProtocolVersion::V31 => {
            out.put_u8(0);
            out.put_u8(connack_return_code(c.reason));
            Ok(())
        }
    }
}

/// The 3.1.1 CONNACK return code closest to a 5.0 reason code.
fn connack_return_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::SUCCESS => 0,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::BAD_AUTHENTICATION_METHOD => 4,
        ReasonCode::NOT_AUTHORIZED | ReasonCode::BANNED => 5,
        // Server unavailable: the catch-all for every other refusal.
        _ => 3,
    }
}

/// A 3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure.
fn suback_return_code(reason: ReasonCode) -> u8 {
    if reason.0 <= 2 {
        reason.0
    } else {
        0x80
    }
}

fn put_publish(out: &mut impl Sink, p: &PublishRef<'_>, v5: bool) -> Result<(), EncodeError> {
    if p.topic.is_empty() && (!v5 || p.properties.topic_alias.is_none()) {
        return Err(EncodeError::InvalidPacket(
            "empty topic name without a topic alias",
        ));
    }
    put_string(out, p.topic)?;
    if p.qos != QoS::AtMostOnce {
        let id = p.packet_id.ok_or(EncodeError::InvalidPacket(
            "QoS 1 or 2 PUBLISH without a packet identifier",
        ))?;
        out.put_u16(id);
    }
    if v5 {
        put_publish_properties(out, p.properties, None, Ctx::PUBLISH)?;
    }
    out.put_slice(p.payload);
    Ok(())
}

fn put_subscribe(out: &mut impl Sink, s: &Subscribe, v5: bool) -> Result<(), EncodeError> {
    out.put_u16(s.packet_id);
    if v5 {
        put_properties(out, &s.properties, Ctx::SUBSCRIBE)?;
    }
    for (filter, o) in &s.filters {
        put_string(out, filter)?;
        let byte = if v5 {
            if o.retain_handling > 2 {
                return Err(EncodeError::InvalidPacket(
                    "retain handling must be 0, 1 or 2",
                ));
            }
            o.qos.as_u8()
                | u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | o.retain_handling << 4
        } else {
            o.qos.as_u8()
        };
        out.put_u8(byte);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
