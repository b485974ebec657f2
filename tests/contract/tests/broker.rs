//! The contract between the operator and the broker.
//!
//! A broker is rendered by the operator's planner, its ConfigMap and
//! Secrets are laid out as its pod would see them, and the real broker
//! binary starts on them with the container's own arguments. A client
//! trusting the CA bundle from the ConfigMap, logging in with the admin
//! credentials from the auth Secret, subscribes and publishes over TLS; the
//! broker's log shows the connection; the admin API takes the token from
//! the auth Secret; and anonymous clients are turned away.
//!
//! The test plays the cloud's load balancer, giving the client Service the
//! address 127.0.0.1, so that the server certificate covers the address the
//! client dials.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use kubemqtt_operator::plan::configmap::CA_BUNDLE_KEY;
use kubemqtt_operator::plan::secrets::{
    ADMIN_TOKEN_KEY, ADMIN_USERNAME, PASSWORD_KEY, USERNAME_KEY,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Incoming, MqttOptions, QoS, TlsConfiguration,
    Transport,
};

use common::cluster::{Operator, Pod};
use common::*;

const CLIENT_ID: &str = "contract-client";
const TOPIC: &str = "contract/hello";

#[tokio::test]
async fn a_rendered_broker_serves_tls_with_its_generated_credentials() {
    // Render, with the load balancer's address, and run the broker on the
    // pod's files with loopback ports instead of the pod's own.
    let operator = Operator::new();
    let plan = operator.plan().clone();
    let pod = Pod::start(&plan);
    let (broker, mqtt_port, mqtts_port, http_port) =
        (&pod.broker, pod.mqtt_port, pod.mqtts_port, pod.http_port);
    assert_eq!(pod.config.listeners.len(), 2, "the default listeners");
    assert!(!pod.config.allow_anonymous);

    // What a client is given: the CA bundle and the admin credentials.
    let ca_bundle = plan.config_map.data.as_ref().expect("data")[CA_BUNDLE_KEY].clone();
    let username = secret_text(&plan.auth_secret, USERNAME_KEY);
    let password = secret_text(&plan.auth_secret, PASSWORD_KEY);
    assert_eq!(username, ADMIN_USERNAME);

    let mut options = MqttOptions::new(CLIENT_ID, "127.0.0.1", mqtts_port);
    options.set_credentials(&username, &password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(&ca_bundle)),
    )));
    let (client, mut events) = AsyncClient::new(options, 10);
    wait_for(
        &mut events,
        "CONNACK",
        |event| matches!(event, Incoming::ConnAck(ack) if ack.code == ConnectReturnCode::Success),
    )
    .await;
    client
        .subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_for(&mut events, "SUBACK", |event| {
        matches!(event, Incoming::SubAck(_))
    })
    .await;
    client
        .publish(
            TOPIC,
            QoS::AtLeastOnce,
            false,
            "hello from the contract test",
        )
        .await
        .expect("publish");
    wait_for(&mut events, "the message back", |event| {
        matches!(event, Incoming::Publish(message)
            if message.topic == TOPIC && message.payload.as_ref() == b"hello from the contract test")
    })
    .await;

    // The broker logged the connection: MQTT 3.1.1 (mosquitto's `p2`), clean
    // session, the keep-alive asked for, and the admin user.
    let expected = format!("as {CLIENT_ID} (p2, c1, k30, u'{ADMIN_USERNAME}').");
    broker.wait_for_log(|line| {
        line.contains("New client connected from 127.0.0.1:") && line.contains(&expected)
    });

    // The admin API takes the token from the auth Secret, and only it.
    let token = secret_text(&plan.auth_secret, ADMIN_TOKEN_KEY);
    let (code, body) = http_get(http_port, "/api/v1/clients", Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(CLIENT_ID), "{body}");
    assert_eq!(http_get(http_port, "/api/v1/clients", Some("wrong")).0, 401);
    assert_eq!(http_get(http_port, "/readyz", None).0, 200);

    // Anonymous clients are refused on the plain listener.
    let (_anonymous, mut refused) =
        AsyncClient::new(MqttOptions::new("anonymous", "127.0.0.1", mqtt_port), 10);
    match tokio::time::timeout(PATIENCE, refused.poll()).await {
        Ok(Err(ConnectionError::ConnectionRefused(code))) => assert!(
            matches!(
                code,
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
            ),
            "{code:?}"
        ),
        other => panic!("expected the anonymous client to be refused, got {other:?}"),
    }
}

/// The operator rolls the pods (`kubemqtt.io/config-checksum`) for
/// exactly the `broker.toml` keys the broker cannot put in force while it
/// runs: every key of the files it renders for the examples, and of the
/// broker's defaults, is judged alike by both.
#[test]
fn the_operator_restarts_pods_for_exactly_the_keys_the_broker_cannot_reload() {
    use kubemqtt_broker::config::Config;
    use kubemqtt_operator::plan::configmap::CONFIG_FILE;

    fn keys(path: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        if !path.is_empty() {
            out.push(path.to_owned());
        }
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let child_path = match path {
                        "" => key.clone(),
                        _ => format!("{path}.{key}"),
                    };
                    keys(&child_path, child, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    keys(&format!("{path}[{i}]"), child, out);
                }
            }
            _ => {}
        }
    }

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = vec![String::new()];
    for example in [
        "broker.yaml",
        "broker-production.yaml",
        "broker-cluster.yaml",
    ] {
        let manifest = std::fs::read_to_string(root.join(example)).expect("the example reads");
        let operator = Operator::with_manifest(&manifest);
        files.push(operator.plan().config_map.data.as_ref().expect("data")[CONFIG_FILE].clone());
    }
    let mut all = Vec::new();
    for file in &files {
        let config = Config::from_toml_str(file, "rendered").expect("the broker reads it");
        keys(
            "",
            &serde_json::to_value(&config).expect("serializes"),
            &mut all,
        );
    }
    all.sort();
    all.dedup();
    let mut run_time = 0;
    for key in &all {
        let broker = kubemqtt_broker::reload::applies_at_run_time(key);
        let operator = kubemqtt_operator::plan::restart::applies_at_run_time(key);
        assert_eq!(operator, broker, "{key}: the broker reloads it: {broker}");
        run_time += usize::from(broker);
    }
    assert!(
        run_time > 10,
        "only {run_time} run-time keys among {}",
        all.len()
    );
    assert!(all.len() - run_time > 10, "{all:?}");
}
