//! Quotas and limits: connections per listener and per user, new
//! connections per second, packet size, subscriptions, publish rate
//! (disconnect or throttle), in-flight and queued messages. Every refusal
//! shows in `/metrics`.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The HTTP server on `{port:http}`, a `[limits]` table with `limits`, and
/// `extra` after it.
fn config(limits: &str, extra: &str) -> String {
    format!("[http]\nbind = \"127.0.0.1:{{port:http}}\"\n[limits]\n{limits}\n{extra}")
}

/// A credentials file with users (password `pw`) and their `[users.quotas]`.
fn credentials(dir: &Path, users: &[(&str, &str)]) -> String {
    let hash = kubemqtt_broker::auth::hash_password("pw").unwrap();
    let mut text = String::new();
    for (user, quotas) in users {
        text.push_str(&format!(
            "[[users]]\nusername = \"{user}\"\npasswords = [{{ hash = \"{hash}\" }}]\n"
        ));
        if !quotas.is_empty() {
            text.push_str(&format!("[users.quotas]\n{quotas}\n"));
        }
    }
    let path = write_file(dir, "creds.toml", &text);
    format!("[auth]\ncredentials_file = \"{}\"\n", path.display())
}

async fn start(extra_toml: String) -> Option<OpsBroker> {
    OpsBroker::start(BrokerOpts {
        extra_toml,
        ..BrokerOpts::default()
    })
    .await
}

/// The value of `kubemqtt_quota_refusals_total{quota}`.
fn refusals(m: &PromMetrics, quota: &str) -> f64 {
    m.value("kubemqtt_quota_refusals_total", &[("quota", quota)])
}

#[tokio::test]
async fn listener_connection_limit() {
    let extra = "[[listeners]]\nname = \"limited\"\nbind = \"127.0.0.1:{port:limited}\"\n\
                 max_connections = 2\n";
    let Some(broker) = start(config("", extra)).await else {
        return;
    };
    let addr = broker.addr_of("limited");
    let mut first = Raw::open_addr(addr).await;
    assert_eq!(first.handshake(&Connect::v5("one")).await.code, 0);
    let mut second = Raw::open_addr(addr).await;
    assert_eq!(second.handshake(&Connect::v5("two")).await.code, 0);

    let mut third = Raw::open_addr(addr).await;
    third.send_connect(&Connect::v5("three")).await;
    assert!(matches!(third.recv_within(TIMEOUT).await, Recv::Closed));
    // Other listeners are not affected.
    let (mut main, _) = Raw::connect(&broker, &Connect::v5("main")).await;
    main.ping().await;

    broker
        .wait_metrics("the refused connection is counted", |m| {
            m.value(
                "kubemqtt_connections_refused_total",
                &[("listener", "limited"), ("reason", "max_connections")],
            ) == 1.0
        })
        .await;
    assert!(
        broker
            .wait_for_log("connection limit 2 reached", TIMEOUT)
            .await
    );

    // A slot frees when a client leaves.
    first.disconnect().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut again = Raw::open_addr(addr).await;
        again.send_connect(&Connect::v5("again")).await;
        if let Recv::Packet(Pkt::ConnAck(ack)) = again.recv_within(TIMEOUT).await {
            assert_eq!(ack.code, 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed after a disconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.ping().await;
}

#[tokio::test]
async fn listener_new_connection_rate() {
    let extra = "[[listeners]]\nname = \"rated\"\nbind = \"127.0.0.1:{port:rated}\"\n\
                 max_connection_rate = 1\n";
    let Some(broker) = start(config("", extra)).await else {
        return;
    };
    // Six connections at once against a rate of one a second (burst 1).
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(Raw::open_addr(broker.addr_of("rated")).await);
    }
    let (mut accepted, mut refused) = (0, 0);
    for (i, raw) in clients.iter_mut().enumerate() {
        raw.send_connect(&Connect::v5(&format!("rate-{i}"))).await;
        match raw.recv_within(TIMEOUT).await {
            Recv::Packet(Pkt::ConnAck(ack)) if ack.code == 0 => accepted += 1,
            Recv::Closed => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        accepted >= 1 && refused >= 1,
        "accepted {accepted}, refused {refused}"
    );
    broker
        .wait_metrics("refused connections counted", |m| {
            m.value(
                "kubemqtt_connections_refused_total",
                &[("listener", "rated"), ("reason", "connection_rate")],
            ) == f64::from(refused)
        })
        .await;
}

#[tokio::test]
async fn per_user_connection_quota() {
    let fixtures = tempfile::tempdir().unwrap();
    let creds = credentials(
        fixtures.path(),
        &[("solo", "connections = 1"), ("free", "")],
    );
    let Some(broker) = start(config("", &creds)).await else {
        return;
    };
    let solo = |id: &str| Connect::v5(id).login("solo", "pw");
    let (first, _) = Raw::connect(&broker, &solo("solo-1")).await;
    let (mut refused, ack) = Raw::connect_raw(&broker, &solo("solo-2")).await;
    assert_eq!(ack.code, 0x97, "5.0: Quota exceeded");
    refused.expect_closed().await;
    let (mut refused, ack) =
        Raw::connect_raw(&broker, &Connect::v4("solo-3").login("solo", "pw")).await;
    assert_eq!(ack.code, 3, "3.1.1: Server unavailable");
    refused.expect_closed().await;
    // Users without the quota are not limited.
    let (_f1, _) = Raw::connect(&broker, &Connect::v5("f1").login("free", "pw")).await;
    let (_f2, _) = Raw::connect(&broker, &Connect::v5("f2").login("free", "pw")).await;

    first.disconnect().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_raw, ack) = Raw::connect_raw(&broker, &solo("solo-4")).await;
        if ack.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the user's slot was not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker
        .wait_metrics("refusals counted", |m| refusals(m, "connections") == 2.0)
        .await;
}

#[tokio::test]
async fn maximum_packet_size_broker_wide_and_per_user() {
    let fixtures = tempfile::tempdir().unwrap();
    let creds = credentials(
        fixtures.path(),
        &[("small", "max_packet_size = 200"), ("big", "")],
    );
    let Some(broker) = start(config("max_packet_size = 512", &creds)).await else {
        return;
    };
    let (mut big, ack) = Raw::connect(&broker, &Connect::v5("big").login("big", "pw")).await;
    assert_eq!(ack.props.num(prop::MAXIMUM_PACKET_SIZE), Some(512));
    assert_eq!(
        big.publish_qos1(&Pub::new("t", &[0; 300]).qos(1, 1)).await,
        0x10
    );
    big.send_publish(&Pub::new("t", &[0; 600]).qos(1, 2)).await;
    let disconnect = big
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert_eq!(disconnect.reason, 0x95, "Packet too large");

    let (mut small, _) = Raw::connect(&broker, &Connect::v5("small").login("small", "pw")).await;
    assert_eq!(
        small
            .publish_qos1(&Pub::new("t", &[0; 100]).qos(1, 1))
            .await,
        0x10
    );
    small
        .send_publish(&Pub::new("t", &[0; 300]).qos(1, 2))
        .await;
    assert_eq!(small.expect_closed().await.map(|d| d.reason), Some(0x95));

    let (mut old, _) = Raw::connect(&broker, &Connect::v4("old").login("big", "pw")).await;
    old.send_publish(&Pub::new("t", &[0; 600]).qos(1, 1)).await;
    assert!(
        old.expect_closed().await.is_none(),
        "3.1.1 has no DISCONNECT"
    );

    broker
        .wait_metrics("oversized packets counted", |m| {
            refusals(m, "packet_size") == 3.0
        })
        .await;
}

#[tokio::test]
async fn subscriptions_per_client() {
    let fixtures = tempfile::tempdir().unwrap();
    let creds = credentials(fixtures.path(), &[("one", "max_subscriptions = 1")]);
    let Some(broker) = start(config("max_subscriptions = 2", &creds)).await else {
        return;
    };
    let (mut v5, _) = Raw::connect(&broker, &Connect::v5("subs5")).await;
    assert_eq!(
        v5.subscribe(1, &[("a", 1), ("b", 1), ("c", 1)]).await,
        [1, 1, 0x97]
    );
    // Replacing an existing subscription does not count.
    assert_eq!(v5.subscribe(2, &[("a", 0)]).await, [0]);
    v5.send(&unsubscribe(true, 3, &["b"])).await;
    v5.expect_unsuback().await;
    assert_eq!(v5.subscribe(4, &[("c", 1)]).await, [1]);

    let (mut v4, _) = Raw::connect(&broker, &Connect::v4("subs4")).await;
    assert_eq!(
        v4.subscribe(1, &[("a", 1), ("b", 1), ("c", 1)]).await,
        [1, 1, 0x80]
    );

    // A per-user quota replaces the broker-wide limit.
    let (mut one, _) = Raw::connect(&broker, &Connect::v5("one").login("one", "pw")).await;
    assert_eq!(one.subscribe(1, &[("a", 1), ("b", 1)]).await, [1, 0x97]);

    broker
        .wait_metrics("refused subscriptions counted", |m| {
            refusals(m, "subscriptions") == 3.0
        })
        .await;
}

/// `count` QoS 0 PUBLISHes in a single write.
fn burst(count: usize, qos: u8) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            let p = Pub::new("rate/t", format!("{i}").as_bytes());
            let p = if qos > 0 { p.qos(qos, i as u16 + 1) } else { p };
            p.encode(true)
        })
        .collect()
}

#[tokio::test]
async fn publish_rate_exceeded_disconnects() {
    let fixtures = tempfile::tempdir().unwrap();
    let creds = credentials(
        fixtures.path(),
        &[("slow", "publish_rate = 1"), ("normal", "")],
    );
    let Some(broker) = start(config("publish_rate = 5", &creds)).await else {
        return;
    };
    let (mut fast, _) = Raw::connect(&broker, &Connect::v5("fast")).await;
    fast.send(&burst(30, 0)).await;
    let disconnect = fast
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert_eq!(disconnect.reason, 0x96, "Message rate too high");

    let (mut old, _) = Raw::connect(&broker, &Connect::v4("old")).await;
    let bytes: Vec<u8> = (0..30)
        .flat_map(|_| Pub::new("rate/t", b"x").encode(false))
        .collect();
    old.send(&bytes).await;
    assert!(old.expect_closed().await.is_none());

    // The per-user quota is lower than the broker-wide one.
    let (mut slow, _) = Raw::connect(&broker, &Connect::v5("slow").login("slow", "pw")).await;
    slow.send(&burst(3, 0)).await;
    assert_eq!(slow.expect_closed().await.map(|d| d.reason), Some(0x96));
    // Within the rate nothing happens.
    let (mut normal, _) = Raw::connect(&broker, &Connect::v5("normal").login("normal", "pw")).await;
    normal.send(&burst(3, 1)).await;
    for _ in 0..3 {
        normal.expect_puback().await;
    }

    broker
        .wait_metrics("rate refusals counted", |m| {
            refusals(m, "publish_rate") >= 3.0
        })
        .await;
}

/// `publish_rate_action = "throttle"`: nothing is refused; the broker reads
/// from the client only as fast as the rate allows.
#[tokio::test]
async fn publish_rate_exceeded_throttles() {
    let Some(broker) = start(config(
        "publish_rate = 5\npublish_rate_action = \"throttle\"",
        "",
    ))
    .await
    else {
        return;
    };
    let mut sub = raw_subscriber5(&broker, "sub", "rate/#", 0).await;
    let (mut fast, _) = Raw::connect(&broker, &Connect::v5("fast")).await;
    let started = Instant::now();
    fast.send(&burst(15, 1)).await;
    for pid in 1..=15 {
        match fast.recv_within(Duration::from_secs(15)).await {
            Recv::Packet(Pkt::PubAck(ack)) => assert_eq!((ack.pid, ack.reason), (pid, 0)),
            other => panic!("PUBACK {pid}: got {other:?}"),
        }
    }
    // 5 at once, then 5 a second: at least two seconds for the other ten
    // (a lower bound, which a loaded machine cannot break).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "not throttled: {elapsed:?}"
    );
    for i in 0..15 {
        assert_eq!(
            sub.expect_publish().await.payload,
            format!("{i}").as_bytes()
        );
    }
    fast.ping().await;
    broker
        .wait_metrics("throttled publishes counted", |m| {
            refusals(m, "publish_rate") >= 1.0
        })
        .await;
}

/// Queued messages of an offline session are bounded; what does not fit is
/// dropped and counted.
#[tokio::test]
async fn queued_messages_per_session() {
    let Some(broker) = start(config("max_queued_messages = 3", "")).await else {
        return;
    };
    let persistent = Connect::v5("offline")
        .clean(false)
        .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 300));
    let (mut sub, _) = Raw::connect(&broker, &persistent).await;
    assert_eq!(sub.subscribe(1, &[("q/#", 1)]).await, [1]);
    sub.disconnect().await;

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for i in 1..=6u16 {
        publisher
            .publish_qos1(&Pub::new("q/t", format!("m{i}").as_bytes()).qos(1, i))
            .await;
    }
    let (mut sub, ack) = Raw::connect(&broker, &persistent).await;
    assert!(ack.session_present);
    for i in 1..=3 {
        let msg = sub.expect_publish().await;
        assert_eq!(msg.payload, format!("m{i}").as_bytes());
        sub.ack_publish(&msg).await;
    }
    sub.expect_nothing(QUIET).await;
    broker
        .wait_metrics("dropped messages counted", |m| {
            m.value(
                "kubemqtt_messages_dropped_total",
                &[("reason", "queue_full")],
            ) == 3.0
        })
        .await;
}

/// Outbound: at most `max_inflight` unacknowledged deliveries. Inbound: a
/// client exceeding our Receive Maximum is disconnected and counted.
#[tokio::test]
async fn in_flight_messages_both_ways() {
    let Some(broker) = start(config("max_inflight = 2\nreceive_maximum = 2", "")).await else {
        return;
    };
    let (mut sub, ack) = Raw::connect(&broker, &Connect::v5("sub")).await;
    assert_eq!(ack.props.num(prop::RECEIVE_MAXIMUM), Some(2));
    assert_eq!(sub.subscribe(1, &[("w/#", 1)]).await, [1]);
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for i in 1..=4u16 {
        publisher
            .publish_qos1(&Pub::new("w/t", &[i as u8]).qos(1, i))
            .await;
    }
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    sub.expect_nothing(QUIET).await;
    sub.ack_publish(&first).await;
    let third = sub.expect_publish().await;
    assert_eq!(third.payload, [3]);
    sub.ack_publish(&second).await;
    sub.ack_publish(&third).await;
    assert_eq!(sub.expect_publish().await.payload, [4]);

    // Three QoS 2 messages without PUBREL against a Receive Maximum of 2.
    let (mut greedy, _) = Raw::connect(&broker, &Connect::v5("greedy")).await;
    for pid in 1..=3 {
        greedy
            .send_publish(&Pub::new("w/q2", b"x").qos(2, pid))
            .await;
    }
    greedy.expect_pubrec().await;
    greedy.expect_pubrec().await;
    let disconnect = greedy
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert_eq!(disconnect.reason, 0x93, "Receive Maximum exceeded");
    broker
        .wait_metrics("the in-flight refusal is counted", |m| {
            refusals(m, "receive_maximum") == 1.0
        })
        .await;
}

#[tokio::test]
async fn listener_limits_override_the_broker_wide_ones() {
    let extra = "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:{port:edge}\"\n\
                 [listeners.limits]\nmax_packet_size = 256\nmax_subscriptions = 1\n";
    let Some(broker) = start(config("max_packet_size = 4096", extra)).await else {
        return;
    };
    // On the edge listener: its own packet size (announced and enforced)
    // and subscription quota.
    let mut edge = Raw::open_addr(broker.addr_of("edge")).await;
    let ack = edge.handshake(&Connect::v5("edge-client")).await;
    assert_eq!(ack.code, 0);
    assert_eq!(ack.props.num(prop::MAXIMUM_PACKET_SIZE), Some(256));
    assert_eq!(
        edge.subscribe(1, &[("a", 0), ("b", 0)]).await,
        vec![0, 0x97]
    );
    edge.send_publish(&Pub::new("t", &[0; 400]).qos(1, 2)).await;
    assert_eq!(edge.expect_closed().await.map(|d| d.reason), Some(0x95));

    // On the default listener the broker-wide limits still apply.
    let (mut inside, ack) = Raw::connect(&broker, &Connect::v5("inside")).await;
    assert_eq!(ack.props.num(prop::MAXIMUM_PACKET_SIZE), Some(4096));
    assert_eq!(inside.subscribe(1, &[("a", 0), ("b", 0)]).await, vec![0, 0]);
    assert_eq!(
        inside
            .publish_qos1(&Pub::new("t", &[0; 400]).qos(1, 3))
            .await,
        0x10
    );
}
