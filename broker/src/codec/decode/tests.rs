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
    let Packet::Connect(c) = decode_one(&connect(b"MQIsdp", 3, 0x02, &rest), None).unwrap() else {
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
