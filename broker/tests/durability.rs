//! Durability: retained messages and persistent sessions (subscriptions,
//! queued and in-flight QoS 1/2 messages, inbound QoS 2 state) survive a
//! graceful restart and `kill -9`. Nothing acknowledged to a publisher may be
//! lost.
//!
//! mosquitto only writes its database on exit or autosave, so it loses data
//! on `kill -9`: those tests are skipped under mosquitto (our broker must not
//! lose anything). The graceful-restart tests run under both.

use crate::common;

use common::*;

fn persistent_broker() -> BrokerOpts {
    BrokerOpts {
        persistence: true,
        ..BrokerOpts::default()
    }
}

fn session(id: &str) -> Connect {
    Connect::v4(id).clean(false)
}

/// Leaves a persistent session for `id` subscribed to `filter`, offline.
async fn offline_subscriber(broker: &TestBroker, id: &str, filter: &str, qos: u8) {
    let (mut raw, _) = Raw::connect(broker, &session(id)).await;
    assert_eq!(raw.subscribe(1, &[(filter, qos)]).await, vec![qos]);
    raw.disconnect().await;
}

/// Publishes `n` QoS 1 messages "0".."n-1", each acknowledged before the next.
async fn publish_acked(broker: &TestBroker, topic: &str, n: u16) {
    let (mut publisher, _) = Raw::connect(broker, &Connect::v4("publisher")).await;
    for i in 0..n {
        publisher
            .publish_qos1(&Pub::new(topic, i.to_string().as_bytes()).qos(1, i + 1))
            .await;
    }
}

/// Reconnects `id` and checks that exactly the messages "0".."n-1" arrive, in order.
async fn receive_all(broker: &TestBroker, id: &str, n: u16) {
    let (mut raw, connack) = Raw::connect(broker, &session(id)).await;
    assert!(connack.session_present, "the session survived");
    for i in 0..n {
        let m = raw.expect_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes(), "message {i}");
        raw.ack_publish(&m).await;
    }
    raw.expect_nothing(QUIET).await;
}

async fn assert_retained(broker: &TestBroker, topic: &str, payload: &[u8]) {
    let (mut sub, _) = Raw::connect(broker, &Connect::v4("retained-check")).await;
    sub.subscribe(1, &[(topic, 1)]).await;
    let m = sub.expect_publish().await;
    assert!(m.retain);
    assert_eq!(m.payload, payload);
    sub.ack_publish(&m).await;
}

#[tokio::test]
async fn retained_messages_survive_a_restart() {
    let mut broker = TestBroker::start(persistent_broker()).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher
        .publish_qos1(&Pub::new("keep/a", b"A").qos(1, 1).retain())
        .await;
    publisher
        .publish_qos1(&Pub::new("keep/b", b"B").qos(1, 2).retain())
        .await;
    publisher
        .publish_qos1(&Pub::new("keep/b", b"").qos(1, 3).retain())
        .await; // cleared
    publisher.disconnect().await;

    assert!(broker.stop().await, "the broker exits on SIGTERM by itself");
    broker.restart().await;
    assert_retained(&broker, "keep/a", b"A").await;
    let (mut sub, _) = Raw::connect(&broker, &Connect::v4("cleared-check")).await;
    sub.subscribe(1, &[("keep/b", 1)]).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn persistent_session_survives_a_restart() {
    let mut broker = TestBroker::start(persistent_broker()).await;
    offline_subscriber(&broker, "durable", "d/#", 1).await;
    publish_acked(&broker, "d/x", 3).await;

    broker.restart().await;
    receive_all(&broker, "durable", 3).await;
    // The subscription itself survived as well.
    publish_acked(&broker, "d/y", 1).await;
    let (mut raw, _) = Raw::connect(&broker, &session("durable")).await;
    assert_eq!(raw.expect_publish().await.payload, b"0");
}

#[tokio::test]
async fn inflight_message_survives_a_restart_and_is_resent_with_dup() {
    let mut broker = TestBroker::start(persistent_broker()).await;
    let (mut sub, _) = Raw::connect(&broker, &session("inflight")).await;
    sub.subscribe(1, &[("f", 1)]).await;
    publish_acked(&broker, "f", 1).await;
    let first = sub.expect_publish().await;
    drop(sub); // never acknowledged

    broker.restart().await;
    let (mut sub, connack) = Raw::connect(&broker, &session("inflight")).await;
    assert!(connack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.pid, again.payload.as_slice()),
        (first.pid, &b"0"[..])
    );
}

#[tokio::test]
async fn without_persistence_a_restart_forgets_everything() {
    let mut broker = TestBroker::start_default().await;
    offline_subscriber(&broker, "forgotten", "t", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher
        .publish_qos1(&Pub::new("r", b"x").qos(1, 1).retain())
        .await;
    publisher.disconnect().await;

    broker.restart().await;
    let (_raw, connack) = Raw::connect(&broker, &session("forgotten")).await;
    assert!(!connack.session_present);
    let (mut sub, _) = Raw::connect(&broker, &Connect::v4("sub")).await;
    sub.subscribe(1, &[("r", 1)]).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn acknowledged_messages_survive_kill9() {
    if skip_on_mosquitto("mosquitto saves its database only on exit or autosave") {
        return;
    }
    let mut broker = TestBroker::start(persistent_broker()).await;
    offline_subscriber(&broker, "durable", "k/#", 1).await;
    publish_acked(&broker, "k/x", 50).await;

    broker.kill9();
    broker.restart().await;
    receive_all(&broker, "durable", 50).await;
}

#[tokio::test]
async fn retained_messages_survive_kill9() {
    if skip_on_mosquitto("mosquitto saves its database only on exit or autosave") {
        return;
    }
    let mut broker = TestBroker::start(persistent_broker()).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher
        .publish_qos1(&Pub::new("kr/a", b"first").qos(1, 1).retain())
        .await;
    publisher
        .publish_qos1(&Pub::new("kr/a", b"second").qos(1, 2).retain())
        .await;

    broker.kill9();
    broker.restart().await;
    assert_retained(&broker, "kr/a", b"second").await;
}

#[tokio::test]
async fn inflight_qos2_delivery_survives_kill9() {
    if skip_on_mosquitto("mosquitto saves its database only on exit or autosave") {
        return;
    }
    let mut broker = TestBroker::start(persistent_broker()).await;
    let (mut sub, _) = Raw::connect(&broker, &session("q2")).await;
    sub.subscribe(1, &[("q2", 2)]).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher
        .send_publish(&Pub::new("q2", b"once").qos(2, 1))
        .await;
    publisher.expect_pubrec().await;
    publisher.send(&ack(kind::PUBREL, 1, false, 0)).await;
    publisher.expect_pubcomp().await;
    // The subscriber got it and sent PUBREC: the broker now owes a PUBREL.
    let m = sub.expect_publish().await;
    sub.send(&ack(kind::PUBREC, m.pid, false, 0)).await;
    sub.expect_pubrel().await;

    broker.kill9();
    broker.restart().await;
    let (mut sub, connack) = Raw::connect(&broker, &session("q2")).await;
    assert!(connack.session_present);
    // [MQTT-4.4.0-1]: PUBREL again, no second PUBLISH.
    assert_eq!(sub.expect_pubrel().await.pid, m.pid);
    sub.send(&ack(kind::PUBCOMP, m.pid, false, 0)).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn inbound_qos2_state_survives_kill9() {
    if skip_on_mosquitto("mosquitto saves its database only on exit or autosave") {
        return;
    }
    let mut broker = TestBroker::start(persistent_broker()).await;
    offline_subscriber(&broker, "receiver", "in2", 2).await;
    let (mut publisher, _) = Raw::connect(&broker, &session("sender")).await;
    let p = Pub::new("in2", b"exactly once").qos(2, 5);
    publisher.send_publish(&p).await;
    assert_eq!(publisher.expect_pubrec().await.pid, 5);
    drop(publisher);

    broker.kill9();
    broker.restart().await;
    // The sender resumes: it resends the PUBLISH with DUP (its PUBREC might
    // have been lost), then completes the exchange.
    let (mut publisher, connack) = Raw::connect(&broker, &session("sender")).await;
    assert!(connack.session_present);
    publisher.send_publish(&p.clone().dup()).await;
    assert_eq!(publisher.expect_pubrec().await.pid, 5);
    publisher.send(&ack(kind::PUBREL, 5, false, 0)).await;
    assert_eq!(publisher.expect_pubcomp().await.pid, 5);

    // The receiver gets the message exactly once.
    let (mut receiver, _) = Raw::connect(&broker, &session("receiver")).await;
    let m = receiver.expect_publish().await;
    assert_eq!((m.qos, m.payload.as_slice()), (2, &b"exactly once"[..]));
    receiver.ack_publish(&m).await;
    receiver.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn repeated_kill9_loses_nothing() {
    if skip_on_mosquitto("mosquitto saves its database only on exit or autosave") {
        return;
    }
    let mut broker = TestBroker::start(persistent_broker()).await;
    offline_subscriber(&broker, "durable", "rk", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    let mut pid = 0u16;
    for _round in 0..3 {
        for _ in 0..10 {
            publisher
                .publish_qos1(&Pub::new("rk", pid.to_string().as_bytes()).qos(1, pid + 1))
                .await;
            pid += 1;
        }
        broker.kill9();
        broker.restart().await;
        publisher = Raw::connect(&broker, &Connect::v4("pub")).await.0;
    }
    receive_all(&broker, "durable", pid).await;
}
