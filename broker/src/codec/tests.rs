//! Known byte vectors (from the specifications' examples and from what
//! mosquitto_pub sends), checked in both directions, plus framing behaviour
//! shared by every packet type.

use bytes::{Bytes, BytesMut};

use super::*;

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: u32 = 1 << 20;

/// Decodes `bytes`, which must hold exactly one packet.
pub(super) fn decode_one(
    bytes: &[u8],
    version: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, MAX)?.expect("a complete packet");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(packet)
}

/// Encodes `packet`, checking that `encoded_len` agrees.
pub(super) fn encode_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodable packet");
    assert_eq!(encoded_len(packet, version), buf.len(), "encoded_len");
    buf.to_vec()
}

/// `bytes` decodes to `packet` and `packet` encodes to `bytes`.
#[track_caller]
fn vector(version: ProtocolVersion, bytes: &[u8], packet: Packet) {
    assert_eq!(decode_one(bytes, Some(version)).unwrap(), packet);
    assert_eq!(encode_vec(&packet, version), bytes);
}

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

fn pub_response(id: u16) -> PubResponse {
    PubResponse::new(id, ReasonCode::SUCCESS)
}

#[test]
fn connect_311_as_sent_by_mosquitto_pub() {
    // mosquitto_pub -i mosq-pub-1 -t test -m hello
    let bytes = b"\x10\x16\x00\x04MQTT\x04\x02\x00\x3c\x00\x0amosq-pub-1";
    for version in [None, Some(V311), Some(V5)] {
        assert_eq!(
            decode_one(bytes, version).unwrap(),
            Packet::Connect(Box::new(connect(V311, "mosq-pub-1")))
        );
    }
    vector(
        V311,
        bytes,
        Packet::Connect(Box::new(connect(V311, "mosq-pub-1"))),
    );
}

#[test]
fn connect_5_as_sent_by_mosquitto_pub() {
    // mosquitto_pub -V 5 -i mosq-pub-1 -t test -m hello: empty properties.
    let bytes = b"\x10\x17\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x0amosq-pub-1";
    assert_eq!(
        decode_one(bytes, None).unwrap(),
        Packet::Connect(Box::new(connect(V5, "mosq-pub-1")))
    );
    vector(
        V5,
        bytes,
        Packet::Connect(Box::new(connect(V5, "mosq-pub-1"))),
    );
}

#[test]
fn connect_31() {
    let bytes = b"\x10\x18\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x0amosq-pub-1";
    assert_eq!(
        decode_one(bytes, None).unwrap(),
        Packet::Connect(Box::new(connect(V31, "mosq-pub-1")))
    );
    vector(
        V31,
        bytes,
        Packet::Connect(Box::new(connect(V31, "mosq-pub-1"))),
    );
}

#[test]
fn connect_311_with_will_user_and_password() {
    // Flags 0xCE as in the 3.1.1 specification's figure 3.8 example: user
    // name, password, will QoS 1, will, clean session; keep alive 10.
    let bytes = b"\x10\x23\x00\x04MQTT\x04\xce\x00\x0a\x00\x03cid\x00\x03w/t\x00\x03bye\x00\x04user\x00\x02pw";
    let packet = Connect {
        keep_alive: 10,
        will: Some(Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            delay_interval: None,
            properties: PublishProperties::default(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pw")),
        ..connect(V311, "cid")
    };
    vector(V311, bytes, Packet::Connect(Box::new(packet)));
}

#[test]
fn connect_5_with_properties() {
    // As the 5.0 specification's figure 3-6 example: user name, password,
    // clean start, keep alive 10, session expiry interval 10.
    let bytes = b"\x10\x1f\x00\x04MQTT\x05\xc2\x00\x0a\x05\x11\x00\x00\x00\x0a\x00\x03cid\x00\x04user\x00\x02pw";
    let packet = Connect {
        keep_alive: 10,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties {
            session_expiry_interval: Some(10),
            ..Properties::default()
        },
        ..connect(V5, "cid")
    };
    vector(V5, bytes, Packet::Connect(Box::new(packet)));
}

#[test]
fn connect_5_with_will_properties() {
    // Will QoS 1, retained, delay interval 30.
    let bytes = b"\x10\x1b\x00\x04MQTT\x05\x2e\x00\x3c\x00\x00\x01c\x05\x18\x00\x00\x00\x1e\x00\x01w\x00\x02by";
    let packet = Connect {
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"by"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: Some(30),
            properties: PublishProperties::default(),
        }),
        ..connect(V5, "c")
    };
    vector(V5, bytes, Packet::Connect(Box::new(packet)));
}

#[test]
fn connack() {
    let ok = |session_present, reason| {
        Packet::Connack(Connack {
            session_present,
            reason,
            properties: Properties::default(),
        })
    };
    vector(V311, b"\x20\x02\x00\x00", ok(false, ReasonCode::SUCCESS));
    vector(
        V311,
        b"\x20\x02\x01\x05",
        ok(true, ReasonCode::NOT_AUTHORIZED),
    );
    vector(V5, b"\x20\x03\x00\x00\x00", ok(false, ReasonCode::SUCCESS));
    let with_props = Connack {
        session_present: true,
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            receive_maximum: Some(10),
            maximum_qos: Some(1),
            ..Properties::default()
        },
    };
    vector(
        V5,
        b"\x20\x08\x01\x00\x05\x21\x00\x0a\x24\x01",
        Packet::Connack(with_props),
    );
}

#[test]
fn publish_vectors() {
    let hello = publish("test", b"hello");
    vector(
        V311,
        b"\x30\x0b\x00\x04testhello",
        Packet::Publish(hello.clone()),
    );
    vector(
        V31,
        b"\x30\x0b\x00\x04testhello",
        Packet::Publish(hello.clone()),
    );
    vector(V5, b"\x30\x0c\x00\x04test\x00hello", Packet::Publish(hello));

    // DUP, QoS 1, retain; packet id 10; topic alias 5.
    let mut p = publish("a/b", b"x");
    p.dup = true;
    p.qos = QoS::AtLeastOnce;
    p.retain = true;
    p.packet_id = Some(10);
    p.properties.topic_alias = Some(5);
    vector(
        V5,
        b"\x3b\x0c\x00\x03a/b\x00\x0a\x03\x23\x00\x05x",
        Packet::Publish(p),
    );

    // 5.0: an empty topic name with a topic alias.
    let mut p = publish("", b"x");
    p.properties.topic_alias = Some(1);
    vector(V5, b"\x30\x07\x00\x00\x03\x23\x00\x01x", Packet::Publish(p));
}

#[test]
fn publish_payload_shares_the_receive_buffer() {
    let mut buf = BytesMut::from(&b"\x30\x0b\x00\x04testhello"[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, Some(V311), MAX).unwrap() else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 8);
}

#[test]
fn pub_responses() {
    vector(V311, b"\x40\x02\x00\x01", Packet::Puback(pub_response(1)));
    vector(V311, b"\x50\x02\x00\x02", Packet::Pubrec(pub_response(2)));
    vector(V311, b"\x62\x02\x00\x03", Packet::Pubrel(pub_response(3)));
    vector(V311, b"\x70\x02\x00\x04", Packet::Pubcomp(pub_response(4)));
    // 5.0 short form: remaining length 2 means success, no properties.
    vector(V5, b"\x40\x02\x00\x01", Packet::Puback(pub_response(1)));
    vector(V5, b"\x62\x02\x00\x03", Packet::Pubrel(pub_response(3)));
    vector(
        V5,
        b"\x40\x03\x00\x01\x10",
        Packet::Puback(PubResponse::new(1, ReasonCode::NO_MATCHING_SUBSCRIBERS)),
    );
    let mut with_reason_string = PubResponse::new(1, ReasonCode::NOT_AUTHORIZED);
    with_reason_string.properties.reason_string = Some("x".into());
    vector(
        V5,
        b"\x50\x08\x00\x01\x87\x04\x1f\x00\x01x",
        Packet::Pubrec(with_reason_string),
    );
    // The long form of "success, no properties" decodes to the same packet.
    assert_eq!(
        decode_one(b"\x40\x04\x00\x01\x00\x00", Some(V5)).unwrap(),
        Packet::Puback(pub_response(1))
    );
}

#[test]
fn subscribe() {
    let qos1 = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    let qos2 = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        ..SubscriptionOptions::default()
    };
    vector(
        V311,
        b"\x82\x0c\x00\x01\x00\x03a/#\x01\x00\x01b\x02",
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("a/#".into(), qos1), ("b".into(), qos2)],
            properties: Properties::default(),
        }),
    );
    // Subscription identifier 7; QoS 1, no local, retain as published,
    // retain handling 2.
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: 2,
    };
    vector(
        V5,
        b"\x82\x0b\x00\x01\x02\x0b\x07\x00\x03a/#\x2d",
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("a/#".into(), options)],
            properties: Properties {
                subscription_identifier: Some(7),
                ..Properties::default()
            },
        }),
    );
}

#[test]
fn suback() {
    let suback = |reasons: &[u8]| {
        Packet::Suback(Suback {
            packet_id: 1,
            reasons: reasons.iter().map(|&c| ReasonCode(c)).collect(),
            properties: Properties::default(),
        })
    };
    vector(V311, b"\x90\x05\x00\x01\x00\x01\x80", suback(&[0, 1, 0x80]));
    vector(
        V5,
        b"\x90\x06\x00\x01\x00\x00\x01\x87",
        suback(&[0, 1, 0x87]),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["a/b".into()],
        properties: Properties::default(),
    });
    vector(V311, b"\xa2\x07\x00\x02\x00\x03a/b", unsubscribe.clone());
    vector(V5, b"\xa2\x08\x00\x02\x00\x00\x03a/b", unsubscribe);

    let unsuback = |reasons: Vec<ReasonCode>| {
        Packet::Unsuback(Unsuback {
            packet_id: 2,
            reasons,
            properties: Properties::default(),
        })
    };
    vector(V311, b"\xb0\x02\x00\x02", unsuback(vec![]));
    vector(
        V5,
        b"\xb0\x04\x00\x02\x00\x11",
        unsuback(vec![ReasonCode::NO_SUBSCRIPTION_EXISTED]),
    );
}

#[test]
fn ping() {
    for version in [V31, V311, V5] {
        vector(version, b"\xc0\x00", Packet::Pingreq);
        vector(version, b"\xd0\x00", Packet::Pingresp);
    }
}

#[test]
fn disconnect() {
    let disconnect = |reason, properties| Packet::Disconnect(Disconnect { reason, properties });
    vector(
        V311,
        b"\xe0\x00",
        disconnect(ReasonCode::NORMAL_DISCONNECTION, Properties::default()),
    );
    // 5.0: remaining length 0 means normal disconnection, no properties.
    vector(
        V5,
        b"\xe0\x00",
        disconnect(ReasonCode::NORMAL_DISCONNECTION, Properties::default()),
    );
    vector(
        V5,
        b"\xe0\x01\x04",
        disconnect(ReasonCode::DISCONNECT_WITH_WILL, Properties::default()),
    );
    let session_expiry_0 = Properties {
        session_expiry_interval: Some(0),
        ..Properties::default()
    };
    vector(
        V5,
        b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00",
        disconnect(ReasonCode::NORMAL_DISCONNECTION, session_expiry_0),
    );
}

#[test]
fn auth() {
    vector(
        V5,
        b"\xf0\x00",
        Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }),
    );
    vector(
        V5,
        b"\xf0\x0a\x18\x08\x15\x00\x05SCRAM",
        Packet::Auth(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                ..Properties::default()
            },
        }),
    );
}

/// One packet of each shape, for the framing tests below.
const SAMPLES: &[(ProtocolVersion, &[u8])] = &[
    (V311, b"\x10\x16\x00\x04MQTT\x04\x02\x00\x3c\x00\x0amosq-pub-1"),
    (V5, b"\x10\x1b\x00\x04MQTT\x05\x2e\x00\x3c\x00\x00\x01c\x05\x18\x00\x00\x00\x1e\x00\x01w\x00\x02by"),
    (V5, b"\x20\x08\x01\x00\x05\x21\x00\x0a\x24\x01"),
    (V5, b"\x3b\x0c\x00\x03a/b\x00\x0a\x03\x23\x00\x05x"),
    (V311, b"\x30\x0b\x00\x04testhello"),
    (V5, b"\x50\x08\x00\x01\x87\x04\x1f\x00\x01x"),
    (V5, b"\x82\x0b\x00\x01\x02\x0b\x07\x00\x03a/#\x2d"),
    (V311, b"\xa2\x07\x00\x02\x00\x03a/b"),
    (V5, b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"),
    (V5, b"\xf0\x0a\x18\x08\x15\x00\x05SCRAM"),
];

#[test]
fn partial_input_needs_more_and_leaves_the_buffer_alone() {
    for &(version, bytes) in SAMPLES {
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode(&mut buf, Some(version), MAX),
                Ok(None),
                "{bytes:x?} cut at {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut]);
        }
    }
}

#[test]
fn back_to_back_packets_are_taken_one_at_a_time() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"\x40\x02\x00\x01");
    buf.extend_from_slice(b"\xc0\x00");
    buf.extend_from_slice(b"\x30\x0b\x00\x04test");
    assert_eq!(
        decode(&mut buf, Some(V311), MAX).unwrap(),
        Some(Packet::Puback(pub_response(1)))
    );
    assert_eq!(
        decode(&mut buf, Some(V311), MAX).unwrap(),
        Some(Packet::Pingreq)
    );
    assert_eq!(decode(&mut buf, Some(V311), MAX).unwrap(), None);
    assert_eq!(&buf[..], b"\x30\x0b\x00\x04test");
    buf.extend_from_slice(b"hello");
    assert_eq!(
        decode(&mut buf, Some(V311), MAX).unwrap(),
        Some(Packet::Publish(publish("test", b"hello")))
    );
    assert!(buf.is_empty());
}

#[test]
fn oversize_is_detected_from_the_fixed_header_alone() {
    let mut buf = BytesMut::from(&b"\x30\xff\xff\xff\x7f"[..]);
    assert_eq!(
        decode(&mut buf, Some(V311), 1024),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    // The limit counts the whole packet: 13 bytes fit in 13, not in 12.
    let bytes = b"\x30\x0b\x00\x04testhello";
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, Some(V311), 13).unwrap().is_some());
    let mut buf = BytesMut::from(&bytes[..2]);
    assert_eq!(
        decode(&mut buf, Some(V311), 12),
        Err(DecodeError::PacketTooLarge { size: 13, max: 12 })
    );
}

#[test]
fn remaining_length_longer_than_four_bytes_is_malformed() {
    for bytes in [&b"\x30\xff\xff\xff\xff"[..], b"\x30\x80\x80\x80\x80\x01"] {
        let mut buf = BytesMut::from(bytes);
        assert!(matches!(
            decode(&mut buf, Some(V311), MAX),
            Err(DecodeError::MalformedPacket(_))
        ));
    }
    let mut buf = BytesMut::from(&b"\x30\xff\xff\xff"[..]);
    assert_eq!(decode(&mut buf, Some(V311), u32::MAX), Ok(None));
}
