use super::*;

const MAX: usize = 1 << 20;

/// Appends a complete PUBLISH.
fn encode_publish(
    buf: &mut BytesMut,
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload: &[u8],
) -> Result<(), EncodeError> {
    encode_publish_header(buf, topic, qos, pkid, payload.len())?;
    buf.put_slice(payload);
    Ok(())
}

#[test]
fn connect_with_credentials_matches_the_spec_bytes() {
    let mut buf = BytesMut::new();
    let connect = Connect {
        client_id: "c1",
        keep_alive: 60,
        clean_session: true,
        username: Some("u"),
        password: Some(b"pw"),
    };
    encode_connect(&connect, &mut buf).unwrap();
    let expected: &[u8] = &[
        0x10, 21, // fixed header
        0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, // variable header
        0, 2, b'c', b'1', 0, 1, b'u', 0, 2, b'p', b'w',
    ];
    assert_eq!(&buf[..], expected);
}

#[test]
fn password_without_user_name_is_not_sent() {
    let mut buf = BytesMut::new();
    let connect = Connect {
        client_id: "",
        keep_alive: 0,
        clean_session: false,
        username: None,
        password: Some(b"pw"),
    };
    encode_connect(&connect, &mut buf).unwrap();
    assert_eq!(
        &buf[..],
        &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 0, 0, 0]
    );
}

#[test]
fn publish_round_trips_for_every_qos() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, "a/b", qos, 7, b"hello").unwrap();
        let packet = decode(&mut buf, MAX).unwrap().unwrap();
        let expected_pkid = if qos == QoS::AtMostOnce { 0 } else { 7 };
        assert_eq!(
            packet,
            Packet::Publish(Publish {
                qos,
                pkid: expected_pkid,
                retain: false,
                dup: false,
                topic: Bytes::from_static(b"a/b"),
                payload: Bytes::from_static(b"hello"),
            })
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn long_publish_uses_a_multi_byte_remaining_length() {
    let payload = vec![0xAB; 20_000];
    let mut buf = BytesMut::new();
    encode_publish(&mut buf, "t", QoS::AtLeastOnce, 1, &payload).unwrap();
    // 2 + 1 (topic) + 2 (pkid) + 20,000 = 20,005 = 0x4E25 -> 0xA5 0x9C 0x01
    assert_eq!(&buf[..4], &[0x32, 0xA5, 0x9C, 0x01]);
    let Some(Packet::Publish(p)) = decode(&mut buf, MAX).unwrap() else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(p.payload.len(), 20_000);
}

#[test]
fn acks_round_trip() {
    let cases = [
        (Ack::PubAck, Packet::PubAck(258)),
        (Ack::PubRec, Packet::PubRec(258)),
        (Ack::PubRel, Packet::PubRel(258)),
        (Ack::PubComp, Packet::PubComp(258)),
    ];
    for (ack, expected) in cases {
        let mut buf = BytesMut::new();
        encode_ack(&mut buf, ack, 258);
        assert_eq!(buf[1..], [2, 1, 2]);
        assert_eq!(decode(&mut buf, MAX).unwrap(), Some(expected));
    }
    let mut buf = BytesMut::new();
    encode_ack(&mut buf, Ack::PubRel, 1);
    assert_eq!(buf[0], 0x62, "PUBREL carries the reserved flags 0010");
}

#[test]
fn subscribe_and_control_packets_match_the_spec_bytes() {
    let mut buf = BytesMut::new();
    encode_subscribe(&mut buf, 10, "a/#", QoS::ExactlyOnce).unwrap();
    assert_eq!(&buf[..], &[0x82, 8, 0, 10, 0, 3, b'a', b'/', b'#', 2]);
    buf.clear();
    encode_pingreq(&mut buf);
    encode_disconnect(&mut buf);
    assert_eq!(&buf[..], &[0xC0, 0, 0xE0, 0]);
}

#[test]
fn broker_packets_decode() {
    let mut buf = BytesMut::from(
        &[
            0x20, 2, 1, 0, // CONNACK, session present, accepted
            0x90, 4, 0, 5, 1, 0x80, // SUBACK pkid 5: QoS 1, failure
            0xD0, 0, // PINGRESP
        ][..],
    );
    assert_eq!(
        decode(&mut buf, MAX).unwrap(),
        Some(Packet::ConnAck {
            session_present: true,
            return_code: 0
        })
    );
    assert_eq!(
        decode(&mut buf, MAX).unwrap(),
        Some(Packet::SubAck {
            pkid: 5,
            return_codes: vec![1, 0x80]
        })
    );
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Packet::PingResp));
    assert_eq!(decode(&mut buf, MAX).unwrap(), None);
}

#[test]
fn partial_packets_are_left_in_the_buffer() {
    let mut whole = BytesMut::new();
    encode_publish(&mut whole, "topic", QoS::AtLeastOnce, 3, b"payload").unwrap();
    for cut in 0..whole.len() {
        let mut part = BytesMut::from(&whole[..cut]);
        assert_eq!(decode(&mut part, MAX).unwrap(), None, "cut at {cut}");
        assert_eq!(part.len(), cut, "nothing consumed at {cut}");
    }
}

#[test]
fn invalid_input_is_an_error_not_a_panic() {
    let cases: [(&[u8], DecodeError); 7] = [
        (
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF],
            DecodeError::MalformedLength,
        ),
        (&[0x36, 3, 0, 1, b'a'], DecodeError::Malformed("PUBLISH")), // QoS 3
        (&[0x30, 3, 0, 9, b'a'], DecodeError::Malformed("PUBLISH")), // topic past end
        (&[0x32, 3, 0, 1, b'a'], DecodeError::Malformed("PUBLISH")), // no pkid
        (
            &[0x32, 5, 0, 1, b'a', 0, 0],
            DecodeError::Malformed("PUBLISH"),
        ), // pkid 0
        (&[0x40, 1, 0], DecodeError::Malformed("acknowledgement")),
        (&[0x10, 0], DecodeError::UnexpectedType(1)),
    ];
    for (bytes, expected) in cases {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(decode(&mut buf, MAX), Err(expected), "{bytes:?}");
    }
}

#[test]
fn oversized_packets_are_refused_from_the_header() {
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]); // 16,384 bytes follow
    assert_eq!(
        decode(&mut buf, 1024),
        Err(DecodeError::TooLarge {
            size: 16_388,
            max: 1024
        })
    );
}

#[test]
fn overlong_fields_are_refused() {
    let long = "x".repeat(70_000);
    let mut buf = BytesMut::new();
    assert_eq!(
        encode_publish(&mut buf, &long, QoS::AtMostOnce, 0, b""),
        Err(EncodeError::FieldTooLong {
            field: "topic",
            len: 70_000
        })
    );
}
