//! The controller against a fake API server (see [`super::fixtures`]):
//! each test drives one or more reconciles and asserts the requests, in
//! order, and what they carried.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::fixtures::{ApiServer, Recorded, RecordingPusher};
use super::*;
use crate::api::{MqttBrokerStatus, MqttUser, MqttUserStatus};
use crate::certs::{self, San};
use crate::plan::secrets::{CA_CERT_KEY, TLS_CERT_KEY};
use crate::plan::Observed;

const BROKER: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq";
const BROKER_STATUS: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq/status";
const CONFIG_MAP: &str = "/api/v1/namespaces/iot/configmaps/mq-config";
const CA: &str = "/api/v1/namespaces/iot/secrets/mq-ca";
const TLS: &str = "/api/v1/namespaces/iot/secrets/mq-tls";
const AUTH: &str = "/api/v1/namespaces/iot/secrets/mq-auth";
const CLIENTS_CA: &str = "/api/v1/namespaces/iot/secrets/mq-clients-ca";
const USERS: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttusers";
const SECRETS: &str = "/api/v1/namespaces/iot/secrets";
const HEADLESS: &str = "/api/v1/namespaces/iot/services/mq-headless";
const SERVICE: &str = "/api/v1/namespaces/iot/services/mq";
const STATEFUL_SET: &str = "/apis/apps/v1/namespaces/iot/statefulsets/mq";
const PDB: &str = "/apis/policy/v1/namespaces/iot/poddisruptionbudgets/mq";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/iot/events";
/// Every object of a broker, in the order they are read and applied.
const OBJECTS: [&str; 9] = [
    CONFIG_MAP,
    CA,
    TLS,
    CLIENTS_CA,
    AUTH,
    HEADLESS,
    SERVICE,
    STATEFUL_SET,
    PDB,
];
const UID: &str = "6c1d2b9e-0f4a-4c57-9d1e-3a2b7c8d9e0f";

/// One broker `mq` in namespace `iot`, the fake API server, and the
/// controller's context.
struct Test {
    ctx: Arc<Context>,
    server: ApiServer,
    pushes: Arc<RecordingPusher>,
}

impl Test {
    /// A broker with `spec` and `annotations`, as just created.
    fn new(spec: Value, annotations: Value) -> Test {
        let (client, server) = ApiServer::start();
        server.put(
            BROKER,
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1",
                "kind": "MqttBroker",
                "metadata": {
                    "name": "mq",
                    "namespace": "iot",
                    "uid": UID,
                    "generation": 1,
                    "annotations": annotations,
                },
                "spec": spec,
            }),
        );
        let metrics = Metrics::new().expect("metrics");
        let pushes = Arc::new(RecordingPusher::default());
        let ctx = Arc::new(
            Context::new(client, Settings::default(), metrics, None).with_pusher(pushes.clone()),
        );
        Test {
            ctx,
            server,
            pushes,
        }
    }

    fn default() -> Test {
        Test::new(json!({}), json!({}))
    }

    /// Reconciles the broker as stored (with the status the last
    /// reconcile wrote, as the watch would deliver it).
    async fn reconcile(&self) -> Result<Action, Error> {
        reconcile(Arc::new(self.server.broker(BROKER)), self.ctx.clone()).await
    }

    /// Changes the stored broker as a user would: a new generation.
    fn edit(&self, change: impl FnOnce(&mut Value)) {
        let mut broker = self.server.get(BROKER).expect("broker");
        change(&mut broker);
        let generation = broker["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        broker["metadata"]["generation"] = json!(generation);
        self.server.put(BROKER, broker);
    }

    /// The StatefulSet's pods as the cluster reports them: `ready` of one
    /// ready, on the current revision of its current generation.
    fn pods_ready(&self, ready: i32) {
        let sts = self.server.get(STATEFUL_SET).expect("statefulset");
        let generation = sts["metadata"]["generation"].clone();
        self.server.set_status(
            STATEFUL_SET,
            json!({
                "observedGeneration": generation,
                "replicas": 1,
                "readyReplicas": ready,
                "updatedReplicas": 1,
                "currentRevision": "mq-1",
                "updateRevision": "mq-1",
            }),
        );
    }

    fn metrics(&self) -> String {
        self.ctx.metrics.render()
    }
}

/// `METHOD path` of every request.
fn lines(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(Recorded::line).collect()
}

/// The reads of every reconcile: each object, then the broker's users and
/// their Secrets.
fn reads() -> Vec<String> {
    let mut reads: Vec<String> = OBJECTS.iter().map(|p| format!("GET {p}")).collect();
    reads.push(format!("GET {USERS}"));
    reads.push(format!("GET {SECRETS}"));
    reads
}

/// The requests of a reconcile that applies: read every object, apply
/// them all as a dry run, then for real; then what follows.
fn full_reconcile(then: &[String]) -> Vec<String> {
    let mut expected = reads();
    expected.extend(OBJECTS.iter().map(|p| format!("PATCH {p} (dry run)")));
    expected.extend(OBJECTS.iter().map(|p| format!("PATCH {p}")));
    expected.extend(then.iter().cloned());
    expected
}

fn status_patch() -> String {
    format!("PATCH {BROKER_STATUS}")
}

fn event_post() -> String {
    format!("POST {EVENTS}")
}

/// The status written by the status request among `requests`.
fn written_status(requests: &[Recorded]) -> MqttBrokerStatus {
    let request = requests
        .iter()
        .find(|r| r.path == BROKER_STATUS)
        .expect("a status write");
    assert_eq!(request.body["apiVersion"], "kubemqtt.io/v1alpha1");
    assert_eq!(request.body["kind"], "MqttBroker");
    assert!(request.query.contains("fieldManager=kubemqtt-operator"));
    serde_json::from_value(request.body["status"].clone()).expect("a status")
}

/// `(status, reason)` of condition `type_`.
fn condition(status: &MqttBrokerStatus, type_: &str) -> (String, String) {
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (condition.status.clone(), condition.reason.clone())
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// `(type, reason, note)` of every Event posted.
fn events(requests: &[Recorded]) -> Vec<(String, String, String)> {
    requests
        .iter()
        .filter(|r| r.path.starts_with(EVENTS))
        .map(|r| {
            assert_eq!(r.body["regarding"]["name"], "mq");
            assert_eq!(r.body["regarding"]["kind"], "MqttBroker");
            assert_eq!(r.body["reportingController"], "kubemqtt-operator");
            let text = |key: &str| r.body[key].as_str().unwrap_or_default().to_owned();
            (text("type"), text("reason"), text("note"))
        })
        .collect()
}

fn event(type_: &str, reason: &str, note: &str) -> (String, String, String) {
    (type_.to_owned(), reason.to_owned(), note.to_owned())
}

/// The body of the real (not dry-run) apply of `path`.
fn applied(requests: &[Recorded], path: &str) -> Value {
    requests
        .iter()
        .find(|r| r.method == Method::PATCH && r.path == path && !r.is_dry_run())
        .unwrap_or_else(|| panic!("no apply of {path}"))
        .body
        .clone()
}

/// The PEM text of `key` in a Secret's JSON form.
fn secret_text(secret: &Value, key: &str) -> String {
    let secret: Secret = serde_json::from_value(secret.clone()).expect("a Secret");
    let bytes = secret.data.unwrap_or_default().remove(key).expect("key");
    String::from_utf8(bytes.0).expect("PEM")
}

/// The requeue of a healthy broker whose certificate is far from renewal.
fn an_hour() -> Action {
    Action::requeue(MAX_REQUEUE)
}

#[tokio::test]
async fn first_reconcile_creates_everything_and_reports() {
    let test = Test::default();
    let action = test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        full_reconcile(&[event_post(), event_post(), event_post(), status_patch()])
    );
    // Every object: server-side apply, one field manager, forced, owned.
    for request in requests.iter().filter(|r| r.method == Method::PATCH) {
        assert!(
            request.query.contains("fieldManager=kubemqtt-operator")
                && request.query.contains("force=true"),
            "{}: {}",
            request.path,
            request.query
        );
        if request.path != BROKER_STATUS {
            let owner = &request.body["metadata"]["ownerReferences"][0];
            assert_eq!(owner["uid"], UID, "{}", request.path);
            assert_eq!(owner["controller"], true, "{}", request.path);
        }
    }

    let status = written_status(&requests);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(condition(&status, "Ready"), pair("False", "PodsNotReady"));
    assert_eq!(
        condition(&status, "Available"),
        pair("False", "NoPodsReady")
    );
    assert_eq!(
        condition(&status, "Progressing"),
        pair("True", "RollingOut")
    );
    assert_eq!(condition(&status, "Degraded"), pair("False", "Reconciled"));
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("True", "Issued")
    );
    assert_eq!(status.endpoint.as_deref(), Some("mq.iot.svc"));
    let tls = test.server.get(TLS).expect("stored certificate");
    let issued = certs::inspect(&secret_text(&tls, TLS_CERT_KEY)).expect("a certificate");
    assert_eq!(
        status.certificate.expect("certificate").not_after.0,
        issued.not_after
    );

    assert_eq!(
        events(&requests),
        [
            event(
                "Normal",
                "Created",
                "created ConfigMap mq-config, Secret mq-ca, Secret mq-tls, Secret mq-clients-ca, \
                 Secret mq-auth, Service mq-headless, Service mq, StatefulSet mq, PodDisruptionBudget mq"
            ),
            event(
                "Normal",
                "CertificateIssued",
                "issued the CA certificate: no certificate existed"
            ),
            event(
                "Normal",
                "CertificateIssued",
                "issued the server certificate: no certificate existed"
            ),
        ]
    );
    // The certificate is good for a year: come back within the hour.
    assert_eq!(action, an_hour());
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"applied\"} 1"));

    // Nothing changed since: the objects are applied again, nothing else.
    test.reconcile().await.expect("reconciles again");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), full_reconcile(&[]));
    for path in [CA, TLS, AUTH] {
        assert_eq!(
            applied(&requests, path)["data"],
            test.server.get(path).expect("stored")["data"],
            "{path} was kept"
        );
    }
}

#[tokio::test]
async fn an_update_rolls_the_pods_and_says_what_changed() {
    let test = Test::default();
    test.reconcile().await.expect("creates");
    test.server.take_requests();
    test.pods_ready(1);
    test.reconcile().await.expect("sees the pod");
    let ready = written_status(&test.server.take_requests());
    assert_eq!(condition(&ready, "Ready"), pair("True", "Ready"));
    assert_eq!(
        condition(&ready, "Progressing"),
        pair("False", "RolloutComplete")
    );
    let checksum = |sts: &Value| {
        sts["spec"]["template"]["metadata"]["annotations"]["kubemqtt.io/config-checksum"].clone()
    };
    let before = checksum(&test.server.get(STATEFUL_SET).expect("statefulset"));

    test.edit(|broker| broker["spec"]["logging"] = json!({"level": "debug"}));
    let action = test.reconcile().await.expect("updates");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        full_reconcile(&[event_post(), status_patch()])
    );
    let config = applied(&requests, CONFIG_MAP);
    let broker_toml = config["data"]["broker.toml"].as_str().expect("broker.toml");
    assert!(broker_toml.contains("level = \"debug\""), "{broker_toml}");
    assert_ne!(checksum(&applied(&requests, STATEFUL_SET)), before);
    assert_eq!(
        events(&requests),
        [event(
            "Normal",
            "Updated",
            "updated ConfigMap mq-config, StatefulSet mq"
        )]
    );
    let status = written_status(&requests);
    assert_eq!(status.observed_generation, Some(2));
    // The pod still serves on the old revision while the new one rolls.
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(
        condition(&status, "Progressing"),
        pair("True", "RollingOut")
    );
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn a_load_balancer_address_reissues_the_certificate() {
    let test = Test::default();
    test.reconcile().await.expect("creates");
    test.server.take_requests();
    let ca = secret_text(&test.server.get(CA).expect("CA"), CA_CERT_KEY);

    // The cloud's load balancer controller gives the Service an address.
    test.server.set_status(
        SERVICE,
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
    );
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        full_reconcile(&[event_post(), event_post(), status_patch()])
    );
    let certificate = secret_text(&applied(&requests, TLS), TLS_CERT_KEY);
    let info = certs::inspect(&certificate).expect("a certificate");
    assert!(info.sans.contains(&San::Ip("203.0.113.7".parse().unwrap())));
    assert!(info.sans.contains(&San::Dns("mq.iot.svc".to_owned())));
    assert!(certs::is_signed_by(&certificate, &ca), "same CA");
    assert_eq!(
        events(&requests),
        [
            event("Normal", "Updated", "updated Secret mq-tls"),
            event(
                "Normal",
                "CertificateRenewed",
                "issued the server certificate: the names to cover changed"
            ),
        ]
    );
    let status = written_status(&requests);
    assert_eq!(status.endpoint.as_deref(), Some("203.0.113.7"));
    let endpoints = status.endpoints.expect("endpoints");
    assert_eq!(endpoints.internal, "mq.iot.svc");
    assert_eq!(endpoints.external.as_deref(), Some("203.0.113.7"));
    assert_eq!(
        status
            .certificate
            .as_ref()
            .expect("certificate")
            .not_after
            .0,
        info.not_after
    );
}

#[tokio::test]
async fn an_expiring_certificate_is_renewed() {
    let test = Test::default();
    // The broker's objects as planned 340 days ago: the server
    // certificate (valid 365 days, renewed 30 days before) is due.
    let long_ago = Timestamp::now() - SignedDuration::from_hours(24 * 340);
    let broker = test.server.broker(BROKER);
    let old = plan::plan(
        &broker,
        &Observed::default(),
        &Settings::default(),
        long_ago,
    )
    .expect("plans");
    let objects = old.objects().expect("objects");
    for (path, object) in OBJECTS.iter().zip(objects) {
        test.server.put(path, object);
    }
    let old_certificate = secret_text(&test.server.get(TLS).expect("tls"), TLS_CERT_KEY);
    let old_ca = secret_text(&test.server.get(CA).expect("ca"), CA_CERT_KEY);

    let action = test.reconcile().await.expect("renews");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        full_reconcile(&[event_post(), event_post(), status_patch()])
    );
    let renewed = secret_text(&applied(&requests, TLS), TLS_CERT_KEY);
    assert_ne!(renewed, old_certificate);
    assert!(certs::is_signed_by(&renewed, &old_ca), "the CA is kept");
    let info = certs::inspect(&renewed).expect("a certificate");
    assert!(info.not_after > Timestamp::now() + SignedDuration::from_hours(24 * 364));
    assert_eq!(
        events(&requests),
        [
            event("Normal", "Updated", "updated Secret mq-tls"),
            event(
                "Normal",
                "CertificateRenewed",
                "issued the server certificate: the certificate was about to expire"
            ),
        ]
    );
    let status = written_status(&requests);
    assert_eq!(
        status
            .certificate
            .as_ref()
            .expect("certificate")
            .not_after
            .0,
        info.not_after
    );
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("True", "Issued")
    );
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn an_api_error_is_reported_and_retried_with_backoff() {
    let test = Test::default();
    test.server
        .fail_once(Method::PATCH, TLS, true, 503, "ServiceUnavailable");
    let error = test.reconcile().await.expect_err("fails");
    let requests = test.server.take_requests();

    assert!(
        matches!(&error, Error::Apply(ApplyError::Api { object, .. }) if object.name == "mq-tls"),
        "{error}"
    );
    // Stopped during the dry run: nothing was written but the report.
    let mut expected = reads();
    expected.extend([CONFIG_MAP, CA, TLS].map(|p| format!("PATCH {p} (dry run)")));
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected);
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "ApplyFailed"));
    assert_eq!(condition(&status, "Ready"), pair("False", "ApplyFailed"));
    let events = events(&requests);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "ApplyFailed")
    );
    assert!(
        events[0].2.starts_with("cannot apply Secret mq-tls:"),
        "{}",
        events[0].2
    );

    // Retries back off while it keeps failing, and start over after a
    // success.
    let broker = Arc::new(test.server.broker(BROKER));
    let retry = |ctx: &Arc<Context>| error_policy(broker.clone(), &error, ctx.clone());
    assert_eq!(retry(&test.ctx), Action::requeue(Duration::from_secs(5)));
    assert_eq!(retry(&test.ctx), Action::requeue(Duration::from_secs(10)));
    test.reconcile().await.expect("the API is back");
    let status = written_status(&test.server.take_requests());
    assert_eq!(condition(&status, "Degraded"), pair("False", "Reconciled"));
    assert_eq!(retry(&test.ctx), Action::requeue(Duration::from_secs(5)));

    let metrics = test.metrics();
    for line in [
        "kubemqtt_operator_reconcile_errors_total{stage=\"apply\"} 1",
        "kubemqtt_operator_reconciles_total{result=\"error\"} 1",
        "kubemqtt_operator_reconciles_total{result=\"applied\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing() {
    let test = Test::new(json!({"listeners": {"mqtts": {"port": 1883}}}), json!({}));
    let action = test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();

    let mut expected = reads();
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected);
    let message = "spec.listeners.mqtts.port: port 1883 is already used by listeners.mqtt";
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "InvalidSpec"));
    assert_eq!(condition(&status, "Ready"), pair("False", "InvalidSpec"));
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.message == message));
    assert_eq!(
        events(&requests),
        [event(
            "Warning",
            "InvalidSpec",
            &format!("nothing was applied: {message}")
        )]
    );
    assert_eq!(action, Action::requeue(INVALID_REQUEUE));

    // Still invalid: read again, but the same status is not rewritten and
    // the same Warning is not repeated.
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), reads());
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"invalid\"} 2"));

    // Another mistake is a new Warning.
    test.edit(|broker| broker["spec"]["listeners"] = json!({"mqtt": {"port": 8080}}));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), expected);
    assert_eq!(
        events(&requests),
        [event(
            "Warning",
            "InvalidSpec",
            "nothing was applied: spec.listeners.mqtt.port: port 8080 is the broker's HTTP port"
        )]
    );
}

#[tokio::test]
async fn an_object_the_api_server_refuses_applies_nothing() {
    let test = Test::default();
    test.server
        .fail_once(Method::PATCH, STATEFUL_SET, true, 422, "Invalid");
    let action = test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();

    let mut expected = reads();
    expected.extend(OBJECTS[..8].iter().map(|p| format!("PATCH {p} (dry run)")));
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected);
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "Rejected"));
    let events = events(&requests);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "Rejected")
    );
    assert_eq!(action, Action::requeue(INVALID_REQUEUE));
    for path in OBJECTS {
        assert_eq!(test.server.get(path), None, "{path} was not created");
    }
}

#[tokio::test]
async fn a_paused_broker_is_left_alone() {
    let test = Test::new(json!({}), json!({"kubemqtt.io/paused": "true"}));
    let action = test.reconcile().await.expect("pauses");
    let requests = test.server.take_requests();

    assert_eq!(lines(&requests), [status_patch(), event_post()]);
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Progressing"), pair("False", "Paused"));
    assert_eq!(
        events(&requests),
        [event(
            "Normal",
            "Paused",
            "kubemqtt.io/paused is \"true\": the operator stops changing this broker"
        )]
    );
    assert_eq!(action, Action::await_change());

    // Still paused: not a single request.
    test.reconcile().await.expect("stays paused");
    assert_eq!(lines(&test.server.take_requests()), Vec::<String>::new());
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"paused\"} 2"));

    // Resumed: back to work.
    test.edit(|broker| broker["metadata"]["annotations"] = json!({}));
    test.reconcile().await.expect("resumes");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        full_reconcile(&[event_post(), event_post(), event_post(), status_patch()])
    );
}

#[tokio::test]
async fn a_broker_being_deleted_is_left_to_the_garbage_collector() {
    let test = Test::default();
    test.edit(|broker| broker["metadata"]["deletionTimestamp"] = json!("2025-06-01T12:00:00Z"));
    let action = test.reconcile().await.expect("does nothing");
    assert_eq!(lines(&test.server.take_requests()), Vec::<String>::new());
    assert_eq!(action, Action::await_change());
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let seconds: Vec<u64> = [1, 2, 3, 4, 6, 7, 100, u32::MAX]
        .into_iter()
        .map(|failures| backoff(failures).as_secs())
        .collect();
    assert_eq!(seconds, [5, 10, 20, 40, 160, 300, 300, 300]);
}

// ----- MqttUser ------------------------------------------------------------

const USER_SECRET: &str = "/api/v1/namespaces/iot/secrets/device-1-mqtt-credentials";

fn user_path(name: &str) -> String {
    format!("{USERS}/{name}")
}

impl Test {
    /// A broker `mq` that has been reconciled once (its objects exist).
    async fn with_broker() -> Test {
        let test = Test::default();
        test.reconcile().await.expect("broker reconciles");
        test.server.take_requests();
        test.pushes.take();
        test
    }

    /// Stores an `MqttUser` as a user would create it.
    fn put_user(&self, name: &str, spec: Value, created: &str) {
        self.server.put(
            &user_path(name),
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1",
                "kind": "MqttUser",
                "metadata": {
                    "name": name,
                    "namespace": "iot",
                    "uid": format!("9e1c7f4a-0000-4000-8000-{:0>12}", name.len()),
                    "generation": 1,
                    "creationTimestamp": created,
                },
                "spec": spec,
            }),
        );
    }

    fn stored_user(&self, name: &str) -> MqttUser {
        serde_json::from_value(self.server.get(&user_path(name)).expect("stored user"))
            .expect("a user")
    }

    async fn reconcile_user(&self, name: &str) -> Result<Action, Error> {
        user::reconcile(Arc::new(self.stored_user(name)), self.ctx.clone()).await
    }

    /// The credentials file in the stored auth Secret.
    fn credentials_file(&self) -> String {
        secret_text(
            &self.server.get(AUTH).expect("auth secret"),
            "credentials.toml",
        )
    }
}

/// `(type, reason)` of every Event posted about MqttUser `name`.
fn user_events(requests: &[Recorded], name: &str) -> Vec<(String, String)> {
    requests
        .iter()
        .filter(|r| r.path.starts_with(EVENTS))
        .map(|r| {
            assert_eq!(r.body["regarding"]["kind"], "MqttUser");
            assert_eq!(r.body["regarding"]["name"], name);
            let text = |key: &str| r.body[key].as_str().unwrap_or_default().to_owned();
            (text("type"), text("reason"))
        })
        .collect()
}

/// The user status written among `requests`.
fn written_user_status(requests: &[Recorded], name: &str) -> MqttUserStatus {
    let path = format!("{}/status", user_path(name));
    let request = requests
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no status write for {name}"));
    serde_json::from_value(request.body["status"].clone()).expect("a status")
}

fn user_condition(status: &MqttUserStatus, type_: &str) -> (String, String) {
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (condition.status.clone(), condition.reason.clone())
}

/// Whether the broker, loading `file`, lets `user` in with `password`.
fn broker_accepts(file: &str, user: &str, password: &str) -> bool {
    let text = kubemqtt_broker::auth::AuthText {
        text: file.to_owned(),
        origin: "test".to_owned(),
    };
    let (authenticator, _) =
        kubemqtt_broker::auth::build(None, Some(&text), None).expect("the broker loads it");
    authenticator
        .authenticate(user, password.as_bytes(), std::time::SystemTime::now())
        .is_ok()
}

#[tokio::test]
async fn a_new_user_gets_its_secret_and_reaches_the_broker_by_push() {
    let test = Test::with_broker().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}, "acl": [{"action": "publish", "topic": "devices/%u/#"}]}),
        "2025-01-01T00:00:00Z",
    );

    let action = test.reconcile_user("device-1").await.expect("reconciles");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        [
            format!("GET {BROKER}"),
            format!("GET {USER_SECRET}"),
            format!("GET {USERS}"),
            format!("GET {CONFIG_MAP}"),
            format!("PATCH {USER_SECRET} (dry run)"),
            format!("PATCH {USER_SECRET}"),
            event_post(),
            format!("PATCH {}/status", user_path("device-1")),
        ]
    );
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "PasswordCreated".to_owned())]
    );
    let status = written_user_status(&requests, "device-1");
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("True", "CredentialsReady")
    );
    assert_eq!(
        user_condition(&status, "Rotating"),
        pair("False", "NoPreviousPassword")
    );
    assert_eq!(status.username.as_deref(), Some("device-1"));
    assert_eq!(
        status.secret_name.as_deref(),
        Some("device-1-mqtt-credentials")
    );
    assert!(status.password_rotated_at.is_some());
    assert_eq!(action, Action::requeue(MAX_REQUEUE));
    let secret = test.server.get(USER_SECRET).expect("user secret");
    let password = secret_text(&secret, "password");
    let config_map = test.server.get(CONFIG_MAP).expect("config map");
    assert_eq!(
        secret_text(&secret, "ca.crt"),
        config_map["data"]["ca.crt"].as_str().expect("CA bundle"),
        "clients verify the broker with its CA"
    );

    // The broker controller puts it in the credentials file and pushes it.
    test.reconcile().await.expect("broker reconciles");
    let file = test.credentials_file();
    assert!(broker_accepts(&file, "device-1", &password));
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1);
    assert_eq!(
        pushes[0].url,
        "http://mq-0.mq-headless.iot.svc.cluster.local:8080/api/v1/credentials"
    );
    assert_eq!(pushes[0].body, file);
    assert_eq!(
        pushes[0].token,
        secret_text(&test.server.get(AUTH).unwrap(), "admin-token")
    );
    // The broker's first reconcile pushed its admin-only file too.
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_credential_pushes_total{result=\"ok\"} 2"));

    // Nothing changed: nothing is pushed again.
    test.reconcile().await.expect("broker reconciles");
    assert!(test.pushes.take().is_empty());
}

#[tokio::test]
async fn rotation_keeps_the_old_password_for_the_grace_window() {
    let test = Test::with_broker().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}, "rotation": {"graceMinutes": 5}}),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("device-1").await.expect("reconciles");
    let old = secret_text(&test.server.get(USER_SECRET).unwrap(), "password");
    test.server.take_requests();

    let mut user = test.server.get(&user_path("device-1")).unwrap();
    user["metadata"]["annotations"] = json!({"kubemqtt.io/rotate": "2025-06-01"});
    test.server.put(&user_path("device-1"), user);
    let action = test.reconcile_user("device-1").await.expect("rotates");
    let requests = test.server.take_requests();
    let new = secret_text(&test.server.get(USER_SECRET).unwrap(), "password");
    assert_ne!(new, old);
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "PasswordRotated".to_owned())]
    );
    let status = written_user_status(&requests, "device-1");
    assert_eq!(
        user_condition(&status, "Rotating"),
        pair("True", "GraceWindowOpen")
    );
    let until = status.previous_password_valid_until.expect("window end").0;
    let left = until.duration_since(Timestamp::now());
    assert!(left > SignedDuration::from_secs(290) && left <= SignedDuration::from_mins(5));
    assert_ne!(
        action,
        Action::requeue(MAX_REQUEUE),
        "must come back when the window closes"
    );

    test.reconcile().await.expect("broker reconciles");
    let file = test.credentials_file();
    assert!(broker_accepts(&file, "device-1", &new));
    assert!(
        broker_accepts(&file, "device-1", &old),
        "during the grace window"
    );
    assert!(file.contains("not_after"));
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1, "the rotation is pushed");
}

#[tokio::test]
async fn a_taken_user_name_is_refused_and_the_holder_is_unaffected() {
    let test = Test::with_broker().await;
    test.put_user(
        "first",
        json!({"brokerRef": {"name": "mq"}, "username": "dev"}),
        "2025-01-01T00:00:00Z",
    );
    test.put_user(
        "second",
        json!({"brokerRef": {"name": "mq"}, "username": "dev"}),
        "2025-02-01T00:00:00Z",
    );
    test.reconcile_user("first").await.expect("reconciles");
    test.server.take_requests();

    let action = test.reconcile_user("second").await.expect("reports");
    let requests = test.server.take_requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.method == Method::PATCH && r.path.contains("/secrets/")),
        "nothing applied: {:?}",
        lines(&requests)
    );
    let status = written_user_status(&requests, "second");
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("False", "UsernameConflict")
    );
    assert_eq!(
        user_events(&requests, "second"),
        [("Warning".to_owned(), "UsernameConflict".to_owned())]
    );
    assert_eq!(action, Action::requeue(user::REFUSED_REQUEUE));
    assert!(status.conditions[0].message.contains("MqttUser `first`"));

    let first_password = secret_text(
        &test
            .server
            .get("/api/v1/namespaces/iot/secrets/first-mqtt-credentials")
            .unwrap(),
        "password",
    );
    test.reconcile().await.expect("broker reconciles");
    assert!(broker_accepts(
        &test.credentials_file(),
        "dev",
        &first_password
    ));
}

#[tokio::test]
async fn an_unknown_broker_is_reported() {
    let test = Test::with_broker().await;
    test.put_user(
        "lost",
        json!({"brokerRef": {"name": "nope"}}),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("lost").await.expect("reports");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        [
            "GET /apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/nope".to_owned(),
            "GET /api/v1/namespaces/iot/secrets/lost-mqtt-credentials".to_owned(),
            format!("PATCH {}/status", user_path("lost")),
            event_post(),
        ]
    );
    let status = written_user_status(&requests, "lost");
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("False", "BrokerNotFound")
    );
}

#[tokio::test]
async fn a_deleted_user_is_revoked_and_unreachable_pods_are_retried() {
    let test = Test::with_broker().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}}),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("device-1").await.expect("reconciles");
    let password = secret_text(&test.server.get(USER_SECRET).unwrap(), "password");
    test.reconcile().await.expect("broker reconciles");
    assert!(broker_accepts(
        &test.credentials_file(),
        "device-1",
        &password
    ));
    test.pushes.take();

    // Deleted (its Secret lingers until the garbage collector runs), while
    // the pod cannot be reached.
    test.server.remove(&user_path("device-1"));
    test.pushes
        .unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("broker reconciles");
    assert!(!broker_accepts(
        &test.credentials_file(),
        "device-1",
        &password
    ));
    assert_eq!(test.pushes.take().len(), 1);
    assert_eq!(action, Action::requeue(PUSH_RETRY));
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_credential_pushes_total{result=\"unreachable\"} 1"));

    // The pod is back: the same revision is pushed again.
    test.pushes
        .unreachable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("broker reconciles");
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1);
    assert!(!pushes[0].body.contains("device-1"));
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn a_change_of_the_referenced_secret_rotates_and_the_window_closes() {
    let test = Test::with_broker().await;
    let source = "/api/v1/namespaces/iot/secrets/app-password";
    let put_source = |password: &str| {
        let secret = Secret {
            data: Some(std::collections::BTreeMap::from([(
                "pw".to_owned(),
                k8s_openapi::ByteString(password.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        let mut object = serde_json::to_value(secret).unwrap();
        object["metadata"] = json!({"name": "app-password", "namespace": "iot"});
        test.server.put(source, object);
    };
    put_source("first-password");
    test.put_user(
        "device-1",
        json!({
            "brokerRef": {"name": "mq"},
            "authentication": {"password": {"valueFrom": {"secretKeyRef": {"name": "app-password", "key": "pw"}}}},
        }),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("device-1").await.expect("reconciles");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("GET {source}")));
    assert_eq!(
        secret_text(&test.server.get(USER_SECRET).unwrap(), "password"),
        "first-password"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.method == Method::PATCH && r.path == source),
        "the team's Secret is only read"
    );

    put_source("second-password");
    test.reconcile_user("device-1").await.expect("rotates");
    let requests = test.server.take_requests();
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "PasswordRotated".to_owned())]
    );
    let stored = test.server.get(USER_SECRET).unwrap();
    assert_eq!(secret_text(&stored, "password"), "second-password");

    // The grace window has passed (as if an hour went by).
    let mut expired = stored.clone();
    expired["metadata"]["annotations"]["kubemqtt.io/previous-password-valid-until"] =
        json!("2025-01-01T00:00:00Z");
    test.server.put(USER_SECRET, expired);
    let mut user = test.server.get(&user_path("device-1")).unwrap();
    user["status"] = serde_json::to_value(written_user_status(&requests, "device-1")).unwrap();
    test.server.put(&user_path("device-1"), user);
    test.reconcile_user("device-1")
        .await
        .expect("closes the window");
    let requests = test.server.take_requests();
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "GraceEnded".to_owned())]
    );
    let status = written_user_status(&requests, "device-1");
    assert_eq!(
        user_condition(&status, "Rotating"),
        pair("False", "NoPreviousPassword")
    );
    assert_eq!(status.previous_password_valid_until, None);
    let stored = test.server.get(USER_SECRET).unwrap();
    assert!(stored["metadata"]["annotations"]
        .get("kubemqtt.io/previous-password-hash")
        .is_none());
}
