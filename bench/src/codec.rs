//! A minimal MQTT 3.1.1 client-side codec.
//!
//! It encodes only what the generator sends (CONNECT, PUBLISH, the QoS 1/2
//! acknowledgements, SUBSCRIBE, PINGREQ, DISCONNECT) and decodes only what a
//! broker sends to a client (CONNACK, PUBLISH, the acknowledgements, SUBACK,
//! PINGRESP). It deliberately shares no code with the broker's codec, so a
//! bug there cannot hide behind the same bug here, and its cost per packet is
//! a handful of buffer writes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Largest value the remaining-length field can carry.
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(clippy::enum_variant_names)] // the specification's names
pub enum QoS {
    /// Fire and forget.
    AtMostOnce = 0,
    /// Acknowledged with PUBACK.
    AtLeastOnce = 1,
    /// Four-way PUBLISH / PUBREC / PUBREL / PUBCOMP exchange.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3 and above.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A string or payload that does not fit in its length field.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A UTF-8 string or binary field longer than 65,535 bytes.
    #[error("{field} is {len} bytes long; MQTT allows at most 65535")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A packet whose remaining length exceeds 268,435,455 bytes.
    #[error("packet of {0} bytes exceeds the MQTT maximum")]
    PacketTooLarge(usize),
}

/// A byte stream that is not valid MQTT 3.1.1 from a broker.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining-length field runs past four bytes.
    #[error("malformed remaining length")]
    MalformedLength,
    /// A packet larger than the limit the caller set.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Total size announced by the fixed header.
        size: usize,
        /// The caller's limit.
        max: usize,
    },
    /// A packet type a broker never sends to a client.
    #[error("unexpected packet type {0} from the broker")]
    UnexpectedType(u8),
    /// A packet whose body does not match its type.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// The fields of a CONNECT packet the generator uses.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// Start a new session and discard it on disconnect.
    pub clean_session: bool,
    /// Optional user name.
    pub username: Option<&'a str>,
    /// Optional password (only sent with a user name, as 3.1.1 requires).
    pub password: Option<&'a [u8]>,
}

/// A PUBLISH received from the broker. `topic` and `payload` share the
/// receive buffer's memory, so decoding does not copy the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Delivery QoS.
    pub qos: QoS,
    /// Packet identifier; 0 for QoS 0.
    pub pkid: u16,
    /// Retain flag.
    pub retain: bool,
    /// Duplicate-delivery flag.
    pub dup: bool,
    /// Topic name bytes (not checked for UTF-8).
    pub topic: Bytes,
    /// Application payload.
    pub payload: Bytes,
}

/// A packet sent by a broker to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Answer to CONNECT; `return_code` 0 is success.
    ConnAck {
        /// Session Present flag.
        session_present: bool,
        /// 0 accepted, 1..=5 refused.
        return_code: u8,
    },
    /// An application message.
    Publish(Publish),
    /// QoS 1 acknowledgement.
    PubAck(u16),
    /// QoS 2, first answer.
    PubRec(u16),
    /// QoS 2, release (for messages the broker sent us).
    PubRel(u16),
    /// QoS 2, final answer.
    PubComp(u16),
    /// Answer to SUBSCRIBE: one granted QoS (or 0x80 failure) per filter.
    SubAck {
        /// Packet identifier of the SUBSCRIBE.
        pkid: u16,
        /// Granted QoS per filter, 0x80 for a refused filter.
        return_codes: Vec<u8>,
    },
    /// Answer to PINGREQ.
    PingResp,
}

/// Which of the four two-byte acknowledgements to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the packet names
pub enum Ack {
    /// PUBACK (QoS 1 received).
    PubAck,
    /// PUBREC (QoS 2 received).
    PubRec,
    /// PUBREL (QoS 2 release).
    PubRel,
    /// PUBCOMP (QoS 2 complete).
    PubComp,
}

/// Appends a CONNECT packet (protocol level 4, no will).
pub fn encode_connect(connect: &Connect<'_>, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let username = connect.username;
    // MQTT 3.1.1 forbids a password without a user name.
    let password = username.and(connect.password);
    let mut len = 10 + string_len("client id", connect.client_id.len())?;
    if let Some(user) = username {
        len += string_len("user name", user.len())?;
    }
    if let Some(pass) = password {
        len += string_len("password", pass.len())?;
    }
    let mut flags = 0u8;
    if connect.clean_session {
        flags |= 0x02;
    }
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    buf.reserve(len + 5);
    buf.put_u8(0x10);
    put_remaining_length(buf, len)?;
    buf.put_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, flags]);
    buf.put_u16(connect.keep_alive);
    put_bytes(buf, connect.client_id.as_bytes());
    if let Some(user) = username {
        put_bytes(buf, user.as_bytes());
    }
    if let Some(pass) = password {
        put_bytes(buf, pass);
    }
    Ok(())
}

/// Appends the fixed header, topic and packet identifier of a PUBLISH whose
/// payload of `payload_len` bytes the caller appends right after.
///
/// `pkid` is ignored for QoS 0.
pub fn encode_publish_header(
    buf: &mut BytesMut,
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload_len: usize,
) -> Result<(), EncodeError> {
    let mut len = string_len("topic", topic.len())? + payload_len;
    if qos != QoS::AtMostOnce {
        len += 2;
    }
    buf.reserve(len + 5);
    buf.put_u8(0x30 | ((qos as u8) << 1));
    put_remaining_length(buf, len)?;
    put_bytes(buf, topic.as_bytes());
    if qos != QoS::AtMostOnce {
        buf.put_u16(pkid);
    }
    Ok(())
}

/// Appends a PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn encode_ack(buf: &mut BytesMut, ack: Ack, pkid: u16) {
    let first = match ack {
        Ack::PubAck => 0x40,
        Ack::PubRec => 0x50,
        Ack::PubRel => 0x62,
        Ack::PubComp => 0x70,
    };
    buf.put_slice(&[first, 2]);
    buf.put_u16(pkid);
}

/// Appends a SUBSCRIBE for one filter.
pub fn encode_subscribe(
    buf: &mut BytesMut,
    pkid: u16,
    filter: &str,
    qos: QoS,
) -> Result<(), EncodeError> {
    let len = 2 + string_len("topic filter", filter.len())? + 1;
    buf.reserve(len + 5);
    buf.put_u8(0x82);
    put_remaining_length(buf, len)?;
    buf.put_u16(pkid);
    put_bytes(buf, filter.as_bytes());
    buf.put_u8(qos as u8);
    Ok(())
}

/// Appends a PINGREQ.
pub fn encode_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0]);
}

/// Appends a DISCONNECT.
pub fn encode_disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0]);
}

/// Takes one complete packet off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a packet (nothing is
/// consumed; read more and call again). Packets larger than
/// `max_packet_size` bytes in total are refused before they are buffered.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, remaining)) = parse_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    let mut body = buf.split_to(total).freeze();
    body.advance(header_len);
    parse_body(first, body).map(Some)
}

/// Reads the fixed header: `(header length, remaining length)`, or `None`
/// if `buf` does not hold all of it yet.
fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining = 0usize;
    for (i, &byte) in buf.iter().enumerate().skip(1).take(4) {
        remaining |= usize::from(byte & 0x7F) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, remaining)));
        }
    }
    if buf.len() >= 5 {
        return Err(DecodeError::MalformedLength);
    }
    Ok(None)
}

fn parse_body(first: u8, mut body: Bytes) -> Result<Packet, DecodeError> {
    let packet_type = first >> 4;
    match packet_type {
        2 => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("CONNACK"));
            }
            Ok(Packet::ConnAck {
                session_present: body[0] & 0x01 != 0,
                return_code: body[1],
            })
        }
        3 => {
            let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH"))?;
            if body.len() < 2 {
                return Err(DecodeError::Malformed("PUBLISH"));
            }
            let topic_len = usize::from(body.get_u16());
            if body.len() < topic_len {
                return Err(DecodeError::Malformed("PUBLISH"));
            }
            let topic = body.split_to(topic_len);
            let pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                if body.len() < 2 {
                    return Err(DecodeError::Malformed("PUBLISH"));
                }
                match body.get_u16() {
                    0 => return Err(DecodeError::Malformed("PUBLISH")),
                    id => id,
                }
            };
            Ok(Packet::Publish(Publish {
                qos,
                pkid,
                retain: first & 0x01 != 0,
                dup: first & 0x08 != 0,
                topic,
                payload: body,
            }))
        }
        4..=7 => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("acknowledgement"));
            }
            let pkid = body.get_u16();
            Ok(match packet_type {
                4 => Packet::PubAck(pkid),
                5 => Packet::PubRec(pkid),
                6 => Packet::PubRel(pkid),
                _ => Packet::PubComp(pkid),
            })
        }
        9 => {
            if body.len() < 3 {
                return Err(DecodeError::Malformed("SUBACK"));
            }
            let pkid = body.get_u16();
            Ok(Packet::SubAck {
                pkid,
                return_codes: body.to_vec(),
            })
        }
        13 => {
            if !body.is_empty() {
                return Err(DecodeError::Malformed("PINGRESP"));
            }
            Ok(Packet::PingResp)
        }
        other => Err(DecodeError::UnexpectedType(other)),
    }
}

fn string_len(field: &'static str, len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong { field, len });
    }
    Ok(2 + len)
}

/// Writes a two-byte length then the bytes; callers check the length first.
fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    // Lengths were checked by `string_len`, so the cast cannot truncate.
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) -> Result<(), EncodeError> {
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(len));
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
