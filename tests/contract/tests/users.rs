//! The contract of `MqttUser`s with the real broker.
//!
//! Users are planned by the operator's user planner (their credentials
//! Secrets), the broker by the broker planner with those users observed
//! (its credentials file), and the broker binary runs on the rendered files.
//! Changes then reach the running broker the way the operator sends them: a
//! new plan, pushed to the admin API by the operator's own `HttpPusher`.
//!
//! Checked: a device logs in with its Secret over TLS; its topic rules are
//! enforced; a rotation keeps the connected device connected while the old
//! and new passwords both work, and the old one fails after the grace
//! window; deleting a user disconnects its client and keeps it out; a
//! certificate user logs in with the certificate from its Secret and is
//! revoked the same way.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubemqtt_contract_tests::PodFiles;
use kubemqtt_operator::api::{MqttBroker, MqttUser, ROTATE_ANNOTATION};
use kubemqtt_operator::certs::CertifiedKeyPem;
use kubemqtt_operator::controller::push::{CredentialsPusher, HttpPusher, PushReply};
use kubemqtt_operator::plan::configmap::{CA_BUNDLE_KEY, CONFIG_FILE};
use kubemqtt_operator::plan::secrets::read_clients_ca;
use kubemqtt_operator::plan::user_secret::{plan_user, UserObserved};
use kubemqtt_operator::plan::{self, Observed, Plan, Settings, CONFIG_DIR};
use kubemqtt_operator::render::read_broker;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};

use common::*;

const MANIFEST: &str = "\
apiVersion: kubemqtt.io/v1alpha1
kind: MqttBroker
metadata:
  name: mq
  namespace: iot
spec: {}
";

/// The operator's side of the test: the broker, its users and their
/// Secrets as the controllers would have stored them.
struct Operator {
    broker: MqttBroker,
    observed: Observed,
    users: BTreeMap<String, MqttUser>,
    secrets: BTreeMap<String, Secret>,
    plan: Plan,
}

impl Operator {
    fn new() -> Operator {
        let broker = read_broker(MANIFEST, None).expect("the manifest reads");
        let observed = Observed {
            load_balancer_ingress: vec![LoadBalancerIngress {
                ip: Some("127.0.0.1".to_owned()),
                ..LoadBalancerIngress::default()
            }],
            ..Observed::default()
        };
        let plan = plan::plan(&broker, &observed, &Settings::default(), Timestamp::now())
            .expect("the broker plans");
        let mut operator = Operator {
            broker,
            observed,
            users: BTreeMap::new(),
            secrets: BTreeMap::new(),
            plan,
        };
        operator.keep_plan();
        operator
    }

    /// Stores what the last plan applied, as the next reconcile sees it.
    fn keep_plan(&mut self) {
        self.observed.ca_secret = self.plan.ca_secret.clone();
        self.observed.server_secret = self.plan.server_secret.clone();
        self.observed.auth_secret = Some(self.plan.auth_secret.clone());
        self.observed.clients_ca_secret = Some(self.plan.clients_ca_secret.clone());
    }

    fn trust_bundle(&self) -> String {
        self.plan.config_map.data.as_ref().expect("data")[CA_BUNDLE_KEY].clone()
    }

    fn clients_ca(&self) -> CertifiedKeyPem {
        read_clients_ca(Some(&self.plan.clients_ca_secret)).expect("the clients CA")
    }

    /// Creates or changes a user and runs the user planner at `at`.
    fn put_user(&mut self, name: &str, spec: serde_json::Value, at: Timestamp) {
        let mut user: MqttUser = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubemqtt.io/v1alpha1",
            "kind": "MqttUser",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a user");
        user.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("iot".to_owned()),
            uid: Some(format!("5e0c3a9d-0000-4000-8000-{:0>12}", name.len())),
            creation_timestamp: Some(Time("2025-01-01T00:00:00Z".parse().unwrap())),
            annotations: self
                .users
                .get(name)
                .and_then(|old| old.metadata.annotations.clone()),
            ..ObjectMeta::default()
        };
        self.users.insert(name.to_owned(), user);
        self.plan_user(name, at);
    }

    fn annotate(&mut self, name: &str, value: &str, at: Timestamp) {
        let user = self.users.get_mut(name).expect("the user");
        user.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ROTATE_ANNOTATION.to_owned(), value.to_owned());
        self.plan_user(name, at);
    }

    fn plan_user(&mut self, name: &str, at: Timestamp) {
        let user = self.users[name].clone();
        let siblings: Vec<MqttUser> = self.users.values().cloned().collect();
        let trust = self.trust_bundle();
        let ca = self.clients_ca();
        let observed = UserObserved {
            broker: Some(&self.broker),
            siblings: &siblings,
            secret: self.secrets.get(name),
            password_source: None,
            trust_bundle: Some(&trust),
            clients_ca: Some(&ca),
        };
        let plan = plan_user(&user, &observed, &Settings::default(), at).expect("the user plans");
        self.secrets.insert(name.to_owned(), plan.secret);
    }

    fn delete_user(&mut self, name: &str) {
        self.users.remove(name);
        // The Secret goes later, with the garbage collector.
    }

    /// The broker controller: plans the broker with its users.
    fn reconcile_broker(&mut self) -> &Plan {
        self.observed.users = self
            .users
            .iter()
            .map(|(name, user)| (user.clone(), self.secrets.get(name).cloned()))
            .collect();
        self.plan = plan::plan(
            &self.broker,
            &self.observed,
            &Settings::default(),
            Timestamp::now(),
        )
        .expect("the broker plans");
        self.keep_plan();
        &self.plan
    }

    fn secret(&self, user: &str, key: &str) -> String {
        secret_text(&self.secrets[user], key)
    }
}

/// The running broker and where to reach it.
struct Pod {
    broker: RunningBroker,
    mqtts_port: u16,
    http_port: u16,
    _root: tempfile::TempDir,
}

impl Pod {
    fn start(plan: &Plan) -> Pod {
        let root = tempfile::tempdir().expect("temporary directory");
        let pod = PodFiles::lay_out(plan, root.path()).expect("the files lay out");
        let (mqtt_port, mqtts_port, http_port) = (free_port(), free_port(), free_port());
        pod.localize(
            &format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            |listener| match listener {
                "mqtt" => mqtt_port,
                "mqtts" => mqtts_port,
                other => panic!("unexpected listener {other}"),
            },
            http_port,
        )
        .expect("the configuration localizes");
        Pod {
            broker: RunningBroker::start(&pod.args, mqtts_port),
            mqtts_port,
            http_port,
            _root: root,
        }
    }

    /// What the broker controller does after applying: push the
    /// credentials file with the admin token.
    async fn push(&self, plan: &Plan) -> PushReply {
        let url = format!("http://127.0.0.1:{}/api/v1/credentials", self.http_port);
        HttpPusher::default()
            .push(
                &url,
                &secret_text(&plan.auth_secret, "admin-token"),
                &secret_text(&plan.auth_secret, "credentials.toml"),
            )
            .await
            .expect("the broker takes the push")
    }

    fn options(&self, client_id: &str, tls: rustls::ClientConfig) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.mqtts_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        options
    }

    /// Connects `client_id` with a user name and password over TLS.
    async fn connect(
        &self,
        operator: &Operator,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(AsyncClient, EventLoop), ConnectionError> {
        let mut options = self.options(client_id, tls_config(&operator.trust_bundle()));
        options.set_credentials(username, password);
        connect(options).await
    }
}

/// Connects and waits for the CONNACK.
async fn connect(options: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(PATIENCE, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return Ok((client, events));
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => panic!("no CONNACK within {PATIENCE:?}"),
        }
    }
}

fn refused(result: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the client got in"),
    }
}

/// Subscribes and returns the SUBACK's code.
async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: &str,
) -> SubscribeReasonCode {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => {
                return *ack.return_codes.first().expect("a return code");
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("waiting for the SUBACK: {error}"),
            Err(_) => panic!("no SUBACK within {PATIENCE:?}"),
        }
    }
}

/// Publishes at QoS 1 from `from`, and waits until `to` receives it.
async fn relay(
    from: (&AsyncClient, &mut EventLoop),
    to: &mut EventLoop,
    topic: &str,
    payload: &str,
) {
    let (client, events) = from;
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_owned())
        .await
        .expect("publish");
    // Drive the publisher until its PUBACK, then the subscriber.
    wait_for(events, "PUBACK", |packet| {
        matches!(packet, Incoming::PubAck(_))
    })
    .await;
    wait_for(to, "the message", |packet| {
        matches!(packet, Incoming::Publish(message)
            if message.topic == topic && message.payload.as_ref() == payload.as_bytes())
    })
    .await;
}

/// Polls until the connection closes; panics if it stays open.
async fn expect_disconnected(events: &mut EventLoop) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => panic!("still connected after {PATIENCE:?}"),
        }
    }
}

#[tokio::test]
async fn users_connect_rotate_and_are_revoked_on_the_real_broker() {
    let mut operator = Operator::new();
    let now = Timestamp::now();
    operator.put_user(
        "device-1",
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "acl": [
                {"action": "publish", "topic": "devices/%u/#"},
                {"action": "subscribe", "topic": "commands/%u/#"},
            ],
            "rotation": {"graceMinutes": 1},
        }),
        now,
    );
    operator.put_user(
        "backend",
        serde_json::json!({"brokerRef": {"name": "mq"}}),
        now,
    );
    let pod = Pod::start(operator.reconcile_broker());

    // The backend (no rules: every topic) and the device log in with what
    // their Secrets hold.
    let (backend, mut backend_events) = pod
        .connect(
            &operator,
            "backend",
            "backend",
            &operator.secret("backend", "password"),
        )
        .await
        .expect("the backend logs in");
    assert_eq!(
        subscribe(&backend, &mut backend_events, "devices/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let old_password = operator.secret("device-1", "password");
    assert_eq!(operator.secret("device-1", "username"), "device-1");
    let (device, mut device_events) = pod
        .connect(&operator, "device-1-client", "device-1", &old_password)
        .await
        .expect("the device logs in");

    // Its rules: its own command topics yes, everybody's telemetry no.
    assert_eq!(
        subscribe(&device, &mut device_events, "commands/device-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        subscribe(&device, &mut device_events, "devices/#").await,
        SubscribeReasonCode::Failure
    );
    relay(
        (&device, &mut device_events),
        &mut backend_events,
        "devices/device-1/temp",
        "21.5",
    )
    .await;
    relay(
        (&backend, &mut backend_events),
        &mut device_events,
        "commands/device-1/led",
        "on",
    )
    .await;

    // Rotation, pushed: both passwords work, the device stays connected.
    // The rotation is dated so that the one-minute window ends in 3 s.
    let rotated_at = Timestamp::now() - SignedDuration::from_secs(57);
    operator.annotate("device-1", "rotate-1", rotated_at);
    let new_password = operator.secret("device-1", "password");
    assert_ne!(new_password, old_password);
    let plan = operator.reconcile_broker().clone();
    assert_eq!(pod.push(&plan).await, PushReply::Applied);
    let (_new, _) = pod
        .connect(&operator, "device-1-new", "device-1", &new_password)
        .await
        .expect("the new password works");
    let (_old, _) = pod
        .connect(&operator, "device-1-old", "device-1", &old_password)
        .await
        .expect("the old password works during the grace window");
    relay(
        (&device, &mut device_events),
        &mut backend_events,
        "devices/device-1/temp",
        "still connected",
    )
    .await;

    // After the window the old password is refused; the device that logged
    // in with it is still connected.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let code = refused(
        pod.connect(&operator, "device-1-late", "device-1", &old_password)
            .await,
    );
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    relay(
        (&device, &mut device_events),
        &mut backend_events,
        "devices/device-1/temp",
        "after the window",
    )
    .await;

    // Deleting the user disconnects it and keeps it out.
    operator.delete_user("device-1");
    let plan = operator.reconcile_broker().clone();
    assert_eq!(pod.push(&plan).await, PushReply::Applied);
    expect_disconnected(&mut device_events).await;
    let code = refused(
        pod.connect(&operator, "device-1-again", "device-1", &new_password)
            .await,
    );
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    pod.broker
        .wait_for_log(|line| line.contains("user device-1 was removed"));

    // The backend was never disturbed.
    backend
        .publish("devices/x", QoS::AtLeastOnce, false, "ping")
        .await
        .expect("publish");
    wait_for(
        &mut backend_events,
        "its own message",
        |packet| matches!(packet, Incoming::Publish(message) if message.topic == "devices/x"),
    )
    .await;
}

#[tokio::test]
async fn certificate_users_log_in_with_their_secret_and_are_revoked() {
    let mut operator = Operator::new();
    operator.put_user(
        "sensor",
        serde_json::json!({"brokerRef": {"name": "mq"}, "authentication": {"type": "tls"}}),
        Timestamp::now(),
    );
    let pod = Pod::start(operator.reconcile_broker());
    let tls = tls_config_with_certificate(
        &operator.secret("sensor", "ca.crt"),
        &operator.secret("sensor", "tls.crt"),
        &operator.secret("sensor", "tls.key"),
    );

    // No password: the certificate names the user.
    let (sensor, mut events) = connect(pod.options("sensor-1", tls.clone()))
        .await
        .expect("the certificate logs in");
    assert_eq!(
        subscribe(&sensor, &mut events, "anything/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    pod.broker
        .wait_for_log(|line| line.contains("as sensor-1") && line.contains("u'sensor'"));

    // A client with neither certificate nor password is refused.
    let code = refused(connect(pod.options("nobody", tls_config(&operator.trust_bundle()))).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);

    // Deleted: the still valid certificate no longer gets in.
    operator.delete_user("sensor");
    let plan = operator.reconcile_broker().clone();
    assert_eq!(pod.push(&plan).await, PushReply::Applied);
    expect_disconnected(&mut events).await;
    let code = refused(connect(pod.options("sensor-2", tls)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}
