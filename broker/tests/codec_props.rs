//! Property tests of the MQTT codec: every valid packet survives
//! encode -> decode (exactly in 5.0; with properties dropped and codes mapped
//! in 3.1.1), and no input makes the decoder panic.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use kubemqtt_broker::codec::*;

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: u32 = 1 << 20;

// ---- strategies ------------------------------------------------------------

/// Any string the wire format can carry: Unicode without U+0000.
fn string() -> impl Strategy<Value = String> {
    "[^\\x00]{0,8}"
}

/// A topic name: non-empty, no wildcards.
fn topic_name() -> impl Strategy<Value = String> {
    "[^\\x00+#]{1,8}"
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = u8> {
    0..=1u8
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Often success (the encoder's short forms), often a code the
/// specification defines, sometimes any byte.
fn reason() -> impl Strategy<Value = ReasonCode> {
    const DEFINED: &[u8] = &[
        0x00, 0x01, 0x02, 0x04, 0x10, 0x11, 0x18, 0x19, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
        0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
        0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    prop_oneof![Just(0u8), prop::sample::select(DEFINED), any::<u8>()].prop_map(ReasonCode)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn subscription_id() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((string(), string()), 0..3)
}

/// Any valid value of every field; each packet keeps only what it allows.
fn all_properties() -> impl Strategy<Value = Properties> {
    let a = (
        option::of(any::<u32>()),
        option::of(string()),
        option::of(any::<u16>()),
        option::of(string()),
        option::of(bytes()),
        option::of(flag()),
        option::of(flag()),
    );
    let b = (
        option::of(string()),
        option::of(string()),
        option::of(string()),
        option::of(1..=u16::MAX),
        option::of(any::<u16>()),
        option::of(flag()),
        option::of(flag()),
    );
    let c = (
        user_properties(),
        option::of(1..=u32::MAX),
        option::of(flag()),
        option::of(subscription_id()),
        option::of(flag()),
        option::of(flag()),
    );
    let full = (a, b, c).prop_map(|(a, b, c)| Properties {
        session_expiry_interval: a.0,
        assigned_client_identifier: a.1,
        server_keep_alive: a.2,
        authentication_method: a.3,
        authentication_data: a.4,
        request_problem_information: a.5,
        request_response_information: a.6,
        response_information: b.0,
        server_reference: b.1,
        reason_string: b.2,
        receive_maximum: b.3,
        topic_alias_maximum: b.4,
        maximum_qos: b.5,
        retain_available: b.6,
        user_properties: c.0,
        maximum_packet_size: c.1,
        wildcard_subscription_available: c.2,
        subscription_identifier: c.3,
        subscription_identifier_available: c.4,
        shared_subscription_available: c.5,
    });
    prop_oneof![Just(Properties::default()), full]
}

// What each packet allows (MQTT 5.0 table 2-4), written out independently of
// the codec's own table.

fn for_connect(p: Properties) -> Properties {
    Properties {
        session_expiry_interval: p.session_expiry_interval,
        authentication_method: p.authentication_method,
        authentication_data: p.authentication_data,
        request_problem_information: p.request_problem_information,
        request_response_information: p.request_response_information,
        receive_maximum: p.receive_maximum,
        topic_alias_maximum: p.topic_alias_maximum,
        user_properties: p.user_properties,
        maximum_packet_size: p.maximum_packet_size,
        ..Properties::default()
    }
}

fn for_connack(p: Properties) -> Properties {
    Properties {
        request_problem_information: None,
        request_response_information: None,
        subscription_identifier: None,
        ..p
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
fn for_ack(p: Properties) -> Properties {
    Properties {
        reason_string: p.reason_string,
        user_properties: p.user_properties,
        ..Properties::default()
    }
}

fn for_subscribe(p: Properties) -> Properties {
    Properties {
        subscription_identifier: p.subscription_identifier,
        user_properties: p.user_properties,
        ..Properties::default()
    }
}

fn for_unsubscribe(p: Properties) -> Properties {
    Properties {
        user_properties: p.user_properties,
        ..Properties::default()
    }
}

fn for_disconnect(p: Properties) -> Properties {
    Properties {
        session_expiry_interval: p.session_expiry_interval,
        server_reference: p.server_reference,
        reason_string: p.reason_string,
        user_properties: p.user_properties,
        ..Properties::default()
    }
}

fn for_auth(p: Properties) -> Properties {
    Properties {
        authentication_method: p.authentication_method,
        authentication_data: p.authentication_data,
        reason_string: p.reason_string,
        user_properties: p.user_properties,
        ..Properties::default()
    }
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    let full = (
        option::of(flag()),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(string()),
        option::of(bytes()),
        user_properties(),
        vec(subscription_id(), 0..3),
        option::of(string()),
    )
        .prop_map(|p| PublishProperties {
            payload_format_indicator: p.0,
            message_expiry_interval: p.1,
            topic_alias: p.2,
            response_topic: p.3,
            correlation_data: p.4,
            user_properties: p.5,
            subscription_identifiers: p.6,
            content_type: p.7,
        });
    prop_oneof![Just(PublishProperties::default()), full]
}

fn will() -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes(),
        qos(),
        any::<bool>(),
        option::of(any::<u32>()),
        publish_properties(),
    )
        .prop_map(|(topic, payload, qos, retain, delay_interval, p)| Will {
            topic,
            payload,
            qos,
            retain,
            delay_interval,
            // Not allowed in a will.
            properties: PublishProperties {
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                ..p
            },
        })
}

fn connect() -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will()),
        option::of(string()),
        option::of(bytes()),
        all_properties(),
    )
        .prop_map(
            |(clean_start, keep_alive, client_id, will, username, password, p)| {
                Packet::Connect(Box::new(Connect {
                    protocol: V5,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: for_connect(p),
                }))
            },
        )
}

fn publish() -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        publish_properties(),
        bytes(),
        any::<bool>(),
    )
        .prop_map(
            |(dup, qos, retain, topic, id, properties, payload, alias_only)| {
                let qos0 = qos == QoS::AtMostOnce;
                // With a topic alias the topic name may be empty (5.0).
                let alias_only = alias_only && properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: if alias_only { "".into() } else { topic.into() },
                    packet_id: (!qos0).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

fn pub_response() -> impl Strategy<Value = PubResponse> {
    (packet_id(), reason(), all_properties()).prop_map(|(packet_id, reason, p)| PubResponse {
        packet_id,
        reason,
        properties: for_ack(p),
    })
}

fn subscribe() -> impl Strategy<Value = Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0..=2u8).prop_map(
        |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
    );
    (
        packet_id(),
        vec((string(), options), 1..4),
        all_properties(),
    )
        .prop_map(|(packet_id, filters, p)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: for_subscribe(p),
            })
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(),
        (any::<bool>(), reason(), all_properties()).prop_map(|(session_present, reason, p)| {
            Packet::Connack(Connack {
                session_present,
                reason,
                properties: for_connack(p),
            })
        }),
        publish(),
        pub_response().prop_map(Packet::Puback),
        pub_response().prop_map(Packet::Pubrec),
        pub_response().prop_map(Packet::Pubrel),
        pub_response().prop_map(Packet::Pubcomp),
        subscribe(),
        (packet_id(), vec(reason(), 0..4), all_properties()).prop_map(|(packet_id, reasons, p)| {
            Packet::Suback(Suback {
                packet_id,
                reasons,
                properties: for_ack(p),
            })
        }),
        (packet_id(), vec(string(), 1..4), all_properties()).prop_map(|(packet_id, filters, p)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: for_unsubscribe(p),
            })
        }),
        (packet_id(), vec(reason(), 0..4), all_properties()).prop_map(|(packet_id, reasons, p)| {
            Packet::Unsuback(Unsuback {
                packet_id,
                reasons,
                properties: for_ack(p),
            })
        }),
        Just(Packet::Pingreq),
        Just(Packet::Pingresp),
        (reason(), all_properties()).prop_map(|(reason, p)| {
            Packet::Disconnect(Disconnect {
                reason,
                properties: for_disconnect(p),
            })
        }),
        (reason(), all_properties()).prop_map(|(reason, p)| {
            Packet::Auth(Auth {
                reason,
                properties: for_auth(p),
            })
        }),
    ]
}

// ---- 3.1.1 expectations ----------------------------------------------------

/// What a 5.0 CONNACK reason code comes back as after a trip through a
/// 3.1.1 return code.
fn connack_reason_via_311(reason: ReasonCode) -> ReasonCode {
    ReasonCode(match reason.0 {
        0x00 => 0x00,
        0x84 => 0x84,
        0x85 => 0x85,
        0x86 | 0x8C => 0x86,
        0x87 | 0x8A => 0x87,
        _ => 0x88,
    })
}

/// `packet` as a 3.1.1 peer sees it, or `None` when 3.1.1 cannot carry it.
fn as_311(packet: &Packet) -> Option<Packet> {
    let none = Properties::default;
    let ack = |r: &PubResponse| PubResponse::new(r.packet_id, ReasonCode::SUCCESS);
    Some(match packet {
        Packet::Connect(c) => {
            if c.password.is_some() && c.username.is_none() {
                return None;
            }
            Packet::Connect(Box::new(Connect {
                protocol: V311,
                will: c.will.clone().map(|w| Will {
                    delay_interval: None,
                    properties: PublishProperties::default(),
                    ..w
                }),
                properties: none(),
                ..(**c).clone()
            }))
        }
        Packet::Connack(c) => Packet::Connack(Connack {
            session_present: c.session_present,
            reason: connack_reason_via_311(c.reason),
            properties: none(),
        }),
        Packet::Publish(p) => {
            if p.topic.is_empty() {
                return None;
            }
            Packet::Publish(Publish {
                properties: PublishProperties::default(),
                ..p.clone()
            })
        }
        Packet::Puback(r) => Packet::Puback(ack(r)),
        Packet::Pubrec(r) => Packet::Pubrec(ack(r)),
        Packet::Pubrel(r) => Packet::Pubrel(ack(r)),
        Packet::Pubcomp(r) => Packet::Pubcomp(ack(r)),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            packet_id: s.packet_id,
            filters: s
                .filters
                .iter()
                .map(|(f, o)| {
                    let qos_only = SubscriptionOptions {
                        qos: o.qos,
                        ..SubscriptionOptions::default()
                    };
                    (f.clone(), qos_only)
                })
                .collect(),
            properties: none(),
        }),
        Packet::Suback(s) => Packet::Suback(Suback {
            packet_id: s.packet_id,
            reasons: s
                .reasons
                .iter()
                .map(|r| if r.0 <= 2 { *r } else { ReasonCode(0x80) })
                .collect(),
            properties: none(),
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            properties: none(),
            ..u.clone()
        }),
        Packet::Unsuback(u) => Packet::Unsuback(Unsuback {
            packet_id: u.packet_id,
            reasons: Vec::new(),
            properties: none(),
        }),
        Packet::Pingreq => Packet::Pingreq,
        Packet::Pingresp => Packet::Pingresp,
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: none(),
        }),
        Packet::Auth(_) => return None,
    })
}

// ---- helpers ---------------------------------------------------------------

/// Encodes, checks `encoded_len`, and decodes the result as one packet.
fn round_trip(packet: &Packet, version: ProtocolVersion) -> Result<Packet, TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(encoded_len(packet, version), buf.len());
    let decoded = decode(&mut buf, Some(version), MAX)
        .map_err(|e| TestCaseError::fail(format!("{e} decoding {packet:?}")))?;
    prop_assert!(buf.is_empty(), "bytes left over");
    decoded.ok_or_else(|| TestCaseError::fail("decoder wants more bytes"))
}

/// Decodes everything in `bytes` with `version`; each packet that decodes
/// must re-encode to bytes that decode to the same packet.
fn decode_and_reencode(
    bytes: &[u8],
    version: Option<ProtocolVersion>,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, version, MAX) {
        // A CONNECT is always read per its own protocol level.
        let encode_version = match (&packet, version) {
            (Packet::Connect(c), _) => c.protocol,
            (_, Some(v)) => v,
            (_, None) => return Err(TestCaseError::fail("non-CONNECT decoded without a version")),
        };
        prop_assert_eq!(round_trip(&packet, encode_version)?, packet);
    }
    Ok(())
}

// ---- properties ------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v5_round_trip_is_exact(packet in packet()) {
        prop_assert_eq!(round_trip(&packet, V5)?, packet);
    }

    #[test]
    fn v311_round_trip_drops_what_311_cannot_carry(packet in packet()) {
        match as_311(&packet) {
            Some(expected) => prop_assert_eq!(round_trip(&packet, V311)?, expected),
            None => prop_assert!(encode(&packet, V311, &mut BytesMut::new()).is_err()),
        }
    }

    #[test]
    fn v31_connect_round_trips(packet in connect()) {
        if let Some(Packet::Connect(mut expected)) = as_311(&packet) {
            expected.protocol = V31;
            prop_assert_eq!(round_trip(&packet, V31)?, Packet::Connect(expected));
        }
    }

    /// The delivery path's encoder gives the same bytes (or the same
    /// refusal) as the general one.
    #[test]
    fn publish_by_reference_encodes_like_the_packet(
        packet in publish(),
        version in prop_oneof![Just(V31), Just(V311), Just(V5)],
        dup in any::<bool>(),
        drop_id in any::<bool>(),
    ) {
        let Packet::Publish(mut publish) = packet else { unreachable!() };
        // Also the invalid shapes: DUP on QoS 0, QoS > 0 without an id.
        publish.dup = dup;
        if drop_id {
            publish.packet_id = None;
        }
        let (mut general, mut by_ref) = (BytesMut::new(), BytesMut::new());
        let expected = encode(&Packet::Publish(publish.clone()), version, &mut general);
        let got = encode_publish(&(&publish).into(), version, &mut by_ref);
        prop_assert_eq!(got.is_ok(), expected.is_ok());
        prop_assert_eq!(by_ref, general);
    }

    /// The short-PUBACK fast path agrees with the decoder on every 4 bytes
    /// that start a PUBACK.
    #[test]
    fn short_puback_agrees_with_decode(
        id in any::<u16>(),
        rest in vec(any::<u8>(), 0..8),
        version in prop_oneof![Just(V31), Just(V311), Just(V5)],
    ) {
        let mut bytes = vec![0x40, 0x02];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&rest);
        let decoded = decode(&mut BytesMut::from(&bytes[..]), Some(version), 1024);
        match short_puback(&bytes) {
            Some(fast) => prop_assert_eq!(
                decoded.ok().flatten(),
                Some(Packet::Puback(PubResponse::new(fast, ReasonCode::SUCCESS)))
            ),
            // Only packet id 0 is refused, and the decoder refuses it too.
            None => {
                prop_assert_eq!(id, 0);
                prop_assert!(decoded.is_err());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for version in [None, Some(V31), Some(V311), Some(V5)] {
            decode_and_reencode(&bytes, version)?;
        }
    }

    /// Valid packets with a few bytes changed reach deep into the decoder.
    #[test]
    fn mutated_packets_never_panic(
        packet in packet(),
        version in prop_oneof![Just(V311), Just(V5)],
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = BytesMut::new();
        if encode(&packet, version, &mut buf).is_ok() {
            for (index, value) in edits {
                let i = index.index(buf.len());
                buf[i] ^= value;
            }
            decode_and_reencode(&buf, Some(version))?;
            decode_and_reencode(&buf, None)?;
        }
    }
}

#[test]
fn every_connack_reason_code_maps_to_a_311_return_code() {
    for code in 0..=u8::MAX {
        let packet = Packet::Connack(Connack {
            session_present: false,
            reason: ReasonCode(code),
            properties: Properties::default(),
        });
        let expected = as_311(&packet).expect("CONNACK exists in 3.1.1");
        assert_eq!(round_trip(&packet, V311).expect("round trip"), expected);
    }
}
