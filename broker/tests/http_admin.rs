//! The HTTP server: health and readiness probes, Prometheus metrics
//! (scraped and parsed), and the JSON admin API behind a bearer token.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const TOKEN: &str = "s3cr3t-admin-token";

/// The HTTP server with the token in a file; `auth` is appended (an
/// `[auth]` table, or nothing).
async fn start_with_token(dir: &Path, auth: &str) -> Option<(OpsBroker, PathBuf)> {
    let token = write_file(dir, "admin-token", &format!("{TOKEN}\n"));
    let broker = OpsBroker::start(BrokerOpts {
        extra_toml: format!(
            "[http]\nbind = \"127.0.0.1:{{port:http}}\"\nadmin_token_file = \"{}\"\n{auth}",
            token.display()
        ),
        ..BrokerOpts::default()
    })
    .await?;
    Some((broker, token))
}

const ENDPOINTS: [(&str, &str); 6] = [
    ("GET", "/api/v1/clients"),
    ("GET", "/api/v1/clients/nobody"),
    ("GET", "/api/v1/subscriptions"),
    ("GET", "/api/v1/retained"),
    ("GET", "/api/v1/stats"),
    ("POST", "/api/v1/reload"),
];

#[tokio::test]
async fn health_and_readiness_probes() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some((broker, _)) = start_with_token(fixtures.path(), "").await else {
        return;
    };
    let health = broker.http("GET", "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let ready = broker.http("GET", "/readyz", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    assert_eq!(broker.http("GET", "/nothing-here", None).await.status, 404);
}

#[tokio::test]
async fn admin_api_with_and_without_the_token() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some((broker, token_file)) = start_with_token(fixtures.path(), "").await else {
        return;
    };
    for (method, path) in ENDPOINTS {
        let missing = broker.http(method, path, None).await;
        assert_eq!(missing.status, 401, "{method} {path} without token");
        assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
        let wrong = broker.http(method, path, Some("s3cr3t-admin-tokeN")).await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        let right = broker.http(method, path, Some(TOKEN)).await;
        let expected = if path.ends_with("/nobody") { 404 } else { 200 };
        assert_eq!(right.status, expected, "{method} {path}: {right:?}");
    }
    // Health and metrics need no token.
    assert_eq!(broker.http("GET", "/metrics", None).await.status, 200);
    assert_eq!(broker.http("GET", "/healthz", None).await.status, 200);

    // The token file is read at each request: rotation needs no restart.
    write_file(fixtures.path(), "admin-token", "rotated-token");
    let stats = "/api/v1/stats";
    assert_eq!(broker.http("GET", stats, Some(TOKEN)).await.status, 401);
    assert_eq!(
        broker
            .http("GET", stats, Some("rotated-token"))
            .await
            .status,
        200
    );
    // An empty token file locks the API rather than opening it.
    std::fs::write(&token_file, "\n").unwrap();
    assert_eq!(broker.http("GET", stats, Some("")).await.status, 503);
    assert_eq!(broker.http("GET", stats, None).await.status, 503);
}

#[tokio::test]
async fn admin_api_is_disabled_without_a_token_file() {
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: "[http]\nbind = \"127.0.0.1:{port:http}\"\n".into(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    for (method, path) in ENDPOINTS {
        let response = broker.http(method, path, Some("anything")).await;
        assert_eq!(response.status, 404, "{method} {path}");
    }
    assert_eq!(broker.http("GET", "/metrics", None).await.status, 200);
}

#[tokio::test]
async fn metrics_follow_the_traffic() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some((broker, _)) = start_with_token(fixtures.path(), "").await else {
        return;
    };
    let listener = format!("tcp-{}", broker.port());
    let mut sub = raw_subscriber5(&broker, "sub", "m/#", 2).await;
    let keeper = Connect::v5("keeper")
        .clean(false)
        .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 300));
    let (mut raw, _) = Raw::connect(&broker, &keeper).await;
    assert_eq!(raw.subscribe(1, &[("m/#", 1)]).await, [1]);
    raw.disconnect().await;
    let (mut publisher, _) = Raw::connect(&broker, &Connect::v4("pub")).await;
    publisher.send_publish(&Pub::new("m/0", b"zero")).await;
    publisher
        .publish_qos1(&Pub::new("m/1", b"one").qos(1, 1).retain())
        .await;
    publisher
        .send_publish(&Pub::new("m/2", b"two").qos(2, 2))
        .await;
    publisher.expect_pubrec().await;
    publisher.send(&ack(kind::PUBREL, 2, false, 0)).await;
    publisher.expect_pubcomp().await;
    for _ in 0..3 {
        let msg = sub.expect_publish().await;
        sub.ack_publish(&msg).await;
    }

    let response = broker.http("GET", "/metrics", None).await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{response:?}"
    );
    let m = PromMetrics::parse(&response.body);
    // Every sample belongs to a declared family.
    for sample in &m.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| sample.name.strip_suffix(suffix))
            .filter(|f| m.types.get(*f).is_some_and(|t| t == "histogram"))
            .unwrap_or(&sample.name);
        assert!(
            m.types.contains_key(family),
            "no # TYPE for {}",
            sample.name
        );
    }
    let value = |name: &str, labels: &[(&str, &str)]| {
        m.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{m}"))
    };
    assert_eq!(value("kubemqtt_clients_connected", &[]), 2.0, "{m}");
    // keeper left before pub came.
    assert_eq!(value("kubemqtt_clients_maximum", &[]), 2.0, "{m}");
    assert_eq!(
        value("kubemqtt_connections", &[("listener", &listener)]),
        2.0
    );
    assert_eq!(
        value("kubemqtt_connections_total", &[("listener", &listener)]),
        3.0
    );
    for qos in ["0", "1", "2"] {
        assert_eq!(
            value("kubemqtt_messages_received_total", &[("qos", qos)]),
            1.0,
            "{m}"
        );
    }
    assert_eq!(value("kubemqtt_messages_sent_total", &[]), 3.0, "{m}");
    assert!(value("kubemqtt_bytes_received_total", &[]) > 0.0);
    assert!(value("kubemqtt_bytes_sent_total", &[]) > 0.0);
    assert_eq!(
        value("kubemqtt_sessions", &[("state", "online")]),
        2.0,
        "{m}"
    );
    assert_eq!(
        value("kubemqtt_sessions", &[("state", "offline")]),
        1.0,
        "{m}"
    );
    assert_eq!(value("kubemqtt_subscriptions", &[]), 2.0, "{m}");
    // keeper is offline: its QoS 1 and 2 messages wait in its queue, the
    // QoS 0 one is dropped.
    assert_eq!(value("kubemqtt_queued_messages", &[]), 2.0, "{m}");
    assert_eq!(
        value("kubemqtt_messages_dropped_total", &[("reason", "offline")]),
        1.0
    );
    // m/1 plus the broker's own retained $SYS topics.
    assert!(value("kubemqtt_retained_messages", &[]) >= 1.0);
    // The latency histogram: cumulative buckets ending in +Inf = count.
    let buckets: Vec<f64> = m
        .samples
        .iter()
        .filter(|s| s.name == "kubemqtt_delivery_latency_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let count = value("kubemqtt_delivery_latency_seconds_count", &[]);
    assert_eq!(
        value(
            "kubemqtt_delivery_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        count
    );
    assert_eq!(count, 3.0, "one observation per delivery");
}

#[tokio::test]
async fn clients_can_be_listed_inspected_and_disconnected() {
    let fixtures = tempfile::tempdir().unwrap();
    let hash = kubemqtt_broker::auth::hash_password("pw").unwrap();
    let creds = write_file(
        fixtures.path(),
        "creds.toml",
        &format!("[[users]]\nusername = \"ops\"\npasswords = [{{ hash = \"{hash}\" }}]\n"),
    );
    let auth = format!("[auth]\ncredentials_file = \"{}\"\n", creds.display());
    let Some((broker, _)) = start_with_token(fixtures.path(), &auth).await else {
        return;
    };
    let api = |method: &'static str, path: String| {
        let broker = &broker;
        async move { broker.http(method, &path, Some(TOKEN)).await }
    };

    let (mut five, _) = Raw::connect(
        &broker,
        &Connect::v5("five").login("ops", "pw").keepalive(45),
    )
    .await;
    assert_eq!(five.subscribe(1, &[("a/#", 1), ("b", 0)]).await, [1, 0]);
    let (mut four, _) = Raw::connect(&broker, &Connect::v4("four")).await;
    let offline = Connect::v5("offline")
        .clean(false)
        .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 300));
    let (mut raw, _) = Raw::connect(&broker, &offline).await;
    assert_eq!(raw.subscribe(1, &[("o/#", 1)]).await, [1]);
    raw.disconnect().await;

    let list = api("GET", "/api/v1/clients".into()).await.json();
    let clients = list["clients"].as_array().expect("clients array");
    let mut ids: Vec<&str> = clients
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["five", "four"], "{list}");

    let five_json = api("GET", "/api/v1/clients/five".into()).await.json();
    assert_eq!(five_json["username"], "ops", "{five_json}");
    assert_eq!(five_json["protocol"], 5);
    assert_eq!(five_json["keep_alive"], 45);
    assert_eq!(five_json["listener"], format!("tcp-{}", broker.port()));
    assert!(
        five_json["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{five_json}"
    );
    let mut subs: Vec<&str> = five_json["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    subs.sort();
    assert_eq!(subs, ["a/#", "b"]);
    let four_json = api("GET", "/api/v1/clients/four".into()).await.json();
    assert_eq!(
        (four_json["protocol"].clone(), four_json["username"].clone()),
        (4.into(), Value::Null)
    );
    let offline_json = api("GET", "/api/v1/clients/offline".into()).await.json();
    assert_eq!(offline_json["connected"], false, "{offline_json}");
    assert_eq!(offline_json["subscriptions"], serde_json::json!(["o/#"]));

    // Kicking: 5.0 clients are told why (0x98 Administrative action).
    let kicked = api("DELETE", "/api/v1/clients/five".into()).await;
    assert_eq!(kicked.status, 202, "{kicked:?}");
    assert_eq!(kicked.json()["disconnected"], "five");
    let disconnect = five
        .expect_closed()
        .await
        .expect("DISCONNECT before the close");
    assert_eq!(disconnect.reason, 0x98);
    assert_eq!(
        api("DELETE", "/api/v1/clients/four".into()).await.status,
        202
    );
    assert!(four.expect_closed().await.is_none());
    assert_eq!(
        api("DELETE", "/api/v1/clients/offline".into()).await.status,
        404
    );
    assert_eq!(
        api("DELETE", "/api/v1/clients/nobody".into()).await.status,
        404
    );
    assert!(
        broker
            .wait_for_log("Client five disconnected by the admin API.", TIMEOUT)
            .await
    );
}

#[tokio::test]
async fn subscriptions_retained_and_stats() {
    let fixtures = tempfile::tempdir().unwrap();
    let Some((broker, _)) = start_with_token(fixtures.path(), "").await else {
        return;
    };
    let (mut raw, _) = Raw::connect(&broker, &Connect::v5("watcher")).await;
    let props = Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, 7);
    let codes = raw
        .subscribe_props(1, &props, &[("s/+/t", sub_opts(2, true, true, 1))])
        .await;
    assert_eq!(codes, [2]);
    raw.publish_qos1(&Pub::new("keep/me", b"12345").qos(1, 2).retain())
        .await;

    let subs = broker
        .http("GET", "/api/v1/subscriptions", Some(TOKEN))
        .await
        .json();
    assert_eq!(
        subs["subscriptions"],
        serde_json::json!([{
            "client_id": "watcher",
            "filter": "s/+/t",
            "qos": 2,
            "no_local": true,
            "retain_as_published": true,
            "retain_handling": 1,
            "identifier": 7,
        }])
    );

    let retained = broker
        .http("GET", "/api/v1/retained", Some(TOKEN))
        .await
        .json();
    let entries = retained["retained"].as_array().expect("retained array");
    let entry = entries
        .iter()
        .find(|e| e["topic"] == "keep/me")
        .unwrap_or_else(|| panic!("keep/me not listed: {retained}"));
    assert_eq!(
        (entry["qos"].clone(), entry["bytes"].clone()),
        (1.into(), 5.into())
    );
    assert!(
        !retained.to_string().contains("12345"),
        "payloads are not exposed"
    );

    let stats = broker
        .http("GET", "/api/v1/stats", Some(TOKEN))
        .await
        .json();
    assert!(
        stats["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{stats}"
    );
    assert_eq!(stats["stats"]["clients/connected"], "1", "{stats}");
}

#[tokio::test]
async fn reload_through_the_api() {
    let fixtures = tempfile::tempdir().unwrap();
    let hash = kubemqtt_broker::auth::hash_password("pw").unwrap();
    let user = |name: &str| {
        format!("[[users]]\nusername = \"{name}\"\npasswords = [{{ hash = \"{hash}\" }}]\n")
    };
    let creds = write_file(fixtures.path(), "creds.toml", &user("old"));
    // No periodic reload: only the API reloads.
    let auth = format!(
        "[auth]\nreload_interval_secs = 3600\ncredentials_file = \"{}\"\n",
        creds.display()
    );
    let Some((broker, _)) = start_with_token(fixtures.path(), &auth).await else {
        return;
    };
    let (mut old, _) = Raw::connect(&broker, &Connect::v5("old").login("old", "pw")).await;
    write_file(fixtures.path(), "creds.toml", &user("new"));
    let new = Connect::v5("new").login("new", "pw");
    assert_eq!(Raw::connect_raw(&broker, &new).await.1.code, 0x86);

    let reloaded = broker.http("POST", "/api/v1/reload", Some(TOKEN)).await;
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    assert_eq!(
        reloaded.json(),
        serde_json::json!({
            "reloaded": true,
            "applied": [],
            "restart_required": [],
            "disconnected": 1
        })
    );
    assert_eq!(old.expect_closed().await.map(|d| d.reason), Some(0x87));
    let (mut new, _) = Raw::connect(&broker, &new).await;

    write_file(
        fixtures.path(),
        "creds.toml",
        "[[users]]\nname = \"typo\"\n",
    );
    let refused = broker.http("POST", "/api/v1/reload", Some(TOKEN)).await;
    assert_eq!(refused.status, 422);
    let body = refused.json();
    assert_eq!(body["reloaded"], false);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("creds.toml")),
        "{body}"
    );
    new.ping().await;

    assert_eq!(
        broker
            .http("GET", "/api/v1/reload", Some(TOKEN))
            .await
            .status,
        405
    );
}
