//! What a newcomer reads first: `/metrics` shows every counter from the
//! start (at 0), the log says where the HTTP server listens, an empty admin
//! token file is named as such, and a removed user's client gets one
//! disconnect line.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn known_counters_show_at_zero_from_the_start() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("metrics CA");
    let server = ca.server_cert();
    let cert = write_file(fixtures.path(), "server.crt", &server.cert_pem);
    let key = write_file(fixtures.path(), "server.key", &server.key_pem);
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: format!(
            "[[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:{{port:tls}}\"\nprotocol = \"tls\"\n\
             [listeners.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\
             [http]\nbind = \"127.0.0.1:{{port:http}}\"\n"
        ),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let metrics = broker.metrics().await;
    let plain = format!("tcp-{}", broker.port());
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            metrics.get(name, labels),
            Some(0.0),
            "{name}{labels:?} is not at 0:\n{metrics}"
        );
    };
    for quota in [
        "connections",
        "packet_size",
        "publish_rate",
        "receive_maximum",
        "subscriptions",
    ] {
        zero("kubemqtt_quota_refusals_total", &[("quota", quota)]);
    }
    for listener in [plain.as_str(), "secure"] {
        for reason in ["max_connections", "connection_rate"] {
            zero(
                "kubemqtt_connections_refused_total",
                &[("listener", listener), ("reason", reason)],
            );
        }
    }
    zero(
        "kubemqtt_tls_handshake_failures_total",
        &[("listener", "secure")],
    );
    assert_eq!(
        metrics.get(
            "kubemqtt_tls_handshake_failures_total",
            &[("listener", &plain)]
        ),
        None,
        "a plain listener has no TLS handshakes"
    );
    for reason in [
        "offline",
        "queue_full",
        "slow_subscriber",
        "memory_budget",
        "too_large",
    ] {
        zero("kubemqtt_messages_dropped_total", &[("reason", reason)]);
    }
    for reason in [
        "anonymous",
        "no_users",
        "unknown_user",
        "bad_password",
        "password_expired",
    ] {
        zero("kubemqtt_auth_failures_total", &[("reason", reason)]);
    }
    for action in ["publish", "receive", "subscribe", "will"] {
        zero("kubemqtt_acl_denials_total", &[("action", action)]);
    }
}

#[tokio::test]
async fn the_http_server_says_where_it_listens() {
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: "[http]\nbind = \"127.0.0.1:{port:http}\"\n".to_owned(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let line = format!(
        "HTTP server listening on 127.0.0.1:{} (/healthz, /readyz, /metrics; admin API off: no http.admin_token_file).",
        broker.port_of("http")
    );
    assert_eq!(broker.count_logs(&line), 1, "{}", broker.logs().join("\n"));
}

#[tokio::test]
async fn an_empty_admin_token_file_is_named_as_such() {
    let fixtures = tempfile::tempdir().unwrap();
    let token = write_file(fixtures.path(), "admin-token", "\n");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: format!(
            "[http]\nbind = \"127.0.0.1:{{port:http}}\"\nadmin_token_file = {token:?}\n"
        ),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let response = broker.http("GET", "/api/v1/clients", Some("x")).await;
    assert_eq!(response.status, 503, "{response:?}");
    assert!(response.body.contains("empty"), "{response:?}");
    let line = format!(
        "The admin token file {} is empty: the admin API refuses every request until it holds a token.",
        token.display()
    );
    assert!(
        broker.wait_for_log(&line, TIMEOUT).await,
        "{}",
        broker.logs().join("\n")
    );
    assert_eq!(broker.count_logs("Cannot read the admin token file"), 0);
}

#[tokio::test]
async fn a_removed_users_client_gets_one_disconnect_line() {
    let fixtures = tempfile::tempdir().unwrap();
    let hash = kubemqtt_broker::auth::hash_password("pw").unwrap();
    let users = |names: &[&str]| {
        names
            .iter()
            .map(|name| {
                format!("[[users]]\nusername = \"{name}\"\npasswords = [{{ hash = \"{hash}\" }}]\n")
            })
            .collect::<String>()
    };
    let creds = write_file(fixtures.path(), "creds.toml", &users(&["alice", "bob"]));
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: format!("[auth]\nreload_interval_secs = 3600\ncredentials_file = {creds:?}\n"),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let (mut alice, _) = Raw::connect(&broker, &Connect::v5("alice-1").login("alice", "pw")).await;
    write_file(fixtures.path(), "creds.toml", &users(&["bob"]));
    broker.signal("HUP");
    assert_eq!(
        alice
            .expect_closed_within(Duration::from_secs(5))
            .await
            .map(|d| d.reason),
        Some(0x87)
    );
    // Give a second line time to appear, if there were one.
    tokio::time::sleep(QUIET).await;
    let lines: Vec<String> = broker
        .logs()
        .into_iter()
        .filter(|l| l.contains("Client alice-1 ") && l.contains("disconnected"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", broker.logs().join("\n"));
    assert!(lines[0].ends_with("Client alice-1 disconnected: user alice was removed."));
}
