//! MQTT 5.0 features: reason codes, receive maximum (both directions),
//! maximum packet size (both directions), topic aliases (both directions),
//! message expiry, subscription identifiers, subscription options (no local,
//! retain as published, retain handling), shared subscriptions,
//! request/response, user properties, payload format and content type, and
//! AUTH without enhanced authentication.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn puback_reports_no_matching_subscribers() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    assert_eq!(
        publisher
            .publish_qos1(&Pub::new("nobody/here", b"x").qos(1, 1))
            .await,
        0x10
    );
    let _sub = raw_subscriber5(&broker, "sub", "somebody/here", 1).await;
    assert_eq!(
        publisher
            .publish_qos1(&Pub::new("somebody/here", b"x").qos(1, 2))
            .await,
        0x00
    );
}

#[tokio::test]
async fn connack_announces_configured_limits() {
    let broker = TestBroker::start(BrokerOpts {
        max_packet_size: Some(2000),
        topic_alias_maximum: Some(4),
        ..BrokerOpts::default()
    })
    .await;
    let (_raw, ack) = Raw::connect(&broker, &Connect::v5("limits")).await;
    assert_eq!(
        ack.props.num(prop::MAXIMUM_PACKET_SIZE),
        Some(2000),
        "{ack:?}"
    );
    assert_eq!(ack.props.num(prop::TOPIC_ALIAS_MAXIMUM), Some(4), "{ack:?}");
}

#[tokio::test]
async fn client_receive_maximum_limits_unacknowledged_deliveries() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("slow").props(Props::new().two(prop::RECEIVE_MAXIMUM, 2));
    let (mut sub, _) = Raw::connect(&broker, &connect).await;
    sub.subscribe(1, &[("flow", 1)]).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for pid in 1..=5u16 {
        publisher
            .publish_qos1(&Pub::new("flow", format!("m{pid}").as_bytes()).qos(1, pid))
            .await;
    }

    // Only two deliveries may be unacknowledged at a time [MQTT-3.3.4-9].
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    sub.expect_nothing(QUIET).await;
    sub.ack_publish(&first).await;
    let third = sub.expect_publish().await;
    assert_eq!(third.payload, b"m3");
    if target_is_mosquitto() {
        // Known difference: after one PUBACK mosquitto 2.0.11 sends two more
        // messages, leaving three unacknowledged against a maximum of 2.
        eprintln!("note: mosquitto over-fills the client's receive maximum after an ack");
        return;
    }
    sub.expect_nothing(QUIET).await;
    sub.ack_publish(&second).await;
    sub.ack_publish(&third).await;
    let mut rest = Vec::new();
    for _ in 0..2 {
        let m = sub.expect_publish().await;
        rest.push(m.payload.clone());
        sub.ack_publish(&m).await;
    }
    assert_eq!(rest, [b"m4".to_vec(), b"m5".to_vec()]);
}

#[tokio::test]
async fn exceeding_the_server_receive_maximum_is_disconnected() {
    let broker = TestBroker::start(BrokerOpts {
        receive_maximum: Some(2),
        max_inflight: Some(2),
        ..BrokerOpts::default()
    })
    .await;
    let (mut raw, ack) = Raw::connect(&broker, &Connect::v5("greedy")).await;
    let max = ack
        .props
        .num(prop::RECEIVE_MAXIMUM)
        .expect("Receive Maximum announced") as u16;
    assert_eq!(max, 2);
    // QoS 2 PUBLISHes stay unacknowledged until PUBREL: fill the quota...
    for pid in 1..=max {
        raw.send_publish(&Pub::new("rm", b"x").qos(2, pid)).await;
        raw.expect_pubrec().await;
    }
    // ...and exceed it [MQTT-3.3.4-8].
    raw.send_publish(&Pub::new("rm", b"x").qos(2, max + 1))
        .await;
    if target_is_mosquitto() {
        // Known difference: mosquitto 2.0.11 answers PUBREC 0x97 (Quota
        // exceeded) and keeps the connection instead of DISCONNECT 0x93.
        let rec = raw.expect_pubrec().await;
        assert_eq!(rec.reason, 0x97);
        return;
    }
    let d = raw
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert_eq!(d.reason, 0x93, "Receive Maximum exceeded");
}

#[tokio::test]
async fn messages_over_the_client_maximum_packet_size_are_not_sent() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("small").props(Props::new().four(prop::MAXIMUM_PACKET_SIZE, 128));
    let (mut sub, _) = Raw::connect(&broker, &connect).await;
    sub.subscribe(1, &[("size", 1)]).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    publisher
        .publish_qos1(&Pub::new("size", &[b'x'; 500]).qos(1, 1))
        .await;
    publisher
        .publish_qos1(&Pub::new("size", b"fits").qos(1, 2))
        .await;
    // The large one is discarded as if delivered [MQTT-3.1.2-25].
    let m = sub.expect_publish().await;
    assert_eq!(m.payload, b"fits");
    sub.ack_publish(&m).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn client_topic_aliases_are_resolved() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber5(&broker, "sub", "alias/+", 1).await;
    let (mut publisher, ack) = Raw::connect(&broker, &Connect::v5("pub")).await;
    let max = ack.props.num(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    assert!(max >= 1, "topic aliases are supported: {ack:?}");

    let alias = |n: u16| Props::new().two(prop::TOPIC_ALIAS, n);
    publisher
        .publish_qos1(&Pub::new("alias/one", b"1").qos(1, 1).props(alias(1)))
        .await;
    publisher
        .publish_qos1(&Pub::new("", b"2").qos(1, 2).props(alias(1)))
        .await;
    // Re-map the alias to another topic.
    publisher
        .publish_qos1(&Pub::new("alias/two", b"3").qos(1, 3).props(alias(1)))
        .await;
    publisher
        .publish_qos1(&Pub::new("", b"4").qos(1, 4).props(alias(1)))
        .await;

    let mut got = Vec::new();
    for _ in 0..4 {
        let m = sub.expect_publish().await;
        // The subscriber allowed no aliases: it must get full topics.
        assert!(!m.props.has(prop::TOPIC_ALIAS), "{m:?}");
        got.push((m.topic.clone(), m.payload.clone()));
        sub.ack_publish(&m).await;
    }
    let expected: Vec<(String, Vec<u8>)> = [
        ("alias/one", "1"),
        ("alias/one", "2"),
        ("alias/two", "3"),
        ("alias/two", "4"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
    .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn invalid_client_topic_aliases_are_rejected() {
    let broker = TestBroker::start(BrokerOpts {
        topic_alias_maximum: Some(4),
        ..BrokerOpts::default()
    })
    .await;
    // Alias 0 and an alias above the maximum: Topic Alias invalid [MQTT-3.3.2-8/9].
    for bad in [0u16, 5] {
        let (mut raw, _) = Raw::connect(&broker, &Connect::v5("alias")).await;
        raw.send_publish(&Pub::new("t", b"x").props(Props::new().two(prop::TOPIC_ALIAS, bad)))
            .await;
        let d = raw
            .expect_closed()
            .await
            .expect("DISCONNECT before the close");
        if bad == 0 && target_is_mosquitto() {
            // Known difference: mosquitto 2.0.11 rejects alias 0 while
            // decoding the properties, as 0x81 Malformed Packet.
            assert_eq!(d.reason, 0x81);
            continue;
        }
        assert_eq!(d.reason, 0x94, "alias {bad}");
    }
    // An empty topic with an alias never set is a Protocol Error.
    let (mut raw, _) = Raw::connect(&broker, &Connect::v5("alias")).await;
    raw.send_publish(&Pub::new("", b"x").props(Props::new().two(prop::TOPIC_ALIAS, 2)))
        .await;
    let d = raw
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert_eq!(d.reason, 0x82);
}

#[tokio::test]
async fn server_topic_aliases_respect_the_client_maximum() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("sub").props(Props::new().two(prop::TOPIC_ALIAS_MAXIMUM, 2));
    let (mut sub, _) = Raw::connect(&broker, &connect).await;
    sub.subscribe(1, &[("long/topic/name/#", 1)]).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    let topics = [
        "long/topic/name/a",
        "long/topic/name/b",
        "long/topic/name/c",
    ];
    let mut pid = 0;
    for round in 0..3 {
        for t in topics {
            pid += 1;
            publisher
                .publish_qos1(&Pub::new(t, format!("{round}").as_bytes()).qos(1, pid))
                .await;
        }
    }

    // Resolve aliases as a client must and check every message's topic.
    let mut aliases = std::collections::HashMap::new();
    let mut used_alias = false;
    for round in 0..3 {
        for t in topics {
            let m = sub.expect_publish().await;
            let topic = match m.props.num(prop::TOPIC_ALIAS) {
                Some(a) => {
                    assert!((1..=2).contains(&a), "alias {a} outside 1..=2");
                    used_alias = true;
                    if m.topic.is_empty() {
                        aliases
                            .get(&a)
                            .cloned()
                            .expect("alias used before it was set")
                    } else {
                        aliases.insert(a, m.topic.clone());
                        m.topic.clone()
                    }
                }
                None => m.topic.clone(),
            };
            assert_eq!(
                (topic.as_str(), m.payload.as_slice()),
                (t, format!("{round}").as_bytes())
            );
            sub.ack_publish(&m).await;
        }
    }
    if target_is_mosquitto() {
        // Known difference: mosquitto 2.0.11 never sends topic aliases.
        eprintln!("note: server->client topic aliases used: {used_alias}");
    } else {
        assert!(
            used_alias,
            "the product sends topic aliases when the client allows them"
        );
    }
}

#[tokio::test]
async fn no_server_topic_alias_without_client_permission() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber5(&broker, "sub", "na", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for pid in 1..=3u16 {
        publisher
            .publish_qos1(&Pub::new("na", b"x").qos(1, pid))
            .await;
        let m = sub.expect_publish().await;
        assert_eq!(m.topic, "na");
        assert!(!m.props.has(prop::TOPIC_ALIAS), "[MQTT-3.3.2-10]");
        sub.ack_publish(&m).await;
    }
}

#[tokio::test]
async fn expired_messages_are_not_delivered_to_offline_sessions() {
    let broker = TestBroker::start_default().await;
    let persistent = Connect::v5("away")
        .clean(false)
        .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 300));
    let (mut sub, _) = Raw::connect(&broker, &persistent).await;
    sub.subscribe(1, &[("exp", 1)]).await;
    sub.disconnect().await;

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    let expiring = |secs| Props::new().four(prop::MESSAGE_EXPIRY_INTERVAL, secs);
    publisher
        .publish_qos1(&Pub::new("exp", b"short").qos(1, 1).props(expiring(1)))
        .await;
    publisher
        .publish_qos1(&Pub::new("exp", b"long").qos(1, 2).props(expiring(100)))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (mut sub, _) = Raw::connect(&broker, &persistent).await;
    let m = sub.expect_publish().await;
    assert_eq!(m.payload, b"long", "the 1 s message expired while queued");
    // The remaining lifetime is forwarded, reduced by the time spent waiting [MQTT-3.3.2-6].
    let left = m
        .props
        .num(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("expiry forwarded");
    assert!((90..100).contains(&left), "remaining expiry {left}");
    sub.ack_publish(&m).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn expired_retained_message_is_not_delivered() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    let p = Pub::new("ret/exp", b"old")
        .qos(1, 1)
        .retain()
        .props(Props::new().four(prop::MESSAGE_EXPIRY_INTERVAL, 1));
    publisher.publish_qos1(&p).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut sub, _) = Raw::connect(&broker, &Connect::v5("sub")).await;
    sub.subscribe(1, &[("ret/exp", 1)]).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn subscription_identifiers_are_attached_to_deliveries() {
    let broker = TestBroker::start_default().await;
    let (mut sub, _) = Raw::connect(&broker, &Connect::v5("sub")).await;
    let id = |n| Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, n);
    sub.subscribe_props(1, &id(7), &[("si/+", 1)]).await;
    sub.subscribe_props(2, &id(268_435_455), &[("si/x", 1)])
        .await;
    sub.subscribe(3, &[("si/#", 0)]).await; // no identifier
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;

    publisher
        .publish_qos1(&Pub::new("si/y", b"y").qos(1, 1))
        .await;
    let m = sub.expect_publish().await;
    assert_eq!(m.props.all_nums(prop::SUBSCRIPTION_IDENTIFIER), [7]);
    sub.ack_publish(&m).await;

    publisher
        .publish_qos1(&Pub::new("si/x", b"x").qos(1, 2))
        .await;
    let m = sub.expect_publish().await;
    if target_is_mosquitto() {
        // Known difference: mosquitto 2.0.11 sends one copy per matching
        // subscription to 5.0 clients, each with its own identifier.
        eprintln!("note: mosquitto sent separate copies for overlapping subscriptions");
        return;
    }
    // One copy, at the highest QoS, carrying every matching identifier.
    let ids: BTreeSet<u32> = m
        .props
        .all_nums(prop::SUBSCRIPTION_IDENTIFIER)
        .into_iter()
        .collect();
    assert_eq!(ids, BTreeSet::from([7, 268_435_455]));
    assert_eq!(m.qos, 1);
    sub.ack_publish(&m).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn subscription_identifier_zero_is_a_protocol_error() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v5("zero")).await;
    let bytes = subscribe(
        true,
        1,
        &Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, 0),
        &[("z", 0)],
    );
    raw.send(&bytes).await;
    let d = raw
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert!(matches!(d.reason, 0x81 | 0x82), "reason {:#04x}", d.reason);
}

#[tokio::test]
async fn no_local_suppresses_own_messages() {
    let broker = TestBroker::start_default().await;
    let (mut me, _) = Raw::connect(&broker, &Connect::v5("me")).await;
    me.subscribe(1, &[("nl", sub_opts(1, true, false, 0))])
        .await;
    let mut other = raw_subscriber5(&broker, "other", "nl", 1).await;
    me.publish_qos1(&Pub::new("nl", b"mine").qos(1, 1)).await;
    assert_eq!(other.expect_publish().await.payload, b"mine");
    me.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() {
    let broker = TestBroker::start_default().await;
    let (mut sub, _) = Raw::connect(&broker, &Connect::v5("sub")).await;
    sub.subscribe(
        1,
        &[
            ("rap/keep", sub_opts(1, false, true, 0)),
            ("rap/clear", sub_opts(1, false, false, 0)),
        ],
    )
    .await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    publisher
        .publish_qos1(&Pub::new("rap/keep", b"k").qos(1, 1).retain())
        .await;
    publisher
        .publish_qos1(&Pub::new("rap/clear", b"c").qos(1, 2).retain())
        .await;
    let mut flags = Vec::new();
    for _ in 0..2 {
        let m = sub.expect_publish().await;
        flags.push((m.topic.clone(), m.retain));
        sub.ack_publish(&m).await;
    }
    flags.sort();
    assert_eq!(
        flags,
        [
            ("rap/clear".to_string(), false),
            ("rap/keep".to_string(), true)
        ]
    );
}

#[tokio::test]
async fn retain_handling_controls_retained_delivery_on_subscribe() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    publisher
        .publish_qos1(&Pub::new("rh", b"retained").qos(1, 1).retain())
        .await;
    let (mut sub, _) = Raw::connect(&broker, &Connect::v5("sub")).await;

    // 0: sent on every subscribe.
    for pid in 1..=2 {
        sub.subscribe(pid, &[("rh", sub_opts(1, false, false, 0))])
            .await;
        let m = sub.expect_publish().await;
        assert!(m.retain);
        sub.ack_publish(&m).await;
    }
    sub.send(&unsubscribe(true, 3, &["rh"])).await;
    sub.expect_unsuback().await;

    // 1: only when the subscription did not exist yet.
    sub.subscribe(4, &[("rh", sub_opts(1, false, false, 1))])
        .await;
    let m = sub.expect_publish().await;
    sub.ack_publish(&m).await;
    sub.subscribe(5, &[("rh", sub_opts(1, false, false, 1))])
        .await;
    sub.expect_nothing(QUIET).await;

    // 2: never.
    let (mut never, _) = Raw::connect(&broker, &Connect::v5("never")).await;
    never
        .subscribe(1, &[("rh", sub_opts(1, false, false, 2))])
        .await;
    never.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn shared_subscription_balances_across_the_group() {
    let broker = TestBroker::start_default().await;
    let mut members = Vec::new();
    for id in ["m1", "m2"] {
        members.push(raw_subscriber5(&broker, id, "$share/workers/jobs/+", 1).await);
    }
    let mut other_group = raw_subscriber5(&broker, "g2", "$share/auditors/jobs/+", 1).await;
    let mut plain = raw_subscriber5(&broker, "plain", "jobs/+", 1).await;

    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for pid in 1..=10u16 {
        publisher
            .publish_qos1(&Pub::new("jobs/a", format!("{pid}").as_bytes()).qos(1, pid))
            .await;
    }

    // Each message goes to exactly one member of each group...
    let mut per_member = Vec::new();
    let mut all = Vec::new();
    for member in &mut members {
        let mut got = Vec::new();
        while let Recv::Packet(Pkt::Publish(m)) = member.recv_within(QUIET).await {
            member.ack_publish(&m).await;
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        per_member.push(got.len());
        all.extend(got);
    }
    all.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
    let expected: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(all, expected, "every message once across the group");
    assert!(
        per_member.iter().all(|&n| n > 0),
        "both members got work: {per_member:?}"
    );

    // ...while another group and a plain subscriber each get all of them.
    for sub in [&mut other_group, &mut plain] {
        for _ in 0..10 {
            let m = sub.expect_publish().await;
            sub.ack_publish(&m).await;
        }
    }
}

#[tokio::test]
async fn a_shared_member_that_leaves_without_acknowledging_hands_its_messages_on() {
    if skip_on_mosquitto("mosquitto 2.0.11 does not give them to another member") {
        return;
    }
    let broker = TestBroker::start_default().await;
    let mut leaver = raw_subscriber5(&broker, "leaver", "$share/w/tasks/+", 1).await;
    let mut stayer = raw_subscriber5(&broker, "stayer", "$share/w/tasks/+", 1).await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for pid in 1..=10u16 {
        publisher
            .publish_qos1(&Pub::new("tasks/a", format!("{pid}").as_bytes()).qos(1, pid))
            .await;
    }
    // The leaver takes its share and acknowledges none of it.
    let mut unacked = 0;
    while let Recv::Packet(Pkt::Publish(_)) = leaver.recv_within(QUIET).await {
        unacked += 1;
    }
    assert!(unacked > 0, "the group shares the work");
    drop(leaver);
    let mut got = Vec::new();
    while let Recv::Packet(Pkt::Publish(m)) = stayer.recv_within(Duration::from_secs(2)).await {
        stayer.ack_publish(&m).await;
        got.push(String::from_utf8_lossy(&m.payload).parse::<u32>().unwrap());
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        got,
        (1..=10).collect::<Vec<_>>(),
        "every message reached a member"
    );
}

/// The bridge's case: the only member of its group, with a session that
/// outlives the connection (kept in memory, no persistence), is killed and
/// comes back: what it had not acknowledged is delivered again.
#[tokio::test]
async fn a_lone_shared_member_gets_its_unacknowledged_messages_back_on_return() {
    let broker = TestBroker::start_default().await;
    let member = || {
        Connect::v5("lone")
            .clean(false)
            .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 300))
    };
    let (mut lone, _) = Raw::connect(&broker, &member()).await;
    assert_eq!(lone.subscribe(1, &[("$share/w/jobs/+", 1)]).await, vec![1]);
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    for pid in 1..=5u16 {
        publisher
            .publish_qos1(&Pub::new("jobs/a", format!("{pid}").as_bytes()).qos(1, pid))
            .await;
    }
    let mut unacked = 0;
    while let Recv::Packet(Pkt::Publish(_)) = lone.recv_within(QUIET).await {
        unacked += 1;
    }
    assert_eq!(unacked, 5, "the lone member gets every message");
    drop(lone);
    tokio::time::sleep(QUIET).await;
    let (mut lone, ack) = Raw::connect(&broker, &member()).await;
    assert!(ack.session_present);
    publisher
        .publish_qos1(&Pub::new("jobs/a", b"6").qos(1, 6))
        .await;
    let mut got = Vec::new();
    while let Recv::Packet(Pkt::Publish(m)) = lone.recv_within(Duration::from_secs(2)).await {
        lone.ack_publish(&m).await;
        let n = String::from_utf8_lossy(&m.payload).parse::<u32>().unwrap();
        // Sent before: again with DUP, as to a session that never left.
        assert_eq!(m.dup, n <= 5, "DUP of message {n}");
        got.push(n);
    }
    assert_eq!(
        got,
        (1..=6).collect::<Vec<_>>(),
        "nothing acknowledged is lost, in order"
    );
}

#[tokio::test]
async fn shared_subscription_gets_no_retained_messages() {
    let broker = TestBroker::start_default().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v5("pub")).await;
    publisher
        .publish_qos1(&Pub::new("sh/r", b"retained").qos(1, 1).retain())
        .await;
    let mut member = raw_subscriber5(&broker, "m", "$share/g/sh/r", 1).await;
    // Section 3.3.1.3: retained messages are sent when a new *non-shared*
    // subscription is made; a shared one gets none.
    if skip_on_mosquitto("mosquitto 2.0.11 sends retained messages to new shared subscriptions") {
        return;
    }
    member.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn request_response_properties_pass_through() {
    let broker = TestBroker::start_default().await;
    let (mut responder, _) = Client5::connect(&broker, "responder", |_| {}).await;
    responder.subscribe("service/time", QoS::AtLeastOnce).await;
    let (mut requester, _) = Client5::connect(&broker, "requester", |_| {}).await;
    requester
        .subscribe("reply/requester", QoS::AtLeastOnce)
        .await;

    let request = PublishProperties {
        response_topic: Some("reply/requester".into()),
        correlation_data: Some(Bytes::from_static(b"req-42")),
        ..PublishProperties::default()
    };
    requester
        .publish(
            "service/time",
            QoS::AtLeastOnce,
            false,
            "what time?",
            request,
        )
        .await;

    let req = responder.recv().await;
    let props = req.properties.expect("request properties");
    let reply_to = props.response_topic.expect("response topic");
    let correlation = props.correlation_data.expect("correlation data");
    assert_eq!(
        (reply_to.as_str(), &correlation[..]),
        ("reply/requester", &b"req-42"[..])
    );

    let response = PublishProperties {
        correlation_data: Some(correlation),
        ..PublishProperties::default()
    };
    responder
        .publish(&reply_to, QoS::AtLeastOnce, false, "noon", response)
        .await;
    let resp = requester.recv().await;
    assert_eq!(&resp.payload[..], b"noon");
    assert_eq!(
        resp.properties.and_then(|p| p.correlation_data).as_deref(),
        Some(&b"req-42"[..])
    );
}

#[tokio::test]
async fn user_properties_content_type_and_payload_format_pass_through() {
    let broker = TestBroker::start_default().await;
    let mut sub = raw_subscriber5(&broker, "sub", "meta", 1).await;
    let (mut publisher, _) = Client5::connect(&broker, "pub", |_| {}).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..PublishProperties::default()
    };
    publisher
        .publish("meta", QoS::AtLeastOnce, false, "{}", props)
        .await;
    let m = sub.expect_publish().await;
    assert_eq!(m.props.num(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
    assert_eq!(m.props.string(prop::CONTENT_TYPE), Some("application/json"));
    // Order and duplicates preserved [MQTT-3.3.2-18].
    let expected: Vec<(String, String)> = [("b", "2"), ("a", "1"), ("b", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(m.props.user_properties(), expected);
}

#[tokio::test]
async fn auth_packet_without_authentication_method_is_a_protocol_error() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v5("reauth")).await;
    raw.send(&auth(
        0x19,
        &Props::new().str(prop::AUTHENTICATION_METHOD, "SCRAM-SHA-1"),
    ))
    .await;
    // Section 4.12: AUTH on a connection whose CONNECT had no
    // Authentication Method is a Protocol Error.
    match raw.expect_closed().await {
        Some(d) => assert!(matches!(d.reason, 0x82 | 0x8C), "reason {:#04x}", d.reason),
        // Known difference: mosquitto 2.0.11 closes without DISCONNECT.
        None if target_is_mosquitto() => eprintln!("note: mosquitto sent no DISCONNECT"),
        None => panic!("no DISCONNECT before the close"),
    }
}

#[tokio::test]
async fn unsuback_reports_per_filter_reason_codes() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v5("u")).await;
    raw.subscribe(1, &[("exists", 0)]).await;
    raw.send(&unsubscribe(true, 2, &["exists", "missing"]))
        .await;
    let ack = raw.expect_unsuback().await;
    assert_eq!((ack.pid, ack.codes), (2, vec![0x00, 0x11]));
}

#[tokio::test]
async fn suback_reports_granted_qos_as_reason_codes() {
    let broker = TestBroker::start_default().await;
    let (mut c, _) = Client5::connect(&broker, "c", |_| {}).await;
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as Code;
    assert_eq!(
        c.subscribe("a", QoS::ExactlyOnce).await,
        [Code::Success(QoS::ExactlyOnce)]
    );
    assert_eq!(
        c.subscribe("b", QoS::AtLeastOnce).await,
        [Code::Success(QoS::AtLeastOnce)]
    );
}
