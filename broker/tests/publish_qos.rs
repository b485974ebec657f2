//! PUBLISH at QoS 0, 1 and 2: end-to-end delivery, QoS downgrade to the
//! subscription's, the full PUBREC / PUBREL / PUBCOMP exchange in both
//! directions, duplicate detection on inbound QoS 2, and ordering.

use crate::common;

use common::*;
use rumqttc::QoS;

#[tokio::test]
async fn qos0_qos1_qos2_are_delivered_end_to_end() {
    let broker = TestBroker::start_default().await;
    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("q/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    for (topic, qos) in [
        ("q/0", QoS::AtMostOnce),
        ("q/1", QoS::AtLeastOnce),
        ("q/2", QoS::ExactlyOnce),
    ] {
        publisher
            .publish(topic, qos, false, topic.as_bytes().to_vec())
            .await;
        let msg = sub.recv().await;
        assert_eq!(msg.topic, topic);
        assert_eq!(msg.qos, qos, "granted QoS 2 keeps the publish QoS");
        assert_eq!(&msg.payload[..], topic.as_bytes());
        assert!(!msg.retain);
    }
}

#[tokio::test]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let broker = TestBroker::start_default().await;
    let mut sub0 = raw_subscriber4(&broker, "sub0", "t", 0).await;
    let mut sub1 = raw_subscriber4(&broker, "sub1", "t", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;

    publisher
        .send_publish(&Pub::new("t", b"two").qos(2, 1))
        .await;
    assert_eq!(publisher.expect_pubrec().await.pid, 1);
    publisher.send(&ack(kind::PUBREL, 1, false, 0)).await;
    assert_eq!(publisher.expect_pubcomp().await.pid, 1);

    let m0 = sub0.expect_publish().await;
    assert_eq!((m0.qos, m0.payload.as_slice()), (0, &b"two"[..]));
    let m1 = sub1.expect_publish().await;
    assert_eq!((m1.qos, m1.payload.as_slice()), (1, &b"two"[..]));
    assert_ne!(m1.pid, 0, "QoS 1 delivery carries a packet identifier");
    sub1.ack_publish(&m1).await;

    // A QoS 0 publish reaches a QoS 1 subscriber at QoS 0.
    publisher.send_publish(&Pub::new("t", b"zero")).await;
    let m1 = sub1.expect_publish().await;
    assert_eq!((m1.qos, m1.payload.as_slice()), (0, &b"zero"[..]));
}

#[tokio::test]
async fn qos1_publish_is_acknowledged_with_its_packet_identifier() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v4("q1")).await;
    for pid in [1u16, 0x1234, 0xFFFF] {
        raw.publish_qos1(&Pub::new("a", b"x").qos(1, pid)).await;
    }
}

#[tokio::test]
async fn inbound_qos2_full_exchange_delivers_once() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber5(&broker, "sub", "x/y", 2).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;

    publisher
        .send_publish(&Pub::new("x/y", b"exactly once").qos(2, 7))
        .await;
    let rec = publisher.expect_pubrec().await;
    assert_eq!((rec.pid, rec.reason), (7, 0));
    publisher.send(&ack(kind::PUBREL, 7, true, 0)).await;
    let comp = publisher.expect_pubcomp().await;
    assert_eq!((comp.pid, comp.reason), (7, 0));

    let msg = sub.expect_publish().await;
    assert_eq!((msg.qos, msg.payload.as_slice()), (2, &b"exactly once"[..]));
    sub.ack_publish(&msg).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn inbound_qos2_duplicate_before_pubrel_is_not_redelivered() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber4(&broker, "sub", "dup/t", 2).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;

    let first = Pub::new("dup/t", b"once").qos(2, 9);
    publisher.send_publish(&first).await;
    assert_eq!(publisher.expect_pubrec().await.pid, 9);
    // The PUBREC "was lost": the client resends with DUP [MQTT-4.3.3-9].
    publisher.send_publish(&first.clone().dup()).await;
    assert_eq!(publisher.expect_pubrec().await.pid, 9);
    publisher.send(&ack(kind::PUBREL, 9, false, 0)).await;
    assert_eq!(publisher.expect_pubcomp().await.pid, 9);

    let msg = sub.expect_publish().await;
    assert_eq!(msg.payload, b"once");
    sub.ack_publish(&msg).await;
    sub.expect_nothing(QUIET).await;

    // After PUBCOMP the identifier is free again: a new message with it is
    // a new application message.
    publisher
        .send_publish(&Pub::new("dup/t", b"again").qos(2, 9))
        .await;
    assert_eq!(publisher.expect_pubrec().await.pid, 9);
    publisher.send(&ack(kind::PUBREL, 9, false, 0)).await;
    assert_eq!(publisher.expect_pubcomp().await.pid, 9);
    assert_eq!(sub.expect_publish().await.payload, b"again");
}

#[tokio::test]
async fn pubrel_is_answered_again_when_pubcomp_was_lost() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    publisher.send_publish(&Pub::new("t", b"x").qos(2, 3)).await;
    publisher.expect_pubrec().await;
    publisher.send(&ack(kind::PUBREL, 3, true, 0)).await;
    assert_eq!(publisher.expect_pubcomp().await.reason, 0);
    // A repeated PUBREL must still be completed [MQTT-4.3.3-11]; the
    // identifier is no longer known, which 5.0 reports as 0x92.
    publisher.send(&ack(kind::PUBREL, 3, true, 0)).await;
    let comp = publisher.expect_pubcomp().await;
    assert_eq!(comp.pid, 3);
    assert!(
        matches!(comp.reason, 0x00 | 0x92),
        "PUBCOMP reason {:#04x}",
        comp.reason
    );
}

#[tokio::test]
async fn outbound_qos2_exchange_with_subscriber() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber5(&broker, "sub", "out", 2).await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    publisher
        .publish("out", QoS::ExactlyOnce, false, "m1")
        .await;

    let msg = sub.expect_publish().await;
    assert_eq!(msg.qos, 2);
    assert!(!msg.dup, "first delivery has DUP = 0 [MQTT-3.3.1-3]");
    sub.send(&ack(kind::PUBREC, msg.pid, true, 0)).await;
    let rel = sub.expect_pubrel().await;
    assert_eq!((rel.pid, rel.reason), (msg.pid, 0));
    sub.send(&ack(kind::PUBCOMP, msg.pid, true, 0)).await;

    // The identifier is released: the next message flows normally.
    publisher
        .publish("out", QoS::ExactlyOnce, false, "m2")
        .await;
    let next = sub.expect_publish().await;
    assert_eq!(next.payload, b"m2");
    sub.ack_publish(&next).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn messages_on_one_topic_keep_their_order() {
    let broker = TestBroker::start_default().await;
    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("ordered", QoS::AtLeastOnce).await;
    let (publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    for i in 0..50u32 {
        publisher
            .client
            .publish("ordered", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queue publish");
    }
    for i in 0..50u32 {
        let msg = sub.recv().await;
        assert_eq!(
            msg.payload,
            i.to_string().as_bytes(),
            "message {i} out of order"
        );
    }
}

#[tokio::test]
async fn binary_and_large_payloads_arrive_intact() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber4(&broker, "sub", "bin", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for (pid, payload) in [(1u16, Vec::new()), (2, all_bytes), (3, large)] {
        publisher
            .publish_qos1(&Pub::new("bin", &payload).qos(1, pid))
            .await;
        let msg = sub.expect_publish().await;
        assert_eq!(msg.payload.len(), payload.len());
        assert!(msg.payload == payload, "payload {pid} corrupted");
        sub.ack_publish(&msg).await;
    }
}

#[tokio::test]
async fn publisher_receives_its_own_message_when_subscribed() {
    let broker = TestBroker::start_default().await;
    let (mut c, _) = Client4::connect(&broker, "echo", |_| {}).await;
    c.subscribe("self", QoS::AtLeastOnce).await;
    c.publish("self", QoS::AtLeastOnce, false, "me").await;
    assert_eq!(&c.recv().await.payload[..], b"me");
}
