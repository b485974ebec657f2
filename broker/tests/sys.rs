//! `$SYS` topics like mosquitto's, published periodically (the harness
//! configures a 1 s interval), with values that follow the broker's activity.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS;

const VERSION: &str = "$SYS/broker/version";
const UPTIME: &str = "$SYS/broker/uptime";
const CONNECTED: &str = "$SYS/broker/clients/connected";
const MSG_RECEIVED: &str = "$SYS/broker/messages/received";
const MSG_SENT: &str = "$SYS/broker/messages/sent";
const BYTES_RECEIVED: &str = "$SYS/broker/bytes/received";
const BYTES_SENT: &str = "$SYS/broker/bytes/sent";
const SUBSCRIPTIONS: &str = "$SYS/broker/subscriptions/count";
const RETAINED: &str = "$SYS/broker/retained messages/count";

/// A client subscribed to `$SYS/#` that remembers the latest value per topic.
struct SysWatcher {
    client: Client4,
    latest: HashMap<String, String>,
}

impl SysWatcher {
    async fn start(broker: &TestBroker) -> SysWatcher {
        let (mut client, _) = Client4::connect(broker, "sys-watcher", |_| {}).await;
        client.subscribe("$SYS/#", QoS::AtMostOnce).await;
        SysWatcher {
            client,
            latest: HashMap::new(),
        }
    }

    /// Waits (at most 10 s, i.e. several periods) until `topic` has a value
    /// accepted by `ok`, and returns it.
    async fn wait_for(&mut self, topic: &str, ok: impl Fn(&str) -> bool) -> String {
        if let Some(v) = self.latest.get(topic).filter(|v| ok(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(m) = self.client.next_publish(Duration::from_millis(500)).await else {
                continue;
            };
            let value = String::from_utf8_lossy(&m.payload).into_owned();
            self.latest.insert(m.topic.clone(), value.clone());
            if m.topic == topic && ok(&value) {
                return value;
            }
        }
        panic!(
            "{topic}: no acceptable value within 10 s (last: {:?})",
            self.latest.get(topic)
        );
    }

    /// The latest known numeric value of a counter topic (possibly a
    /// retained one; counters only grow, so it is a lower bound).
    async fn number(&mut self, topic: &str) -> u64 {
        leading_number(&self.wait_for(topic, |v| leading_number(v).is_some()).await).unwrap_or(0)
    }

    /// Waits until a counter reaches at least `min`.
    async fn at_least(&mut self, topic: &str, min: u64) -> u64 {
        let v = self
            .wait_for(topic, |v| leading_number(v).is_some_and(|n| n >= min))
            .await;
        leading_number(&v).unwrap_or(0)
    }
}

/// "42", "42 seconds" -> 42.
fn leading_number(v: &str) -> Option<u64> {
    v.split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn every_documented_sys_topic_is_published() {
    let broker = TestBroker::start_default().await;
    let mut sys = SysWatcher::start(&broker).await;
    let version = sys.wait_for(VERSION, |v| !v.is_empty()).await;
    assert!(!version.trim().is_empty());
    sys.wait_for(UPTIME, |v| {
        v.ends_with(" seconds") && leading_number(v).is_some()
    })
    .await;
    for topic in [
        CONNECTED,
        MSG_RECEIVED,
        MSG_SENT,
        BYTES_RECEIVED,
        BYTES_SENT,
        SUBSCRIPTIONS,
        RETAINED,
    ] {
        sys.wait_for(topic, |v| leading_number(v).is_some()).await;
    }
}

#[tokio::test]
async fn sys_topics_are_republished_periodically() {
    let broker = TestBroker::start_default().await;
    let mut sys = SysWatcher::start(&broker).await;
    let first = sys.number(UPTIME).await;
    // Uptime keeps growing: a later period publishes a larger value.
    sys.at_least(UPTIME, first + 2).await;
}

#[tokio::test]
async fn connected_clients_are_counted() {
    let broker = TestBroker::start_default().await;
    let mut sys = SysWatcher::start(&broker).await;
    sys.at_least(CONNECTED, 1).await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(
            Raw::connect(&broker, &Connect::v4(&format!("extra-{i}")))
                .await
                .0,
        );
    }
    sys.at_least(CONNECTED, 4).await;
    drop(others);
    sys.wait_for(CONNECTED, |v| leading_number(v) == Some(1))
        .await;
}

#[tokio::test]
async fn message_and_byte_counters_follow_traffic() {
    let broker = TestBroker::start_default().await;
    let mut sys = SysWatcher::start(&broker).await;
    let received = sys.number(MSG_RECEIVED).await;
    let sent = sys.number(MSG_SENT).await;
    let bytes_received = sys.number(BYTES_RECEIVED).await;
    let bytes_sent = sys.number(BYTES_SENT).await;

    let mut sub = raw_subscriber4(&broker, "counted-sub", "count/me", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("counted-pub")).await;
    for pid in 1..=5u16 {
        publisher
            .publish_qos1(&Pub::new("count/me", &[0u8; 1000]).qos(1, pid))
            .await;
        let m = sub.expect_publish().await;
        sub.ack_publish(&m).await;
    }
    sys.at_least(MSG_RECEIVED, received + 5).await;
    sys.at_least(MSG_SENT, sent + 5).await;
    sys.at_least(BYTES_RECEIVED, bytes_received + 5000).await;
    sys.at_least(BYTES_SENT, bytes_sent + 5000).await;
}

#[tokio::test]
async fn subscription_and_retained_counts_follow_state() {
    let broker = TestBroker::start_default().await;
    let mut sys = SysWatcher::start(&broker).await;
    let subscriptions = sys.number(SUBSCRIPTIONS).await;
    let retained = sys.number(RETAINED).await;

    let (mut c, _) = Raw::connect(&broker, &Connect::v4("counter")).await;
    c.subscribe(1, &[("s/1", 0), ("s/2", 0), ("s/+", 1)]).await;
    c.publish_qos1(&Pub::new("r/1", b"a").qos(1, 1).retain())
        .await;
    c.publish_qos1(&Pub::new("r/2", b"b").qos(1, 2).retain())
        .await;

    sys.at_least(SUBSCRIPTIONS, subscriptions + 3).await;
    sys.at_least(RETAINED, retained + 2).await;
}
