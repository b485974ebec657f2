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
mod tests {
    use bytes::Bytes;

    use super::super::tests::encode_vec;
    use super::*;

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn publish(topic: &str) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"x"),
        }
    }

    fn encode_err(packet: &Packet, version: ProtocolVersion) -> EncodeError {
        let mut buf = BytesMut::new();
        let err = encode(packet, version, &mut buf).expect_err("must not encode");
        assert!(buf.is_empty(), "bytes written despite the error");
        err
    }

    #[test]
    fn connack_reason_codes_map_to_311_return_codes() {
        let cases = [
            (0x00, 0),
            (0x84, 1),
            (0x85, 2),
            (0x86, 4),
            (0x87, 5),
            (0x8C, 4),
            (0x8A, 5),
            (0x80, 3),
            (0x83, 3),
            (0x88, 3),
            (0x89, 3),
            (0x8B, 3),
            (0x97, 3),
            (0x9F, 3),
        ];
        for (reason, code) in cases {
            let packet = Packet::Connack(Connack {
                session_present: true,
                reason: ReasonCode(reason),
                properties: Properties {
                    reason_string: Some("dropped".into()),
                    ..Properties::default()
                },
            });
            assert_eq!(encode_vec(&packet, V311), [0x20, 2, 1, code], "{reason:#x}");
            // 3.1 has no session present flag.
            assert_eq!(encode_vec(&packet, V31), [0x20, 2, 0, code], "{reason:#x}");
        }
    }

    #[test]
    fn suback_failures_become_0x80_in_311() {
        let packet = Packet::Suback(Suback {
            packet_id: 7,
            reasons: [0x00, 0x01, 0x02, 0x80, 0x87, 0x97, 0xA2]
                .map(ReasonCode)
                .to_vec(),
            properties: Properties::default(),
        });
        assert_eq!(
            encode_vec(&packet, V311),
            b"\x90\x09\x00\x07\x00\x01\x02\x80\x80\x80\x80"
        );
    }

    #[test]
    fn responses_lose_reason_and_properties_in_311() {
        let properties = Properties {
            reason_string: Some("why".into()),
            ..Properties::default()
        };
        let response = PubResponse {
            packet_id: 9,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: properties.clone(),
        };
        assert_eq!(
            encode_vec(&Packet::Puback(response.clone()), V311),
            b"\x40\x02\x00\x09"
        );
        assert_eq!(
            encode_vec(&Packet::Pubrel(response), V31),
            b"\x62\x02\x00\x09"
        );
        let unsuback = Packet::Unsuback(Unsuback {
            packet_id: 9,
            reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: properties.clone(),
        });
        assert_eq!(encode_vec(&unsuback, V311), b"\xb0\x02\x00\x09");
        let disconnect = Packet::Disconnect(Disconnect {
            reason: ReasonCode::SERVER_SHUTTING_DOWN,
            properties,
        });
        assert_eq!(encode_vec(&disconnect, V311), b"\xe0\x00");
    }

    #[test]
    fn auth_does_not_exist_before_5() {
        let auth = Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        });
        for version in [V31, V311] {
            assert_eq!(
                encode_err(&auth, version),
                EncodeError::NotInVersion {
                    packet: "AUTH",
                    version
                }
            );
        }
    }

    #[test]
    fn connect_protocol_name_follows_the_version() {
        let packet = Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: false,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                session_expiry_interval: Some(5),
                ..Properties::default()
            },
        }));
        assert_eq!(
            encode_vec(&packet, V31),
            b"\x10\x0e\x00\x06MQIsdp\x03\x00\x00\x00\x00\x00"
        );
        assert_eq!(
            encode_vec(&packet, V311),
            b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x00\x00\x00"
        );
    }

    #[test]
    fn publish_properties_are_dropped_in_311() {
        let mut p = publish("t");
        p.properties.message_expiry_interval = Some(10);
        p.properties.user_properties = vec![("k".into(), "v".into())];
        assert_eq!(encode_vec(&Packet::Publish(p), V311), b"\x30\x04\x00\x01tx");
    }

    #[test]
    fn short_forms_in_5() {
        let mut response = PubResponse::new(1, ReasonCode::SUCCESS);
        assert_eq!(
            encode_vec(&Packet::Puback(response.clone()), V5),
            b"\x40\x02\x00\x01"
        );
        // A property PUBACK does not allow is left out, keeping the short form.
        response.properties.session_expiry_interval = Some(1);
        assert_eq!(
            encode_vec(&Packet::Puback(response.clone()), V5),
            b"\x40\x02\x00\x01"
        );
        response.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
        assert_eq!(
            encode_vec(&Packet::Puback(response), V5),
            b"\x40\x03\x00\x01\x10"
        );

        let disconnect = |reason| {
            Packet::Disconnect(Disconnect {
                reason,
                properties: Properties::default(),
            })
        };
        assert_eq!(
            encode_vec(&disconnect(ReasonCode::SUCCESS), V5),
            b"\xe0\x00"
        );
        assert_eq!(
            encode_vec(&disconnect(ReasonCode::SESSION_TAKEN_OVER), V5),
            b"\xe0\x01\x8e"
        );
    }

    #[test]
    fn dup_is_not_written_for_qos_0() {
        let mut p = publish("t");
        p.dup = true;
        assert_eq!(encode_vec(&Packet::Publish(p), V311), b"\x30\x04\x00\x01tx");
    }

    #[test]
    fn invalid_packets_are_refused() {
        let mut no_id = publish("t");
        no_id.qos = QoS::AtLeastOnce;
        assert!(matches!(
            encode_err(&Packet::Publish(no_id), V311),
            EncodeError::InvalidPacket(_)
        ));

        let mut alias_only = publish("");
        assert!(matches!(
            encode_err(&Packet::Publish(alias_only.clone()), V5),
            EncodeError::InvalidPacket(_)
        ));
        alias_only.properties.topic_alias = Some(3);
        assert!(matches!(
            encode_err(&Packet::Publish(alias_only.clone()), V311),
            EncodeError::InvalidPacket(_)
        ));
        assert_eq!(
            encode_vec(&Packet::Publish(alias_only), V5),
            b"\x30\x07\x00\x00\x03\x23\x00\x03x"
        );

        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                "t".into(),
                SubscriptionOptions {
                    retain_handling: 3,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: Properties::default(),
        });
        assert!(matches!(
            encode_err(&subscribe, V5),
            EncodeError::InvalidPacket(_)
        ));

        let password_only = Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: Some(Bytes::from_static(b"pw")),
            properties: Properties::default(),
        }));
        assert!(matches!(
            encode_err(&password_only, V311),
            EncodeError::InvalidPacket(_)
        ));
        assert!(encode(&password_only, V5, &mut BytesMut::new()).is_ok());
    }

    #[test]
    fn oversized_fields_and_packets_are_refused() {
        let long = publish(&"a".repeat(65_536));
        assert_eq!(
            encode_err(&Packet::Publish(long), V311),
            EncodeError::StringTooLong { len: 65_536 }
        );
        // Zeroed memory that the encoder's dry run never touches.
        let mut huge = publish("t");
        huge.payload = Bytes::from(vec![0u8; MAX_VARINT]);
        assert_eq!(
            encode_err(&Packet::Publish(huge), V311),
            EncodeError::PacketTooLarge {
                size: MAX_VARINT + 3
            }
        );
    }

    #[test]
    fn encoded_len_counts_the_fixed_header() {
        let mut p = publish("t");
        p.payload = Bytes::from(vec![0u8; 200]);
        // Type byte, 2 remaining-length bytes, 3 topic bytes, 1 property
        // length byte, 200 payload bytes.
        assert_eq!(encoded_len(&Packet::Publish(p), V5), 207);
        assert_eq!(encoded_len(&Packet::Pingreq, V311), 2);
    }
}
