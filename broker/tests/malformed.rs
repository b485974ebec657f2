//! Input validation: every malformed or forbidden packet closes only the
//! offending connection (with DISCONNECT and the right reason code in 5.0)
//! and the broker keeps serving everyone else.

use crate::common;

use common::*;

/// A bystander connected before the bad client: after the bad client is
/// gone it must still get its messages, and new clients must still connect.
struct Bystander {
    sub: Raw,
}

impl Bystander {
    async fn join(broker: &TestBroker) -> Bystander {
        Bystander {
            sub: raw_subscriber4(broker, "bystander", "alive/#", 1).await,
        }
    }

    async fn still_served(mut self, broker: &TestBroker) {
        let (mut publisher, _) = Raw::connect(broker, &Connect::v5("bystander-pub")).await;
        publisher
            .publish_qos1(&Pub::new("alive/check", b"ok").qos(1, 1))
            .await;
        let m = self.sub.expect_publish().await;
        assert_eq!(m.payload, b"ok");
        self.sub.ack_publish(&m).await;
    }
}

/// Sends `bytes` on an established connection of the given version and
/// checks that the broker closes it; for 5.0 the DISCONNECT reason code must
/// be one of `reasons`.
async fn assert_rejected(broker: &TestBroker, v5: bool, bytes: &[u8], reasons: &[u8]) {
    let connect = if v5 {
        Connect::v5("bad")
    } else {
        Connect::v4("bad")
    };
    let (mut raw, _) = Raw::connect(broker, &connect).await;
    raw.send(bytes).await;
    let disconnect = raw.expect_closed().await;
    if !v5 {
        assert!(
            disconnect.is_none(),
            "3.1.1 has no server DISCONNECT: {disconnect:?}"
        );
        return;
    }
    match disconnect {
        Some(d) => assert!(
            reasons.contains(&d.reason),
            "DISCONNECT reason {:#04x}, expected one of {reasons:02x?}",
            d.reason
        ),
        None if target_is_mosquitto() => {
            eprintln!("note: mosquitto closed without DISCONNECT ({reasons:02x?} expected)")
        }
        None => panic!("no DISCONNECT before the close (expected one of {reasons:02x?})"),
    }
}

/// Runs `assert_rejected` for 3.1.1 and 5.0 with a bystander watching.
async fn rejected_in_both_versions(build: impl Fn(bool) -> Vec<u8>, reasons: &[u8]) {
    let broker = TestBroker::start_default().await;
    let bystander = Bystander::join(&broker).await;
    assert_rejected(&broker, false, &build(false), reasons).await;
    assert_rejected(&broker, true, &build(true), reasons).await;
    bystander.still_served(&broker).await;
}

#[tokio::test]
async fn wildcard_in_publish_topic() {
    // [MQTT-3.3.2-2]; the product answers 0x90 Topic Name invalid. Known
    // difference: mosquitto 2.0.11 answers 0x82 Protocol Error.
    let reason = if target_is_mosquitto() { 0x82 } else { 0x90 };
    for topic in ["a/+", "a/#", "+", "#"] {
        rejected_in_both_versions(|v5| Pub::new(topic, b"x").encode(v5), &[reason]).await;
    }
}

#[tokio::test]
async fn invalid_utf8_in_publish_topic() {
    let build = |v5: bool| {
        let mut body = Vec::new();
        put_bin(&mut body, &[b'a', 0xC3, 0x28]); // 0xC3 0x28 is not UTF-8
        if v5 {
            Props::new().encode(&mut body);
        }
        body.extend_from_slice(b"payload");
        frame(0x30, &body)
    };
    rejected_in_both_versions(build, &[0x81, 0x90]).await;
}

#[tokio::test]
async fn nul_character_in_publish_topic() {
    rejected_in_both_versions(|v5| Pub::new("a\0b", b"x").encode(v5), &[0x81, 0x90]).await;
}

#[tokio::test]
async fn invalid_utf8_in_subscribe_filter() {
    let build = |v5: bool| {
        let mut body = 1u16.to_be_bytes().to_vec();
        if v5 {
            Props::new().encode(&mut body);
        }
        put_bin(&mut body, &[0xFF, 0xFE]);
        body.push(0);
        frame(0x82, &body)
    };
    rejected_in_both_versions(build, &[0x81, 0x8F]).await;
}

#[tokio::test]
async fn oversize_packet_is_refused() {
    let broker = TestBroker::start(BrokerOpts {
        max_packet_size: Some(1024),
        ..BrokerOpts::default()
    })
    .await;
    let bystander = Bystander::join(&broker).await;
    for v5 in [false, true] {
        let big = Pub::new("big", &[7u8; 4096]).qos(1, 1).encode(v5);
        assert_rejected(&broker, v5, &big, &[0x95]).await;
    }
    // A packet within the limit is fine.
    let (mut ok, _) = Raw::connect(&broker, &Connect::v5("ok")).await;
    ok.publish_qos1(&Pub::new("small", &[7u8; 512]).qos(1, 1))
        .await;
    bystander.still_served(&broker).await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let broker = TestBroker::start_default().await;
    let bystander = Bystander::join(&broker).await;
    assert_rejected(&broker, false, &Connect::v4("again").encode(), &[]).await;
    assert_rejected(&broker, true, &Connect::v5("again").encode(), &[0x82]).await;
    bystander.still_served(&broker).await;
}

#[tokio::test]
async fn packet_before_connect_closes_the_connection() {
    let broker = TestBroker::start_default().await;
    let bystander = Bystander::join(&broker).await;
    let first_packets = [
        Pub::new("early", b"x").encode(false),
        pingreq(),
        subscribe(false, 1, &Props::new(), &[("early", 0)]),
        disconnect(false, 0, &Props::new()),
    ];
    for bytes in first_packets {
        let mut raw = Raw::open(&broker).await;
        raw.send(&bytes).await;
        // [MQTT-3.1.0-1]: the first packet must be CONNECT; nothing is answered.
        match raw.recv_within(TIMEOUT).await {
            Recv::Closed => {}
            other => panic!("{bytes:02x?} before CONNECT: expected close, got {other:?}"),
        }
    }
    bystander.still_served(&broker).await;
}

#[tokio::test]
async fn malformed_remaining_length_closes_the_connection() {
    // Five length bytes, all with the continuation bit [MQTT-1.5.5].
    rejected_in_both_versions(|_| vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], &[0x81]).await;
}

#[tokio::test]
async fn publish_with_qos_3_is_malformed() {
    rejected_in_both_versions(
        |v5| {
            let mut bytes = Pub::new("q3", b"x").qos(1, 1).encode(v5);
            bytes[0] |= 0x06; // both QoS bits [MQTT-3.3.1-4]
            bytes
        },
        &[0x81],
    )
    .await;
}

#[tokio::test]
async fn publish_with_packet_identifier_zero_is_refused() {
    rejected_in_both_versions(
        |v5| Pub::new("pid0", b"x").qos(1, 0).encode(v5),
        &[0x81, 0x82],
    )
    .await;
}

#[tokio::test]
async fn wrong_fixed_header_flags_are_malformed() {
    // SUBSCRIBE must have flags 0b0010 [MQTT-3.8.1-1].
    rejected_in_both_versions(
        |v5| {
            let mut bytes = subscribe(v5, 1, &Props::new(), &[("f", 0)]);
            bytes[0] = 0x80;
            bytes
        },
        &[0x81],
    )
    .await;
}

#[tokio::test]
async fn subscribe_without_filters_is_refused() {
    // [MQTT-3.8.3-3]: at least one topic filter.
    rejected_in_both_versions(|v5| subscribe(v5, 1, &Props::new(), &[]), &[0x81, 0x82]).await;
}

#[tokio::test]
async fn reserved_packet_type_is_malformed() {
    rejected_in_both_versions(|_| vec![0x00, 0x00], &[0x81, 0x82]).await;
}

#[tokio::test]
async fn v5_unknown_property_is_malformed() {
    let broker = TestBroker::start_default().await;
    let bystander = Bystander::join(&broker).await;
    let mut body = Vec::new();
    put_str(&mut body, "props");
    body.extend_from_slice(&[2, 0x7F, 0x00]); // property length 2, id 0x7F
    body.extend_from_slice(b"x");
    assert_rejected(&broker, true, &frame(0x30, &body), &[0x81]).await;
    bystander.still_served(&broker).await;
}

#[tokio::test]
async fn v5_property_not_allowed_in_publish_is_refused() {
    let broker = TestBroker::start_default().await;
    let bystander = Bystander::join(&broker).await;
    let bad = Pub::new("p", b"x")
        .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 5))
        .encode(true);
    assert_rejected(&broker, true, &bad, &[0x81, 0x82]).await;
    bystander.still_served(&broker).await;
}

#[tokio::test]
async fn many_bad_clients_do_not_disturb_the_broker() {
    let broker = TestBroker::start_default().await;
    let bystander = Bystander::join(&broker).await;
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let addr = broker.addr();
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let garbage: Vec<u8> = (0..64u8)
                .map(|b| b.wrapping_mul(31).wrapping_add(i))
                .collect();
            let _ = s.write_all(&garbage).await;
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(TIMEOUT, s.read(&mut buf)).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bystander.still_served(&broker).await;
}
