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
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::super::tests::decode_one;
    use super::*;

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    /// A packet with the given first byte and body.
    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_u8(first);
        buf.put_u8(u8::try_from(body.len()).unwrap());
        buf.put_slice(body);
        buf.to_vec()
    }

    /// A CONNECT: protocol name and level, flags, keep alive 60, then `rest`.
    fn connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
        let mut body = vec![0, u8::try_from(name.len()).unwrap()];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        body.extend_from_slice(rest);
        packet(0x10, &body)
    }

    fn err(bytes: &[u8], version: Option<ProtocolVersion>) -> DecodeError {
        decode_one(bytes, version).expect_err("must not decode")
    }

    #[track_caller]
    fn malformed(bytes: &[u8], version: Option<ProtocolVersion>) {
        assert!(
            matches!(err(bytes, version), DecodeError::MalformedPacket(_)),
            "{bytes:x?}"
        );
    }

    #[track_caller]
    fn protocol_error(bytes: &[u8], version: Option<ProtocolVersion>) {
        assert!(
            matches!(err(bytes, version), DecodeError::ProtocolError(_)),
            "{bytes:x?}"
        );
    }

    #[track_caller]
    fn topic_invalid(bytes: &[u8], version: Option<ProtocolVersion>) {
        assert!(
            matches!(err(bytes, version), DecodeError::TopicNameInvalid(_)),
            "{bytes:x?}"
        );
    }

    #[test]
    fn reason_codes_of_errors() {
        let cases = [
            (DecodeError::MalformedPacket("x"), 0x81),
            (DecodeError::ProtocolError("x"), 0x82),
            (DecodeError::UnsupportedProtocolVersion { level: 6 }, 0x84),
            (DecodeError::PacketTooLarge { size: 2, max: 1 }, 0x95),
            (DecodeError::ExpectedConnect, 0x82),
            (DecodeError::TopicNameInvalid("x"), 0x90),
        ];
        for (error, code) in cases {
            assert_eq!(error.reason_code(), ReasonCode(code), "{error}");
        }
    }

    #[test]
    fn first_packet_must_be_connect() {
        let mut buf = BytesMut::from(&b"\x30"[..]);
        assert_eq!(
            decode(&mut buf, None, 1024),
            Err(DecodeError::ExpectedConnect)
        );
        assert_eq!(err(b"\xc0\x00", None), DecodeError::ExpectedConnect);
    }

    #[test]
    fn connect_after_connect_decodes_with_its_own_version() {
        let bytes = connect(b"MQTT", 5, 0x02, b"\x00\x00\x01c");
        let Packet::Connect(c) = decode_one(&bytes, Some(V311)).unwrap() else {
            panic!("expected CONNECT");
        };
        assert_eq!(c.protocol, V5);
    }

    #[test]
    fn fixed_header_flags_are_checked() {
        malformed(b"\x41\x02\x00\x01", Some(V311)); // PUBACK with flags
        malformed(b"\x60\x02\x00\x01", Some(V311)); // PUBREL without 0b0010
        malformed(b"\x80\x06\x00\x01\x00\x01a\x00", Some(V311)); // SUBSCRIBE
        malformed(b"\xa0\x05\x00\x01\x00\x01a", Some(V5)); // UNSUBSCRIBE
        malformed(b"\xc1\x00", Some(V5)); // PINGREQ
        malformed(b"\xe8\x00", Some(V5)); // DISCONNECT
        malformed(b"\x11\x00", None); // CONNECT
    }

    #[test]
    fn reserved_packet_types_are_malformed() {
        malformed(b"\x00\x00", Some(V5));
        malformed(b"\xf0\x00", Some(V311)); // AUTH is 5.0 only
        malformed(b"\xf0\x00", Some(V31));
    }

    #[test]
    fn publish_qos_3_is_malformed_from_the_first_byte() {
        let mut buf = BytesMut::from(&b"\x36"[..]);
        assert!(matches!(
            decode(&mut buf, Some(V5), 1024),
            Err(DecodeError::MalformedPacket(_))
        ));
    }

    #[test]
    fn dup_on_qos_0_is_malformed() {
        for version in [V31, V311, V5] {
            malformed(b"\x38\x05\x00\x01ax", Some(version));
        }
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        malformed(b"\x30\x04\x00\x02\xc3\x28", Some(V311)); // invalid UTF-8
        malformed(b"\x30\x04\x00\x02a\x00", Some(V311)); // U+0000
        malformed(&connect(b"MQTT", 4, 0x02, b"\x00\x01\xff"), None); // client id
    }

    #[test]
    fn publish_topic_rules() {
        topic_invalid(b"\x30\x05\x00\x03a/#", Some(V311));
        topic_invalid(b"\x30\x05\x00\x03+/a", Some(V5));
        topic_invalid(b"\x30\x03\x00\x00x", Some(V311)); // empty
        topic_invalid(b"\x30\x04\x00\x00\x00x", Some(V5)); // empty, no alias
    }

    #[test]
    fn packet_id_0_is_malformed() {
        malformed(b"\x32\x07\x00\x03a/b\x00\x00", Some(V311));
        malformed(b"\x40\x02\x00\x00", Some(V5));
        malformed(b"\x82\x06\x00\x00\x00\x01a\x00", Some(V311));
        malformed(b"\xa2\x05\x00\x00\x00\x01a", Some(V311));
    }

    #[test]
    fn subscribe_and_unsubscribe_need_filters() {
        malformed(b"\x82\x02\x00\x01", Some(V311));
        protocol_error(b"\x82\x03\x00\x01\x00", Some(V5));
        malformed(b"\xa2\x02\x00\x01", Some(V311));
        protocol_error(b"\xa2\x03\x00\x01\x00", Some(V5));
    }

    #[test]
    fn subscription_options_are_checked() {
        malformed(b"\x82\x06\x00\x01\x00\x01a\x04", Some(V311)); // no local in 3.1.1
        malformed(b"\x82\x06\x00\x01\x00\x01a\x03", Some(V311)); // QoS 3
        malformed(b"\x82\x07\x00\x01\x00\x00\x01a\x40", Some(V5)); // reserved bit
        malformed(b"\x82\x07\x00\x01\x00\x00\x01a\x30", Some(V5)); // retain handling 3
        malformed(b"\x82\x07\x00\x01\x00\x00\x01a\x03", Some(V5)); // QoS 3
    }

    #[test]
    fn subscription_identifier_0_is_a_protocol_error() {
        protocol_error(b"\x82\x09\x00\x01\x02\x0b\x00\x00\x01a\x00", Some(V5));
    }

    #[test]
    fn connect_flags_are_checked() {
        let client_id = b"\x00\x01c";
        malformed(&connect(b"MQTT", 4, 0x03, client_id), None); // reserved bit
        malformed(&connect(b"MQTT", 4, 0x0a, client_id), None); // will QoS, no will
        malformed(&connect(b"MQTT", 5, 0x22, b"\x00\x00\x01c"), None); // will retain, no will
        malformed(&connect(b"MQTT", 4, 0x1e, client_id), None); // will QoS 3
    }

    #[test]
    fn password_without_user_name() {
        let rest = b"\x00\x01c\x00\x02pw";
        malformed(&connect(b"MQTT", 4, 0x42, rest), None);
        malformed(&connect(b"MQIsdp", 3, 0x42, rest), None);
        let Packet::Connect(c) =
            decode_one(&connect(b"MQTT", 5, 0x42, b"\x00\x00\x01c\x00\x02pw"), None).unwrap()
        else {
            panic!("expected CONNECT");
        };
        assert_eq!(c.username, None);
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    }

    #[test]
    fn will_topic_must_be_a_topic_name() {
        let will = |topic: &[u8]| {
            let mut rest = b"\x00\x01c\x00".to_vec();
            rest.push(u8::try_from(topic.len()).unwrap());
            rest.extend_from_slice(topic);
            rest.extend_from_slice(b"\x00\x00");
            connect(b"MQTT", 4, 0x06, &rest)
        };
        assert!(decode_one(&will(b"a/b"), None).is_ok());
        topic_invalid(&will(b"a/#"), None);
        topic_invalid(&will(b""), None);
    }

    #[test]
    fn unsupported_protocols() {
        for (name, level) in [
            (&b"MQTT"[..], 3),
            (b"MQTT", 6),
            (b"MQIsdp", 4),
            (b"HTTP", 4),
        ] {
            assert_eq!(
                err(&connect(name, level, 0x02, b"\x00\x01c"), None),
                DecodeError::UnsupportedProtocolVersion { level }
            );
        }
    }

    #[test]
    fn mqtt_31_client_id_length_is_not_limited() {
        let id = "a".repeat(100);
        let mut rest = vec![0, 100];
        rest.extend_from_slice(id.as_bytes());
        let Packet::Connect(c) = decode_one(&connect(b"MQIsdp", 3, 0x02, &rest), None).unwrap()
        else {
            panic!("expected CONNECT");
        };
        assert_eq!(c.client_id, id);
    }

    #[test]
    fn properties_are_checked_in_packets() {
        protocol_error(
            &connect(b"MQTT", 5, 0x02, b"\x03\x21\x00\x00\x00\x00"),
            None,
        ); // receive maximum 0
        protocol_error(
            &connect(b"MQTT", 5, 0x02, b"\x05\x27\x00\x00\x00\x00\x00\x00"),
            None,
        ); // maximum packet size 0
        protocol_error(b"\x40\x07\x00\x01\x00\x03\x13\x00\x05", Some(V5)); // server keep alive in PUBACK
        protocol_error(b"\x30\x0a\x00\x01a\x06\x23\x00\x01\x23\x00\x02", Some(V5)); // topic alias twice
        malformed(b"\x40\x06\x00\x01\x00\x02\x14\x00", Some(V5)); // unknown id 0x14
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        malformed(b"\xc0\x01\x00", Some(V311));
        malformed(b"\x40\x03\x00\x01\x00", Some(V311));
        malformed(b"\xe0\x01\x00", Some(V311));
        malformed(b"\xb0\x03\x00\x01\x00", Some(V311));
        malformed(&connect(b"MQTT", 4, 0x02, b"\x00\x01cX"), None);
        // Bytes after a property block that covers the whole rest of a
        // DISCONNECT.
        malformed(b"\xe0\x03\x00\x00\x00", Some(V5));
    }

    #[test]
    fn truncated_fields_are_malformed() {
        malformed(b"\x40\x01\x00", Some(V311));
        malformed(b"\x30\x03\x00\x05a", Some(V311));
        malformed(&connect(b"MQTT", 4, 0x02, b"\x00\x05c"), None);
    }

    #[test]
    fn connack_checks() {
        malformed(b"\x20\x02\x02\x00", Some(V311)); // reserved flag
        malformed(b"\x20\x02\x00\x06", Some(V311)); // reserved return code
                                                    // 3.1 has no session present flag: the byte is ignored.
        let Packet::Connack(c) = decode_one(b"\x20\x02\x01\x03", Some(V31)).unwrap() else {
            panic!("expected CONNACK");
        };
        assert!(!c.session_present);
        assert_eq!(c.reason, ReasonCode::SERVER_UNAVAILABLE);
    }

    #[test]
    fn suback_return_codes_are_checked_in_311() {
        malformed(b"\x90\x03\x00\x01\x03", Some(V311));
        assert!(decode_one(b"\x90\x04\x00\x01\x00\x97", Some(V5)).is_ok());
    }
}
