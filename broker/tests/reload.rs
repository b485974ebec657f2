//! Reloading `broker.toml` at run time: SIGHUP and `POST /api/v1/reload`
//! put the log level and limits in force without dropping a connection,
//! and name the keys that need a restart.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Long enough for a reload (it is immediate) on a slow CI machine.
const RELOAD_BOUND: Duration = Duration::from_secs(5);

/// Property identifier of Maximum Packet Size in CONNACK.
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

fn config_file(broker: &TestBroker) -> PathBuf {
    broker.dir().join("broker.toml")
}

/// Rewrites the running broker's configuration file with `edit`.
fn edit_config(broker: &TestBroker, edit: impl FnOnce(String) -> String) {
    let path = config_file(broker);
    let text = std::fs::read_to_string(&path).expect("read broker.toml");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&path, edited).expect("write broker.toml");
}

#[tokio::test]
async fn sighup_applies_log_level_and_limits_while_a_client_stays_connected() {
    if skip_on_mosquitto("the reload of broker.toml is kubemqtt's") {
        return;
    }
    let broker = TestBroker::start(BrokerOpts {
        extra_limits: "max_packet_size = 65536\n".to_owned(),
        extra_toml: "[log]\nlevel = \"info\"\n".to_owned(),
        ..BrokerOpts::default()
    })
    .await;
    let (mut before, connack) = Raw::connect(&broker, &Connect::v5("before")).await;
    assert_eq!(connack.props.num(MAXIMUM_PACKET_SIZE), Some(65536));
    before.ping().await;
    assert_eq!(broker.count_logs("Received PINGREQ from before"), 0);

    edit_config(&broker, |text| {
        text.replace("max_packet_size = 65536", "max_packet_size = 1024")
            .replace("level = \"info\"", "level = \"debug\"")
            .replacen(
                "allow_anonymous = true",
                "allow_anonymous = true\nnode_name = \"renamed\"",
                1,
            )
    });
    broker.signal("HUP");
    let path = config_file(&broker);
    let applied = format!(
        "Reloaded {}: changed limits.max_packet_size, log.level.",
        path.display()
    );
    assert!(
        broker.wait_for_log(&applied, RELOAD_BOUND).await,
        "{}",
        broker.logs().join("\n")
    );
    assert!(
        broker
            .wait_for_log("need a restart, not applied: node_name.", RELOAD_BOUND)
            .await,
        "{}",
        broker.logs().join("\n")
    );

    // The client connected before the reload is still there, now logged
    // packet by packet, and keeps the limit it was given at CONNECT.
    before.ping().await;
    assert!(
        broker
            .wait_for_log("Received PINGREQ from before", RELOAD_BOUND)
            .await
    );
    let big = vec![b'x'; 4000];
    let reason = before
        .publish_qos1(&Pub::new("reload/big", &big).qos(1, 1))
        .await;
    assert!(
        reason < 0x80,
        "the old connection keeps max_packet_size 65536: PUBACK {reason:#x}"
    );

    // A new connection gets the new limit.
    let (mut after, connack) = Raw::connect(&broker, &Connect::v5("after")).await;
    assert_eq!(connack.props.num(MAXIMUM_PACKET_SIZE), Some(1024));
    after
        .send_publish(&Pub::new("reload/big", &big).qos(1, 1))
        .await;
    assert_eq!(
        after.expect_closed().await.map(|d| d.reason),
        Some(0x95),
        "Packet too large under the new limit"
    );
    before.ping().await;
    assert_eq!(broker.count_logs("Client before disconnected"), 0);
}

/// Kubernetes updates a mounted ConfigMap by swapping files, and sends no
/// signal: the broker notices the new `broker.toml` by itself.
#[tokio::test]
async fn a_replaced_file_is_applied_without_a_signal() {
    if skip_on_mosquitto("the reload of broker.toml is kubemqtt's") {
        return;
    }
    let broker = TestBroker::start(BrokerOpts {
        extra_limits: "max_packet_size = 65536\n".to_owned(),
        ..BrokerOpts::default()
    })
    .await;
    let (mut client, _) = Raw::connect(&broker, &Connect::v5("stays")).await;
    let path = config_file(&broker);
    let text = std::fs::read_to_string(&path).expect("read broker.toml");
    let replacement = broker.dir().join("broker.toml.new");
    std::fs::write(
        &replacement,
        text.replace("max_packet_size = 65536", "max_packet_size = 2048"),
    )
    .expect("write the new version");
    std::fs::rename(&replacement, &path).expect("swap it in");
    let applied = format!(
        "Reloaded {}: changed limits.max_packet_size.",
        path.display()
    );
    // Checked every auth.reload_interval_secs (2 s by default).
    assert!(
        broker
            .wait_for_log(&applied, RELOAD_BOUND + Duration::from_secs(2))
            .await,
        "{}",
        broker.logs().join("\n")
    );
    let (_, connack) = Raw::connect(&broker, &Connect::v5("after")).await;
    assert_eq!(connack.props.num(MAXIMUM_PACKET_SIZE), Some(2048));
    client.ping().await;
    // Read once per version: the next checks find nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        broker.count_logs("Reloaded "),
        1,
        "{}",
        broker.logs().join("\n")
    );
}

#[tokio::test]
async fn a_broken_file_changes_nothing_and_says_why() {
    if skip_on_mosquitto("the reload of broker.toml is kubemqtt's") {
        return;
    }
    let broker = TestBroker::start(BrokerOpts {
        extra_limits: "max_inflight = 10\n".to_owned(),
        ..BrokerOpts::default()
    })
    .await;
    let (mut client, _) = Raw::connect(&broker, &Connect::v5("stays")).await;
    edit_config(&broker, |text| {
        text.replace("max_inflight = 10", "max_inflight = \"many\"")
    });
    broker.signal("HUP");
    let path = config_file(&broker);
    let refused = format!(
        "Refused the changed configuration, keeping the running one: {}:",
        path.display()
    );
    assert!(
        broker.wait_for_log(&refused, RELOAD_BOUND).await,
        "{}",
        broker.logs().join("\n")
    );
    assert!(broker
        .logs()
        .iter()
        .any(|l| l.contains("key `limits.max_inflight`")));
    client.ping().await;
}

#[tokio::test]
async fn the_admin_api_reload_answers_with_what_changed() {
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: "[http]\nbind = \"127.0.0.1:{port:http}\"\nadmin_token_file = \"TOKEN\"\n\
                     [drain]\nrate_per_sec = 100\n"
            .to_owned(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    // The token file lives beside the configuration.
    let token = write_file(broker.dir(), "admin-token", "s3cret\n");
    edit_config(&broker, |text| {
        text.replace("\"TOKEN\"", &format!("{token:?}"))
    });
    // The token path itself is applied by a reload (it was "TOKEN" until now).
    broker.signal("HUP");
    assert!(
        broker
            .wait_for_log("changed http.admin_token_file", RELOAD_BOUND)
            .await,
        "{}",
        broker.logs().join("\n")
    );
    let (mut client, _) = Raw::connect(&broker, &Connect::v5("stays")).await;

    edit_config(&broker, |text| {
        text.replace("rate_per_sec = 100", "rate_per_sec = 5")
            .replace("interval_secs = 1", "interval_secs = 7")
    });
    let response = broker.http("POST", "/api/v1/reload", Some("s3cret")).await;
    assert_eq!(response.status, 200, "{response:?}");
    let body = response.json();
    assert_eq!(body["reloaded"], true, "{body}");
    assert_eq!(body["applied"], serde_json::json!(["drain.rate_per_sec"]));
    assert_eq!(
        body["restart_required"],
        serde_json::json!(["sys.interval_secs"])
    );

    edit_config(&broker, |text| {
        text.replace("rate_per_sec = 5", "rate_per_sec = -1")
    });
    let response = broker.http("POST", "/api/v1/reload", Some("s3cret")).await;
    assert_eq!(response.status, 422, "{response:?}");
    let body = response.json();
    assert_eq!(body["reloaded"], false);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("drain.rate_per_sec")),
        "{body}"
    );
    client.ping().await;
}
