//! The decoder: bytes received from a peer to a [`Packet`], with the
//! well-formedness checks of MQTT 3.1.1 and 5.0.

use bytes::{Buf, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::properties::{read_properties, read_publish_properties, Ctx};
use super::wire::{parse_varint, Reader};

// Control packet types (first four bits of the fixed header).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Takes one packet from the front of `buf`.
///
/// - `Ok(None)`: the packet is not complete yet; `buf` is left as it was
///   (its capacity may grow to fit the announced packet).
/// - `Ok(Some(packet))`: the packet's bytes have been removed from `buf`.
///   The PUBLISH payload and other binary fields share the buffer's memory.
/// - `Err(_)`: the connection must be closed; what is left in `buf` is
///   unspecified.
///
/// `version` is the protocol of the connection's CONNECT, or `None` before
/// it: then only a CONNECT is accepted ([`DecodeError::ExpectedConnect`]
/// otherwise). A CONNECT is always decoded per its own protocol name and
/// level, which it reports in [`Connect::protocol`].
///
/// Checks that need only the fixed header (packet type, flags, remaining
/// length, `max_packet_size`, which counts the whole packet) are made as soon
/// as those bytes are there, before the body arrives.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let (packet_type, flags) = (first >> 4, first & 0x0F);
    check_fixed_header(packet_type, flags, version)?;
    let Some((remaining, len_bytes)) = parse_varint(rest)? else {
        return Ok(None);
    };
    let header_len = 1 + len_bytes;
    let total = header_len + remaining as usize;
    if total > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size: u32::try_from(total).unwrap_or(u32::MAX),
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    let mut r = Reader::new(frame);

    let packet = if packet_type == CONNECT {
        Packet::Connect(Box::new(read_connect(&mut r)?))
    } else {
        let version = version.ok_or(DecodeError::ExpectedConnect)?;
        read_packet(packet_type, flags, &mut r, version)?
    };
    r.finish()?;
    Ok(Some(packet))
}

/// The packet identifier of the PUBACK at the start of `buf` when it has the
/// short form `40 02 id id` (success, no properties: the same bytes in every
/// protocol version), otherwise `None`. A fast path for the most frequent
/// inbound packet under QoS 1 load: [`decode`] would return
/// `Packet::Puback` with this identifier, after more work.
pub fn short_puback(buf: &[u8]) -> Option<u16> {
    match buf {
        [0x40, 0x02, high, low, ..] => match u16::from_be_bytes([*high, *low]) {
            0 => None,
            id => Some(id),
        },
        _ => None,
    }
}

/// Checks the packet type and the flags of the fixed header
/// (MQTT 3.1.1 section 2.2.2, 5.0 section 2.1.3).
fn check_fixed_header(
    packet_type: u8,
    flags: u8,
    version: Option<ProtocolVersion>,
) -> Result<(), DecodeError> {
    if version.is_none() && packet_type != CONNECT {
        return Err(DecodeError::ExpectedConnect);
    }
    let required = match packet_type {
        PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::MalformedPacket("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::MalformedPacket("DUP set on a QoS 0 PUBLISH"));
            }
            return Ok(());
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        AUTH if version == Some(ProtocolVersion::V5) => 0,
        CONNECT..=DISCONNECT => 0,
        _ => return Err(DecodeError::MalformedPacket("reserved packet type")),
    };
    if flags != required {
        return Err(DecodeError::MalformedPacket("invalid fixed header flags"));
    }
    Ok(())
}

/// Decodes the body of any packet but CONNECT.
fn read_packet(
    packet_type: u8,
    flags: u8,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    Ok(match packet_type {
        CONNACK => Packet::Connack(read_connack(r, version)?),
        PUBLISH => Packet::Publish(read_publish(flags, r, v5)?),
        PUBACK => Packet::Puback(read_pub_response(r, v5)?),
        PUBREC => Packet::Pubrec(read_pub_response(r, v5)?),
        PUBREL => Packet::Pubrel(read_pub_response(r, v5)?),
        PUBCOMP => Packet::Pubcomp(read_pub_response(r, v5)?),
        SUBSCRIBE => Packet::Subscribe(read_subscribe(r, v5)?),
        SUBACK => Packet::Suback(read_suback(r, v5)?),
        UNSUBSCRIBE => Packet::Unsubscribe(read_unsubscribe(r, v5)?),
        UNSUBACK => Packet::Unsuback(read_unsuback(r, v5)?),
        PINGREQ => Packet::Pingreq,
        PINGRESP => Packet::Pingresp,
        DISCONNECT => {
            let (reason, properties) = if v5 {
                read_reason_and_properties(r, Ctx::DISCONNECT)?
            } else {
                (ReasonCode::NORMAL_DISCONNECTION, Properties::default())
            };
            Packet::Disconnect(Disconnect { reason, properties })
        }
        // `check_fixed_header` lets AUTH through only for 5.0.
        AUTH => {
            let (reason, properties) = read_reason_and_properties(r, Ctx::AUTH)?;
            Packet::Auth(Auth { reason, properties })
        }
        _ => return Err(DecodeError::MalformedPacket("reserved packet type")),
    })
}

/// A packet identifier, which is never 0 ([MQTT-2.3.1-1]).
fn read_packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::MalformedPacket("packet identifier 0")),
        id => Ok(id),
    }
}

/// A topic name in PUBLISH or a will must not hold wildcards ([MQTT-3.3.2-2]).
fn check_no_wildcards(topic: &str) -> Result<(), DecodeError> {
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicNameInvalid(
            "topic name contains a wildcard",
        ));
    }
    Ok(())
}

fn read_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedProtocolVersion { level }),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::MalformedPacket("CONNECT reserved flag set"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::MalformedPacket(
            "will QoS or retain set without a will",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::MalformedPacket("will QoS 3"))?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::MalformedPacket("password without a user name"));
    }

    let keep_alive = r.u16()?;
    let properties = if v5 {
        read_properties(r, Ctx::CONNECT)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let (properties, delay_interval) = if v5 {
            read_publish_properties(r, Ctx::WILL)?
        } else {
            (PublishProperties::default(), None)
        };
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::TopicNameInvalid("empty will topic"));
        }
        check_no_wildcards(&topic)?;
        Some(Will {
            topic,
            payload: r.binary()?,
            qos: will_qos,
            retain: will_retain,
            delay_interval,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn read_connack(r: &mut Reader, version: ProtocolVersion) -> Result<Connack, DecodeError> {
    let ack_flags = r.u8()?;
    // In 3.1 the first byte is unused; later versions only define bit 0.
    let session_present = match version {
        ProtocolVersion::V31 => false,
        _ if ack_flags & 0xFE != 0 => {
            return Err(DecodeError::MalformedPacket("CONNACK reserved flags set"))
        }
        _ => ack_flags & 0x01 != 0,
    };
    let code = r.u8()?;
    let (reason, properties) = if version.is_v5() {
        (ReasonCode(code), read_properties(r, Ctx::CONNACK)?)
    } else {
        (connack_reason_from_v3(code)?, Properties::default())
    };
    Ok(Connack {
        session_present,
        reason,
        properties,
    })
}

/// The 5.0 reason code for a 3.1.1 CONNACK return code (the inverse of the
/// mapping the encoder makes).
fn connack_reason_from_v3(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return Err(DecodeError::MalformedPacket("reserved CONNACK return code")),
    })
}

/// PUBLISH; `check_fixed_header` has already rejected QoS 3 and DUP on QoS 0.
fn read_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03)
        .ok_or(DecodeError::MalformedPacket("PUBLISH with QoS 3"))?;
    let topic = r.shared_string()?;
    check_no_wildcards(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(read_packet_id(r)?)
    };
    let properties = if v5 {
        read_publish_properties(r, Ctx::PUBLISH)?.0
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::TopicNameInvalid(
            "empty topic name without a topic alias",
        ));
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// The optional reason code and properties that end PUBACK, PUBREC, PUBREL,
/// PUBCOMP, DISCONNECT and AUTH in 5.0: absent means success and none.
fn read_reason_and_properties(
    r: &mut Reader,
    ctx: Ctx,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if r.remaining() == 0 {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.remaining() == 0 {
        Properties::default()
    } else {
        read_properties(r, ctx)?
    };
    Ok((reason, properties))
}

fn read_pub_response(r: &mut Reader, v5: bool) -> Result<PubResponse, DecodeError> {
    let packet_id = read_packet_id(r)?;
    let (reason, properties) = if v5 {
        read_reason_and_properties(r, Ctx::PUB_RESPONSE)?
    } else {
        (ReasonCode::SUCCESS, Properties::default())
    };
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

/// Error for a SUBSCRIBE or UNSUBSCRIBE without topic filters
/// ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
fn no_filters(v5: bool) -> DecodeError {
    const WHAT: &str = "no topic filters";
    if v5 {
        DecodeError::ProtocolError(WHAT)
    } else {
        DecodeError::MalformedPacket(WHAT)
    }
}

fn read_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = read_packet_id(r)?;
    let properties = if v5 {
        read_properties(r, Ctx::SUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(no_filters(v5));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// The subscription options byte; in 3.x only the QoS bits may be set.
fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { 0xC0 } else { 0xFC };
    if byte & reserved != 0 {
        return Err(DecodeError::MalformedPacket(
            "reserved subscription option bits set",
        ));
    }
    let qos =
        QoS::from_u8(byte & 0x03).ok_or(DecodeError::MalformedPacket("subscription with QoS 3"))?;
    let retain_handling = (byte >> 4) & 0x03;
    if retain_handling == 3 {
        return Err(DecodeError::MalformedPacket("retain handling 3"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn read_suback(r: &mut Reader, v5: bool) -> Result<Suback, DecodeError> {
    let packet_id = read_packet_id(r)?;
    let properties = if v5 {
        read_properties(r, Ctx::SUBACK)?
    } else {
        Properties::default()
    };
    let codes = r.rest();
    if !v5 && codes.iter().any(|&c| !matches!(c, 0 | 1 | 2 | 0x80)) {
        return Err(DecodeError::MalformedPacket("invalid SUBACK return code"));
    }
    Ok(Suback {
        packet_id,
        reasons: codes.iter().map(|&c| ReasonCode(c)).collect(),
        properties,
    })
}

fn read_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_packet_id(r)?;
    let properties = if v5 {
        read_properties(r, Ctx::UNSUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(no_filters(v5));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_unsuback(r: &mut Reader, v5: bool) -> Result<Unsuback, DecodeError> {
    let packet_id = read_packet_id(r)?;
    let (properties, reasons) = if v5 {
        let properties = read_properties(r, Ctx::UNSUBACK)?;
        (
            properties,
            r.rest().iter().map(|&c| ReasonCode(c)).collect(),
        )
    } else {
        (Properties::default(), Vec::new())
    };
    Ok(Unsuback {
        packet_id,
        reasons,
        properties,
    })
}

#[cfg(test)]
mod tests;
