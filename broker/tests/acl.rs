//! Topic access control: a mosquitto `acl_file` and the `[[users.acl]]`
//! rules of our credentials file, enforced on SUBSCRIBE, PUBLISH, every
//! delivery (retained ones too), will messages, `$SYS` and the presence
//! events; and reloaded while clients stay connected.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const ACL: &str = "\
# Clients without a user name.
topic read public/#

user alice
topic readwrite alice/#
topic read shared/#
topic deny shared/secret
topic write logs
topic write will/alice

user watcher
topic read #

user publisher
topic write #

user sysadmin
topic readwrite $SYS/#

pattern readwrite users/%u/#
pattern read commands/%c
";

/// Users of the credentials file, all with password `pw`; `dev-1` also
/// carries its own topic rules.
fn credentials() -> String {
    let hash = kubemqtt_broker::auth::hash_password("pw").unwrap();
    let mut text = String::new();
    for user in ["alice", "bob", "watcher", "publisher", "sysadmin", "dev-1"] {
        text.push_str(&format!(
            "[[users]]\nusername = \"{user}\"\npasswords = [{{ hash = \"{hash}\" }}]\n"
        ));
    }
    text.push_str(
        "[[users.acl]]\naction = \"publish\"\ntopic = \"devices/%u/#\"\nallow = true\n\
         [[users.acl]]\naction = \"subscribe\"\ntopic = \"config/%c\"\nallow = true\n\
         [[users.acl]]\naction = \"all\"\ntopic = \"devices/%u/private\"\nallow = false\n",
    );
    text
}

/// Starts a broker with [`ACL`] and [`credentials`]; anonymous clients are
/// allowed (and get the rules before any `user` line). `top` goes to the
/// top level of the configuration.
async fn start(dir: &Path, top: &str) -> Option<OpsBroker> {
    let acl = write_file(dir, "acl", ACL);
    let creds = write_file(dir, "creds.toml", &credentials());
    OpsBroker::start(BrokerOpts {
        extra_toml: format!(
            "{top}[http]\nbind = \"127.0.0.1:{{port:http}}\"\n\
             [auth]\nreload_interval_secs = 1\nacl_file = \"{}\"\ncredentials_file = \"{}\"\n",
            acl.display(),
            creds.display()
        ),
        ..BrokerOpts::default()
    })
    .await
}

/// Connects with `connect`, whose user name is set, and that user's
/// password from [`credentials`].
async fn login(broker: &TestBroker, connect: Connect) -> Raw {
    let user = connect.username.clone().unwrap_or_default();
    Raw::connect(broker, &connect.login(&user, "pw")).await.0
}

/// `login` for a user whose name is also the client id.
async fn user5(broker: &TestBroker, name: &str) -> Raw {
    login(broker, Connect::v5(name).user(name)).await
}

/// [`user5`] in MQTT 3.1.1.
async fn user4(broker: &TestBroker, name: &str) -> Raw {
    login(broker, Connect::v4(name).user(name)).await
}

#[tokio::test]
async fn subscribe_refused_with_0x80_in_311_and_0x87_in_5() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let filters = [
        ("alice/#", 1),
        ("secret/#", 1),
        ("#", 0),
        // Covered by `read shared/#` and not wholly by `deny shared/secret`.
        ("shared/+", 1),
        ("shared/secret", 1),
        ("$share/g/alice/jobs", 1),
        ("$share/g/bob/jobs", 1),
    ];
    let mut alice4 = user4(&broker, "alice").await;
    assert_eq!(
        alice4.subscribe(1, &filters).await,
        [1, 0x80, 0x80, 1, 0x80, 1, 0x80]
    );
    let mut alice5 = login(&broker, Connect::v5("alice-5").user("alice")).await;
    assert_eq!(
        alice5.subscribe(1, &filters).await,
        [1, 0x87, 0x87, 1, 0x87, 1, 0x87]
    );
    broker
        .wait_metrics("refused subscriptions counted", |m| {
            m.value("kubemqtt_acl_denials_total", &[("action", "subscribe")]) == 8.0
        })
        .await;
}

#[tokio::test]
async fn publish_refused_with_0x87_in_5_and_dropped_silently_in_311() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let mut watcher = user5(&broker, "watcher").await;
    assert_eq!(watcher.subscribe(1, &[("#", 2)]).await, [2]);

    let mut alice = user5(&broker, "alice").await;
    assert_eq!(
        alice
            .publish_qos1(&Pub::new("bob/x", b"no").qos(1, 1))
            .await,
        0x87
    );
    alice
        .send_publish(&Pub::new("bob/x", b"no").qos(2, 2))
        .await;
    let rec = alice.expect_pubrec().await;
    assert_eq!((rec.pid, rec.reason), (2, 0x87));
    alice.send_publish(&Pub::new("bob/x", b"no")).await;
    // The allowed topic still works, and is the first thing delivered.
    assert_eq!(
        alice
            .publish_qos1(&Pub::new("alice/x", b"yes 5").qos(1, 3))
            .await,
        0
    );

    // 3.1.1 has no way to say no: the broker acknowledges and drops, as
    // mosquitto does.
    let mut alice4 = login(&broker, Connect::v4("alice-4").user("alice")).await;
    assert_eq!(
        alice4
            .publish_qos1(&Pub::new("bob/x", b"no").qos(1, 1))
            .await,
        0
    );
    alice4
        .send_publish(&Pub::new("bob/x", b"no").qos(2, 2))
        .await;
    assert_eq!(alice4.expect_pubrec().await.pid, 2);
    alice4.send(&ack(kind::PUBREL, 2, false, 0)).await;
    assert_eq!(alice4.expect_pubcomp().await.pid, 2);
    assert_eq!(
        alice4
            .publish_qos1(&Pub::new("alice/y", b"yes 4").qos(1, 3))
            .await,
        0
    );

    for expected in ["yes 5", "yes 4"] {
        let msg = watcher.expect_publish().await;
        assert_eq!(msg.payload, expected.as_bytes(), "{msg:?}");
        watcher.ack_publish(&msg).await;
    }
    watcher.expect_nothing(QUIET).await;
    broker
        .wait_metrics("refused publishes counted", |m| {
            m.value("kubemqtt_acl_denials_total", &[("action", "publish")]) == 5.0
        })
        .await;
}

#[tokio::test]
async fn every_delivery_is_checked_including_retained_messages() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let mut publisher = user5(&broker, "publisher").await;
    for (pid, topic) in [(1, "shared/secret"), (2, "shared/public")] {
        let p = Pub::new(topic, topic.as_bytes()).qos(1, pid).retain();
        assert!(matches!(publisher.publish_qos1(&p).await, 0 | 0x10));
    }

    // `shared/#` is allowed, but `shared/secret` may not be read: its
    // retained message is withheld.
    let mut alice = user5(&broker, "alice").await;
    assert_eq!(alice.subscribe(1, &[("shared/#", 1)]).await, [1]);
    let retained = alice.expect_publish().await;
    assert_eq!(
        (retained.topic.as_str(), retained.retain),
        ("shared/public", true)
    );
    alice.ack_publish(&retained).await;

    // Live messages too.
    publisher
        .publish_qos1(&Pub::new("shared/secret", b"live secret").qos(1, 3))
        .await;
    publisher
        .publish_qos1(&Pub::new("shared/news", b"live news").qos(1, 4))
        .await;
    let live = alice.expect_publish().await;
    assert_eq!(live.topic, "shared/news");
    alice.ack_publish(&live).await;
    alice.expect_nothing(QUIET).await;

    broker
        .wait_metrics("withheld deliveries counted", |m| {
            m.value("kubemqtt_acl_denials_total", &[("action", "receive")]) == 2.0
        })
        .await;
}

#[tokio::test]
async fn will_messages_need_publish_access() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let mut watcher = user5(&broker, "watcher").await;
    assert_eq!(watcher.subscribe(1, &[("#", 0)]).await, [0]);

    let denied = login(
        &broker,
        Connect::v5("will-denied")
            .user("alice")
            .will(Will::new("bob/will", b"denied will")),
    )
    .await;
    let sys = login(
        &broker,
        Connect::v5("will-sys")
            .user("sysadmin")
            .will(Will::new("$SYS/fake", b"sys will")),
    )
    .await;
    let allowed = login(
        &broker,
        Connect::v4("will-allowed")
            .user("alice")
            .will(Will::new("will/alice", b"allowed will")),
    )
    .await;
    // Abnormal disconnects (the socket just closes): wills are due.
    drop(denied);
    drop(sys);
    broker
        .wait_metrics("refused wills counted", |m| {
            m.value("kubemqtt_acl_denials_total", &[("action", "will")]) == 2.0
        })
        .await;
    drop(allowed);
    let msg = watcher.expect_publish().await;
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        ("will/alice", &b"allowed will"[..])
    );
    watcher.expect_nothing(QUIET).await;
}

/// `$SYS` is readable only by users granted it explicitly; `#` does not
/// cover it, and nobody may publish there.
#[tokio::test]
async fn sys_topics_only_for_users_granted_them() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let mut watcher = user5(&broker, "watcher").await;
    assert_eq!(
        watcher.subscribe(1, &[("$SYS/#", 0), ("#", 0)]).await,
        [0x87, 0]
    );
    let (mut anonymous, _) = Raw::connect(&broker, &Connect::v5("anon")).await;
    assert_eq!(
        anonymous.subscribe(1, &[("$SYS/broker/uptime", 0)]).await,
        [0x87]
    );

    let mut sysadmin = user5(&broker, "sysadmin").await;
    assert_eq!(sysadmin.subscribe(1, &[("$SYS/#", 0)]).await, [0]);
    // $SYS is published every second in these tests (retained ones come
    // at once); collect for a little over two periods.
    let mut sys_seen = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match sysadmin.recv_within(left).await {
            Recv::Packet(Pkt::Publish(p)) => {
                assert!(p.topic.starts_with("$SYS/"), "{p:?}");
                sys_seen += 1;
            }
            Recv::Timeout => break,
            other => panic!("sysadmin: unexpected {other:?}"),
        }
    }
    assert!(sys_seen > 0, "the granted user received no $SYS message");
    // Meanwhile `#` delivered none of them.
    watcher.expect_nothing(Duration::from_millis(100)).await;

    // Even a user with readwrite on $SYS cannot publish there.
    let fake = Pub::new("$SYS/broker/uptime", b"0 seconds").qos(1, 9);
    assert_eq!(sysadmin.publish_qos1(&fake).await, 0x87);
}

#[tokio::test]
async fn patterns_and_credentials_file_rules() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    // bob has no rules of his own: only the patterns apply.
    let mut bob = login(&broker, Connect::v5("bob-phone").user("bob")).await;
    assert_eq!(
        bob.publish_qos1(&Pub::new("users/bob/x", b"").qos(1, 1))
            .await,
        0x10
    );
    assert_eq!(
        bob.publish_qos1(&Pub::new("users/alice/x", b"").qos(1, 2))
            .await,
        0x87
    );
    assert_eq!(
        bob.subscribe(
            3,
            &[
                ("commands/bob-phone", 1),
                ("commands/other", 1),
                ("public/#", 1)
            ]
        )
        .await,
        [1, 0x87, 0x87]
    );

    // Anonymous: the rules before any `user` line, and `%u` patterns do
    // not apply.
    let (mut anonymous, _) = Raw::connect(&broker, &Connect::v5("anon-1")).await;
    assert_eq!(
        anonymous
            .subscribe(
                1,
                &[("public/#", 1), ("commands/anon-1", 1), ("users/+/x", 1)]
            )
            .await,
        [1, 1, 0x87]
    );
    assert_eq!(
        anonymous
            .publish_qos1(&Pub::new("public/x", b"").qos(1, 2))
            .await,
        0x87
    );

    // dev-1's rules come from the credentials file, with %u and %c; a deny
    // rule wins within its group.
    let mut dev = login(&broker, Connect::v5("dev-1-cid").user("dev-1")).await;
    assert_eq!(
        dev.publish_qos1(&Pub::new("devices/dev-1/t", b"").qos(1, 1))
            .await,
        0x10
    );
    assert_eq!(
        dev.publish_qos1(&Pub::new("devices/dev-2/t", b"").qos(1, 2))
            .await,
        0x87
    );
    assert_eq!(
        dev.publish_qos1(&Pub::new("devices/dev-1/private", b"").qos(1, 3))
            .await,
        0x87
    );
    assert_eq!(
        dev.subscribe(4, &[("config/dev-1-cid", 1), ("config/dev-1", 1)])
            .await,
        [1, 0x87]
    );
}

/// A changed ACL file applies to connected clients without reconnecting:
/// new grants at once, and revoked reads stop deliveries.
#[tokio::test]
async fn acl_reload_applies_to_connected_clients() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let mut bob = user5(&broker, "bob").await;
    let mut alice = user5(&broker, "alice").await;
    assert_eq!(alice.subscribe(1, &[("alice/#", 1)]).await, [1]);
    assert_eq!(
        bob.publish_qos1(&Pub::new("news/x", b"").qos(1, 1)).await,
        0x87
    );

    // bob may now write news/# and alice/#; alice keeps only `write logs`.
    let reloaded = broker.count_logs("Reloaded the password, credentials and ACL files");
    let new_acl = ACL.replace("topic readwrite alice/#\n", "").replace(
        "user watcher\n",
        "user bob\ntopic write news/#\ntopic write alice/#\nuser watcher\n",
    );
    write_file(fixtures.path(), "acl", &new_acl);
    assert!(
        eventually(Duration::from_secs(10), || {
            broker.count_logs("Reloaded the password, credentials and ACL files") > reloaded
        })
        .await,
        "the ACL change was not picked up"
    );

    assert_eq!(
        bob.publish_qos1(&Pub::new("news/x", b"").qos(1, 2)).await,
        0x10
    );
    // alice is still subscribed to alice/# but may no longer read it.
    assert_eq!(
        bob.publish_qos1(&Pub::new("alice/x", b"").qos(1, 3)).await,
        0
    );
    alice.expect_nothing(QUIET).await;
    alice.ping().await;
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Presence events: JSON under `$SYS/brokers/{node}/clients/{id}/...`,
/// readable only with a `$SYS` grant.
#[tokio::test]
async fn presence_events_on_connect_and_disconnect() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "").await else {
        return;
    };
    let mut sysadmin = user5(&broker, "sysadmin").await;
    assert_eq!(
        sysadmin
            .subscribe(1, &[("$SYS/brokers/+/clients/+/+", 0)])
            .await,
        [0]
    );
    let mut watcher = user5(&broker, "watcher").await;
    assert_eq!(watcher.subscribe(1, &[("$SYS/brokers/#", 0)]).await, [0x87]);

    let before = unix_millis();
    let bob = login(&broker, Connect::v5("bob-laptop").user("bob").keepalive(42)).await;
    let connected = next_presence(&mut sysadmin, "bob-laptop").await;
    assert!(
        connected.0.ends_with("/clients/bob-laptop/connected"),
        "{}",
        connected.0
    );
    let json = connected.1;
    assert_eq!(json["clientid"], "bob-laptop", "{json}");
    assert_eq!(json["username"], "bob", "{json}");
    assert_eq!(json["ipaddress"], "127.0.0.1", "{json}");
    assert!(json["port"].as_u64().is_some_and(|p| p > 0), "{json}");
    assert_eq!(json["protocol"], 5, "{json}");
    assert_eq!(json["keepalive"], 42, "{json}");
    let at = json["timestamp"].as_u64().expect("timestamp in ms");
    assert!(at + 1000 >= before && at <= unix_millis() + 1000, "{json}");
    bob.disconnect().await;
    let (topic, json) = next_presence(&mut sysadmin, "bob-laptop").await;
    assert!(
        topic.ends_with("/clients/bob-laptop/disconnected"),
        "{topic}"
    );
    assert_eq!(json["reason"], "normal", "{json}");

    let anon = Raw::connect(&broker, &Connect::v4("anon-x")).await.0;
    let (_, json) = next_presence(&mut sysadmin, "anon-x").await;
    assert_eq!(
        (json["username"].clone(), json["protocol"].clone()),
        (serde_json::Value::Null, 4.into())
    );
    drop(anon);
    let (topic, json) = next_presence(&mut sysadmin, "anon-x").await;
    assert!(topic.ends_with("/disconnected"), "{topic}");
    assert_eq!(json["reason"], "closed", "{json}");
    watcher.expect_nothing(QUIET).await;
}

/// The next presence event about `client_id`: topic and JSON payload.
async fn next_presence(raw: &mut Raw, client_id: &str) -> (String, serde_json::Value) {
    loop {
        let msg = raw.expect_publish().await;
        if msg.topic.contains(&format!("/clients/{client_id}/")) {
            let json = serde_json::from_slice(&msg.payload)
                .unwrap_or_else(|e| panic!("presence payload is not JSON ({e}): {msg:?}"));
            return (msg.topic, json);
        }
    }
}

#[tokio::test]
async fn presence_events_can_be_turned_off() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some(broker) = start(fixtures.path(), "presence_events = false\n").await else {
        return;
    };
    let mut sysadmin = user5(&broker, "sysadmin").await;
    assert_eq!(sysadmin.subscribe(1, &[("$SYS/brokers/#", 0)]).await, [0]);
    let bob = user5(&broker, "bob").await;
    bob.disconnect().await;
    sysadmin.expect_nothing(QUIET).await;
}
