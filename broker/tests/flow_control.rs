//! Acknowledged means delivered: back-pressure from slow subscribers to
//! publishers, the slow-subscriber policy for those that stop, the
//! broker-wide budget of queued bytes, and closes the client can read.
//!
//! The first test runs against mosquitto too (`KUBEMQTT_TEST_BROKER=mosquitto`):
//! a slow subscriber getting every message is common ground; how the
//! broker gets there (pausing the publisher, or queueing without bound)
//! differs, and the rate assertions are ours only.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

/// 5.0 DISCONNECT reason: Quota exceeded.
const QUOTA_EXCEEDED: u8 = 0x97;
/// 5.0 DISCONNECT reason: Receive Maximum exceeded.
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;

/// Publishes `count` QoS 1 messages `0..count` on `topic` with at most
/// `window` unacknowledged, and returns how long until the last PUBACK.
async fn publish_qos1(publisher: &mut Raw, topic: &str, count: u32, window: u32) -> Duration {
    let start = Instant::now();
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < count {
        if sent < count && sent - acked < window {
            let pid = (sent % 60_000 + 1) as u16;
            publisher
                .send_publish(&Pub::new(topic, sent.to_string().as_bytes()).qos(1, pid))
                .await;
            sent += 1;
            continue;
        }
        match publisher.recv_within(Duration::from_secs(30)).await {
            Recv::Packet(Pkt::PubAck(_)) => acked += 1,
            other => panic!("publisher: expected PUBACK, got {other:?}"),
        }
    }
    start.elapsed()
}

/// A subscriber task that takes `count` QoS 1 messages, waiting `delay`
/// before each PUBACK, and returns their payloads in arrival order.
fn slow_subscriber(
    mut sub: Raw,
    count: usize,
    delay: Duration,
) -> tokio::task::JoinHandle<Vec<u32>> {
    tokio::spawn(async move {
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            match sub.recv_within(Duration::from_secs(30)).await {
                Recv::Packet(Pkt::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.payload).parse().unwrap());
                    tokio::time::sleep(delay).await;
                    if p.qos > 0 {
                        sub.send(&ack(kind::PUBACK, p.pid, sub.v5, 0)).await;
                    }
                }
                other => panic!(
                    "subscriber: expected PUBLISH after {} messages, got {other:?}",
                    got.len()
                ),
            }
        }
        got
    })
}

fn in_order(count: u32) -> Vec<u32> {
    (0..count).collect()
}

#[tokio::test]
async fn a_slow_subscriber_receives_every_qos1_message_in_order_at_its_own_pace() {
    // Offline queues would hold 10: without back-pressure most of these
    // messages would be dropped for the (connected, reading) subscriber.
    let broker = TestBroker::start(BrokerOpts {
        max_queued_messages: (!target_is_mosquitto()).then_some(10),
        extra_limits: "queue_high_water = 20\n".into(),
        ..BrokerOpts::default()
    })
    .await;
    let (mut sub, _) = Raw::connect(&broker, &Connect::v4("slow-sub")).await;
    assert_eq!(sub.subscribe(1, &[("flow/slow", 1)]).await, vec![1]);
    let count = 300;
    let delay = Duration::from_millis(3);
    let receiver = slow_subscriber(sub, count as usize, delay);

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("fast-pub")).await;
    let took = publish_qos1(&mut publisher, "flow/slow", count, 10).await;
    let got = tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .expect("the subscriber got every message in time")
        .unwrap();
    assert_eq!(got, in_order(count), "every message, once, in order");
    if target_is_mosquitto() {
        return;
    }
    // The publisher went at the subscriber's pace: it could not get far
    // ahead of it (high-water mark, in-flight window and what a paused
    // connection holds: well under 100 messages), where it alone would
    // have finished in a few milliseconds.
    let subscriber_pace = delay * (count - 100);
    assert!(
        took >= subscriber_pace,
        "the publisher finished in {took:?}, ahead of the subscriber's {subscriber_pace:?}"
    );
    assert!(
        !broker
            .logs()
            .iter()
            .any(|l| l.contains("Outgoing messages are being dropped")),
        "nothing was dropped"
    );
}

/// The HTTP server and admin API on `{port:http}` with a token, and
/// `[limits]` with `limits`.
fn ops_config(dir: &std::path::Path, limits: &str) -> String {
    let token = write_file(dir, "admin-token", "tok\n");
    format!(
        "[http]\nbind = \"127.0.0.1:{{port:http}}\"\nadmin_token_file = \"{}\"\n[limits]\n{limits}\n",
        token.display()
    )
}

/// A 5.0 subscriber of `topic` at QoS 1.
async fn subscriber(broker: &OpsBroker, id: &str, topic: &str) -> Raw {
    let (mut sub, _) = Raw::connect(broker, &Connect::v5(id)).await;
    assert_eq!(sub.subscribe(1, &[(topic, 1)]).await, vec![1]);
    sub
}

#[tokio::test]
async fn a_stopped_subscriber_is_disconnected_after_its_timeout_and_the_others_get_everything() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: ops_config(
            fixtures.path(),
            "queue_high_water = 10\nslow_subscriber_timeout_ms = 500\n\
             slow_subscriber_action = \"disconnect\"",
        ),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let count = 400;
    let mut receivers = Vec::new();
    for id in ["reader-1", "reader-2"] {
        let sub = subscriber(&broker, id, "fair/t").await;
        receivers.push(slow_subscriber(sub, count as usize, Duration::ZERO));
    }
    // Subscribes, then never reads again.
    let mut stopped = subscriber(&broker, "stopped", "fair/t").await;

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    let took = publish_qos1(&mut publisher, "fair/t", count, 10).await;
    for receiver in receivers {
        let got = tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .expect("the readers are not held back for long")
            .unwrap();
        assert_eq!(got, in_order(count));
    }
    // Held back for the stopped subscriber's timeout, not for ever.
    assert!(
        took < Duration::from_secs(10),
        "the publisher took {took:?}"
    );
    // The stopped subscriber finds the messages it had, then why it was
    // disconnected.
    let mut reason = None;
    loop {
        match stopped.recv_within(TIMEOUT).await {
            Recv::Packet(Pkt::Publish(_)) => {}
            Recv::Packet(Pkt::Disconnect(d)) => reason = Some(d.reason),
            Recv::Closed => break,
            other => panic!("stopped subscriber: {other:?}"),
        }
    }
    assert_eq!(reason, Some(QUOTA_EXCEEDED));
    assert!(
        broker
            .wait_for_log("Client stopped is too slow", TIMEOUT)
            .await
    );
    broker
        .wait_metrics("the stall is counted", |m| {
            m.value(
                "kubemqtt_slow_subscribers_total",
                &[("action", "disconnect")],
            ) == 1.0
        })
        .await;
}

#[tokio::test]
async fn a_stopped_subscriber_with_the_drop_action_loses_only_its_own_messages_visibly() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: ops_config(
            fixtures.path(),
            "queue_high_water = 10\nslow_subscriber_timeout_ms = 300\n\
             slow_subscriber_action = \"drop\"",
        ),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let count = 300;
    let reader = subscriber(&broker, "reader", "drop/t").await;
    let receiver = slow_subscriber(reader, count as usize, Duration::ZERO);
    let mut stopped = subscriber(&broker, "stopped", "drop/t").await;
    // An unrelated topic is never slowed down.
    let other_reader = subscriber(&broker, "other-reader", "other/t").await;
    let other_receiver = slow_subscriber(other_reader, 50, Duration::ZERO);

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    let (mut other_publisher, _) = Raw::connect(&broker, &Connect::v5("other-pub")).await;
    let other_took = publish_qos1(&mut other_publisher, "other/t", 50, 10).await;
    publish_qos1(&mut publisher, "drop/t", count, 10).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .expect("the reader got everything")
            .unwrap(),
        in_order(count)
    );
    assert_eq!(
        other_receiver.await.unwrap(),
        in_order(50),
        "the other topic's subscriber got everything"
    );
    assert!(
        other_took < Duration::from_secs(2),
        "an unrelated publisher waited {other_took:?}"
    );

    // Still connected: it answers a ping after its in-flight messages.
    stopped.send(&pingreq()).await;
    loop {
        match stopped.recv().await {
            Pkt::Publish(_) => {}
            Pkt::PingResp => break,
            other => panic!("stopped subscriber: {other:?}"),
        }
    }
    assert!(
        broker
            .wait_for_log(
                "Outgoing messages are being dropped for client stopped.",
                TIMEOUT
            )
            .await
    );
    let dropped_line_count = broker
        .logs()
        .iter()
        .filter(|l| l.contains("Outgoing messages are being dropped for client stopped."))
        .count();
    assert_eq!(dropped_line_count, 1, "logged once per interval");
    let metrics = broker.metrics().await;
    let dropped = metrics.value(
        "kubemqtt_messages_dropped_total",
        &[("reason", "slow_subscriber")],
    );
    assert!(dropped > 0.0, "drops are counted:\n{metrics}");
    assert_eq!(
        metrics.value("kubemqtt_slow_subscribers_total", &[("action", "drop")]),
        1.0
    );
    let client = broker
        .http("GET", "/api/v1/clients/stopped", Some("tok"))
        .await;
    assert_eq!(client.status, 200, "{client:?}");
    let json: serde_json::Value = serde_json::from_str(&client.body).unwrap();
    assert_eq!(json["flow"], "stalled", "{json}");
    assert_eq!(
        json["dropped_messages"].as_f64(),
        Some(dropped),
        "the admin API shows this client's drops: {json}"
    );
}

#[tokio::test]
async fn the_memory_budget_drops_for_offline_sessions_first() {
    let fixtures = tempfile::tempdir().unwrap();
    // 1 KiB payloads: 90 % of the budget is about 180 of them.
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: ops_config(fixtures.path(), "memory_budget_bytes = 204800"),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    // A persistent session that goes offline.
    let (mut away, _) = Raw::connect(&broker, &Connect::v4("away").clean(false)).await;
    assert_eq!(away.subscribe(1, &[("budget/t", 1)]).await, vec![1]);
    away.send(&disconnect(false, 0, &Props::new())).await;
    drop(away);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    let payload = vec![b'x'; 1024];
    for i in 0..400u16 {
        publisher
            .send_publish(&Pub::new("budget/t", &payload).qos(1, i + 1))
            .await;
        publisher.expect_puback().await;
    }
    let metrics = broker.metrics().await;
    let dropped = metrics.value(
        "kubemqtt_messages_dropped_total",
        &[("reason", "memory_budget")],
    );
    assert!(
        (200.0..=230.0).contains(&dropped),
        "offline deliveries past 90 % of the budget are dropped:\n{metrics}"
    );
    let queued = metrics.value("kubemqtt_queued_bytes", &[]);
    assert!(
        queued <= 204_800.0 * 0.9 + 2048.0,
        "the budget holds: {queued} bytes queued"
    );
    assert_eq!(
        metrics.value("kubemqtt_queued_bytes_budget", &[]),
        204_800.0
    );
    assert!(
        broker
            .wait_for_log(
                "Outgoing messages are being dropped for client away.",
                TIMEOUT
            )
            .await
    );
}

#[tokio::test]
async fn a_client_over_the_receive_maximum_reads_its_disconnect_not_a_reset() {
    if skip_on_mosquitto("mosquitto 2.0.11 answers PUBREC 0x97 and keeps the connection") {
        return;
    }
    let broker = TestBroker::start(BrokerOpts {
        receive_maximum: Some(5),
        ..BrokerOpts::default()
    })
    .await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v5("greedy")).await;
    // A burst of QoS 2 PUBLISHes, none released: the broker closes after
    // the sixth while the rest are still arriving.
    let payload = vec![b'x'; 2048];
    let mut burst = Vec::new();
    for pid in 1..=200u16 {
        burst.extend(Pub::new("rm/burst", &payload).qos(2, pid).encode(true));
    }
    raw.send(&burst).await;
    let mut pubrecs = 0;
    let reason = loop {
        match raw.recv_within(TIMEOUT).await {
            Recv::Packet(Pkt::PubRec(_)) => pubrecs += 1,
            Recv::Packet(Pkt::Disconnect(d)) => break d.reason,
            other => {
                panic!("expected PUBRECs then DISCONNECT, got {other:?} after {pubrecs} PUBRECs")
            }
        }
    };
    assert_eq!(reason, RECEIVE_MAXIMUM_EXCEEDED);
    assert_eq!(pubrecs, 5);
}
