//! Retained messages: set, replace, clear with an empty payload, delivery on
//! subscribe (including through wildcards), retain flag on live messages,
//! QoS of retained deliveries.

use crate::common;

use common::*;
use rumqttc::QoS;

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    publisher
        .publish("status/door", QoS::AtLeastOnce, true, "open")
        .await;

    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("status/door", QoS::AtLeastOnce).await;
    let msg = sub.recv().await;
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        ("status/door", &b"open"[..])
    );
    assert!(
        msg.retain,
        "a retained delivery on subscribe has RETAIN = 1 [MQTT-3.3.1-8]"
    );
    sub.expect_silence().await;
}

#[tokio::test]
async fn retained_message_is_replaced() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    publisher
        .publish("temp", QoS::AtLeastOnce, true, "20")
        .await;
    publisher
        .publish("temp", QoS::AtLeastOnce, true, "21")
        .await;

    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("temp", QoS::AtLeastOnce).await;
    assert_eq!(&sub.recv().await.payload[..], b"21");
    sub.expect_silence().await;
}

#[tokio::test]
async fn empty_retained_payload_clears_the_topic() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    publisher
        .publish("gone", QoS::AtLeastOnce, true, "here")
        .await;

    // A current subscriber still gets the empty message as a normal publish.
    let (mut live, _) = Client4::connect(&broker, "live", |_| {}).await;
    live.subscribe("gone", QoS::AtLeastOnce).await;
    assert_eq!(&live.recv().await.payload[..], b"here");
    publisher.publish("gone", QoS::AtLeastOnce, true, "").await;
    let cleared = live.recv().await;
    assert!(cleared.payload.is_empty());

    // New subscribers get nothing [MQTT-3.3.1-10/11].
    let (mut late, _) = Client4::connect(&broker, "late", |_| {}).await;
    late.subscribe("gone", QoS::AtLeastOnce).await;
    late.expect_silence().await;
}

#[tokio::test]
async fn wildcard_subscription_receives_every_matching_retained_message() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    for t in [
        "house/1/temp",
        "house/2/temp",
        "house/2/humidity",
        "garden/temp",
    ] {
        publisher
            .publish(t, QoS::AtLeastOnce, true, t.as_bytes().to_vec())
            .await;
    }

    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("house/+/temp", QoS::AtLeastOnce).await;
    let mut got = vec![sub.recv().await.topic, sub.recv().await.topic];
    got.sort();
    assert_eq!(got, ["house/1/temp", "house/2/temp"]);
    sub.expect_silence().await;

    let (mut all, _) = Client4::connect(&broker, "all", |_| {}).await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(all.recv().await.topic);
    }
    got.sort();
    assert_eq!(
        got,
        [
            "garden/temp",
            "house/1/temp",
            "house/2/humidity",
            "house/2/temp"
        ]
    );
}

#[tokio::test]
async fn live_messages_to_existing_subscribers_have_retain_cleared() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber4(&broker, "sub", "live", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher
        .publish_qos1(&Pub::new("live", b"x").qos(1, 1).retain())
        .await;
    let msg = sub.expect_publish().await;
    assert!(
        !msg.retain,
        "[MQTT-3.3.1-9]: RETAIN = 0 for an established subscription"
    );
}

#[tokio::test]
async fn retained_delivery_uses_the_lower_qos() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher
        .publish_qos1(&Pub::new("rq/1", b"one").qos(1, 1).retain())
        .await;
    publisher
        .send_publish(&Pub::new("rq/0", b"zero").retain())
        .await;
    // A PINGREQ round trip makes sure the QoS 0 publish was processed.
    publisher.send(&pingreq()).await;
    assert!(matches!(publisher.recv().await, Pkt::PingResp));

    let (mut sub, _) = Raw::connect(&broker, &Connect::v4("sub")).await;
    assert_eq!(
        sub.subscribe(1, &[("rq/1", 0), ("rq/0", 2)]).await,
        vec![0, 2]
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = sub.expect_publish().await;
        assert!(m.retain);
        got.push((m.topic.clone(), m.qos));
    }
    got.sort();
    assert_eq!(got, [("rq/0".to_string(), 0), ("rq/1".to_string(), 0)]);
}

#[tokio::test]
async fn resubscribing_sends_retained_messages_again() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    publisher
        .publish("again", QoS::AtLeastOnce, true, "r")
        .await;
    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("again", QoS::AtLeastOnce).await;
    assert!(sub.recv().await.retain);
    // 3.1.1 [MQTT-3.8.4-3]: retained messages are re-sent on a repeated SUBSCRIBE.
    sub.subscribe("again", QoS::AtLeastOnce).await;
    assert!(sub.recv().await.retain);
}

#[tokio::test]
async fn retained_qos0_message_is_kept() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Client4::connect(&broker, "pub", |_| {}).await;
    publisher.publish("q0", QoS::AtMostOnce, true, "zero").await;
    // Wait until the broker has processed it: an own subscription sees it.
    publisher.subscribe("q0", QoS::AtMostOnce).await;
    assert_eq!(&publisher.recv().await.payload[..], b"zero");

    let (mut sub, _) = Client4::connect(&broker, "sub", |_| {}).await;
    sub.subscribe("q0", QoS::AtLeastOnce).await;
    let msg = sub.recv().await;
    assert_eq!((msg.qos, &msg.payload[..]), (QoS::AtMostOnce, &b"zero"[..]));
}
