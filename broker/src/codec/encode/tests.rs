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
