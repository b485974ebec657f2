//! The broker controller against a fake API server (see
//! [`super::fixtures`]): each test drives one or more reconciles and
//! asserts the requests, in order, and what they carried. The user
//! controller's tests are in `user_tests.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::apply::stamp;
use super::fixtures::{ApiServer, FakeMetrics, Recorded, RecordingPusher, UserCache};
use super::*;
use crate::api::MqttBrokerStatus;
use crate::certs::{self, San};
use crate::plan::tls::{CA_CERT_KEY, TLS_CERT_KEY};
use crate::plan::{self, Observed};

pub(super) const BROKER: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq";
pub(super) const BROKER_STATUS: &str =
    "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq/status";
pub(super) const CONFIG_MAP: &str = "/api/v1/namespaces/iot/configmaps/mq-config";
pub(super) const CA: &str = "/api/v1/namespaces/iot/secrets/mq-ca";
pub(super) const TLS: &str = "/api/v1/namespaces/iot/secrets/mq-tls";
pub(super) const AUTH: &str = "/api/v1/namespaces/iot/secrets/mq-auth";
pub(super) const CLIENTS_CA: &str = "/api/v1/namespaces/iot/secrets/mq-clients-ca";
pub(super) const USERS: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttusers";
pub(super) const SECRETS: &str = "/api/v1/namespaces/iot/secrets";
pub(super) const HEADLESS: &str = "/api/v1/namespaces/iot/services/mq-headless";
pub(super) const SERVICE: &str = "/api/v1/namespaces/iot/services/mq";
pub(super) const EXTERNAL: &str = "/api/v1/namespaces/iot/services/mq-external";
pub(super) const STATEFUL_SET: &str = "/apis/apps/v1/namespaces/iot/statefulsets/mq";
pub(super) const PDB: &str = "/apis/policy/v1/namespaces/iot/poddisruptionbudgets/mq";
pub(super) const POD: &str = "/api/v1/namespaces/iot/pods/mq-0";
pub(super) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/iot/events";
const CERTIFICATE: &str = "/apis/cert-manager.io/v1/namespaces/iot/certificates/mq-tls";
/// Every object of a default broker, in the order they are applied (one
/// replica: no PodDisruptionBudget).
pub(super) const OBJECTS: [&str; 9] = [
    CONFIG_MAP,
    CA,
    TLS,
    CLIENTS_CA,
    AUTH,
    HEADLESS,
    SERVICE,
    EXTERNAL,
    STATEFUL_SET,
];
const UID: &str = "6c1d2b9e-0f4a-4c57-9d1e-3a2b7c8d9e0f";

/// One broker `mq` in namespace `iot`, the fake API server, and the
/// controller's context.
pub(super) struct Test {
    pub ctx: Arc<Context>,
    pub server: ApiServer,
    pub pushes: Arc<RecordingPusher>,
    pub pod_metrics: Arc<FakeMetrics>,
    users: UserCache,
}

impl Test {
    /// A broker with `spec` and `annotations`, as just created.
    pub fn new(spec: Value, annotations: Value) -> Test {
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
        let pod_metrics = Arc::new(FakeMetrics::default());
        let ctx = Context::new(client, Settings::default(), metrics, None)
            .with_pusher(pushes.clone())
            .with_pod_metrics(pod_metrics.clone())
            .with_broker_http(pod_metrics.clone());
        let users = UserCache::new(&ctx.index);
        Test {
            ctx: Arc::new(ctx),
            server,
            pushes,
            pod_metrics,
            users,
        }
    }

    pub fn default() -> Test {
        Test::new(json!({}), json!({}))
    }

    /// Reconciles the broker as stored (with the status the last
    /// reconcile wrote, as the watch would deliver it), the user cache up
    /// to date.
    pub async fn reconcile(&self) -> Result<Action, Error> {
        self.users.sync(&self.server, USERS);
        reconcile(Arc::new(self.server.broker(BROKER)), self.ctx.clone()).await
    }

    /// Re-reads the users into the cache.
    pub fn sync_users(&self) {
        self.users.sync(&self.server, USERS);
    }

    /// Changes the stored broker as a user would: a new generation.
    pub fn edit(&self, change: impl FnOnce(&mut Value)) {
        let mut broker = self.server.get(BROKER).expect("broker");
        change(&mut broker);
        let generation = broker["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        broker["metadata"]["generation"] = json!(generation);
        self.server.put(BROKER, broker);
    }

    /// The StatefulSet's pods as the cluster reports them: `ready` of one
    /// ready, on the current revision of its current generation.
    pub fn pods_ready(&self, ready: i32) {
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

    /// The broker pod `mq-0` at 10.0.0.7, its broker container restarted
    /// `restarts` times.
    pub fn pod(&self, restarts: i32) {
        self.server.put(
            POD,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "mq-0",
                    "namespace": "iot",
                    "uid": "9f2c1b3a-0000-4000-8000-000000000001",
                    "labels": plan::selector_labels("mq"),
                },
                "status": {
                    "podIP": "10.0.0.7",
                    "containerStatuses": [{
                        "name": "broker", "restartCount": restarts, "ready": true,
                        "image": "broker", "imageID": "",
                    }],
                },
            }),
        );
    }

    /// The cloud's load balancer controller gives the external Service an
    /// address.
    pub fn load_balancer(&self, ip: &str) {
        self.server
            .set_status(EXTERNAL, json!({"loadBalancer": {"ingress": [{"ip": ip}]}}));
    }

    /// A broker that runs: created, its pod up and ready, its load
    /// balancer addressed, and reconciled until nothing is left to do.
    pub async fn running() -> Test {
        let test = Test::default();
        test.reconcile().await.expect("creates");
        test.pod(0);
        test.pods_ready(1);
        test.load_balancer("203.0.113.7");
        test.reconcile().await.expect("sees the pod");
        test.reconcile().await.expect("settles");
        test.server.take_requests();
        test.pushes.take();
        test
    }

    pub fn metrics(&self) -> String {
        self.ctx.metrics.render()
    }
}

/// `METHOD path` of every request.
pub(super) fn lines(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(Recorded::line).collect()
}

/// The reads of every reconcile of a default broker: its Secrets and
/// Services by its labels, its ConfigMap, StatefulSet and
/// PodDisruptionBudget, its users' Secrets and its pods.
pub(super) fn reads() -> Vec<String> {
    let owned = "app.kubernetes.io/instance=mq,app.kubernetes.io/managed-by=kubemqtt-operator";
    vec![
        format!("GET {SECRETS}?{owned}"),
        format!("GET /api/v1/namespaces/iot/services?{owned}"),
        format!("GET {CONFIG_MAP}"),
        format!("GET {STATEFUL_SET}"),
        format!("GET {PDB}"),
        format!("GET {SECRETS}?kubemqtt.io/broker=mq"),
        "GET /api/v1/namespaces/iot/pods?app.kubernetes.io/name=kubemqtt-broker,app.kubernetes.io/instance=mq".to_owned(),
    ]
}

/// The requests of a reconcile that applies `paths`: the reads, a dry run
/// of each, each for real; then what follows.
pub(super) fn applying(paths: &[&str], then: &[String]) -> Vec<String> {
    let mut expected = reads();
    expected.extend(paths.iter().map(|p| format!("PATCH {p} (dry run)")));
    expected.extend(paths.iter().map(|p| format!("PATCH {p}")));
    expected.extend(then.iter().cloned());
    expected
}

pub(super) fn status_patch() -> String {
    format!("PATCH {BROKER_STATUS}")
}

pub(super) fn event_post() -> String {
    format!("POST {EVENTS}")
}

/// The status written by the status request among `requests`.
pub(super) fn written_status(requests: &[Recorded]) -> MqttBrokerStatus {
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
pub(super) fn condition(status: &MqttBrokerStatus, type_: &str) -> (String, String) {
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (condition.status.clone(), condition.reason.clone())
}

pub(super) fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// `(type, reason, note)` of every Event posted.
pub(super) fn events(requests: &[Recorded]) -> Vec<(String, String, String)> {
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

/// The text of `key` in a Secret's JSON form.
pub(super) fn secret_text(secret: &Value, key: &str) -> String {
    let secret: Secret = serde_json::from_value(secret.clone()).expect("a Secret");
    let bytes = secret.data.unwrap_or_default().remove(key).expect("key");
    String::from_utf8(bytes.0).expect("text")
}

/// The requeue of a healthy broker whose certificate is far from renewal.
pub(super) fn an_hour() -> Action {
    Action::requeue(MAX_REQUEUE)
}

#[tokio::test]
async fn first_reconcile_creates_everything_and_reports() {
    let test = Test::default();
    let action = test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        applying(
            &OBJECTS,
            &[event_post(), event_post(), event_post(), status_patch()]
        )
    );
    // Every object: server-side apply, one field manager, forced, stamped
    // with its hash; owned by the broker, but the CA Secrets.
    for request in requests.iter().filter(|r| r.method == Method::PATCH) {
        assert!(
            request.query.contains("fieldManager=kubemqtt-operator")
                && request.query.contains("force=true"),
            "{}: {}",
            request.path,
            request.query
        );
        if request.path == BROKER_STATUS {
            continue;
        }
        assert!(request.body["metadata"]["annotations"]["kubemqtt.io/applied-hash"].is_string());
        let owners = &request.body["metadata"]["ownerReferences"];
        if [CA, CLIENTS_CA].contains(&request.path.as_str()) {
            assert!(owners.is_null(), "{} outlives the broker", request.path);
        } else {
            assert_eq!(owners[0]["uid"], UID, "{}", request.path);
            assert_eq!(owners[0]["controller"], true, "{}", request.path);
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
    // No load balancer address yet: no endpoint to tell.
    assert_eq!(status.endpoint, None);
    assert_eq!(status.listeners.len(), 2);
    assert_eq!(status.listeners[1].internal, "mqtts://mq.iot.svc:8883");
    let tls = test.server.get(TLS).expect("stored certificate");
    let issued = certs::inspect(&secret_text(&tls, TLS_CERT_KEY)).expect("a certificate");
    let certificate = status.certificate.expect("certificate");
    assert_eq!(certificate.not_after.0, issued.not_after);
    let ca = certs::inspect(&secret_text(&test.server.get(CA).unwrap(), CA_CERT_KEY)).unwrap();
    assert_eq!(certificate.ca_not_after.map(|t| t.0), Some(ca.not_after));
    let credentials = status.credentials.expect("credentials");
    assert_eq!(
        (credentials.revision, credentials.confirmed_revision),
        (1, None)
    );

    assert_eq!(
        events(&requests),
        [
            event(
                "Normal",
                "Created",
                "created ConfigMap mq-config, Secret mq-ca, Secret mq-tls, Secret mq-clients-ca, \
                 Secret mq-auth, Service mq-headless, Service mq, Service mq-external, \
                 StatefulSet mq"
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
    // No pod to push the credentials to yet: back soon, with backoff.
    assert_eq!(action, Action::requeue(FIRST_RETRY));
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"applied\"} 1"));

    // Nothing changed since: the objects are read, nothing is written.
    let action = test.reconcile().await.expect("reconciles again");
    assert_eq!(lines(&test.server.take_requests()), reads());
    assert_eq!(action, Action::requeue(backoff(2)));
}

#[tokio::test]
async fn a_steady_broker_reads_seven_times_and_writes_nothing() {
    let test = Test::running().await;
    let action = test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), reads());
    assert_eq!(requests.len(), 7);
    assert!(requests.iter().all(|r| r.method == Method::GET));
    assert!(test.pushes.take().is_empty(), "the pod has the credentials");
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn ready_means_reachable_at_the_advertised_address_with_credentials() {
    let test = Test::default();
    test.reconcile().await.expect("creates");
    test.server.take_requests();

    // The pod is ready, but the load balancer has no address yet.
    test.pod(0);
    test.pods_ready(1);
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(
        condition(&status, "Ready"),
        pair("False", "LoadBalancerPending")
    );
    assert_eq!(condition(&status, "Available"), pair("True", "PodsReady"));
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].url, "http://10.0.0.7:8080/api/v1/credentials");
    assert_eq!(status.credentials.unwrap().confirmed_revision, Some(1));

    // The address comes: the certificate covers it, the endpoint says it.
    test.load_balancer("203.0.113.7");
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(status.endpoint.as_deref(), Some("mqtts://203.0.113.7:8883"));
    assert_eq!(
        status.conditions[0].message,
        "the broker accepts connections at mqtts://203.0.113.7:8883"
    );
    assert_eq!(
        status.listeners[1].external.as_deref(),
        Some("mqtts://203.0.113.7:8883")
    );
    assert_eq!(
        status.listeners[0].external, None,
        "plain MQTT stays inside"
    );
    let endpoints = status.endpoints.expect("endpoints");
    assert_eq!(endpoints.internal, "mq.iot.svc");
    assert_eq!(endpoints.external.as_deref(), Some("203.0.113.7"));
    let certificate = secret_text(&applied(&requests, TLS), TLS_CERT_KEY);
    let info = certs::inspect(&certificate).expect("a certificate");
    assert!(info.sans.contains(&San::Ip("203.0.113.7".parse().unwrap())));
    assert!(info.sans.contains(&San::Dns("mq.iot.svc".to_owned())));
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

    // The broker restarts in its pod: it forgot the push. Not Ready
    // until it confirms the credentials again.
    test.pod(1);
    test.pushes
        .unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(
        condition(&status, "Ready"),
        pair("False", "CredentialsNotPushed")
    );
    assert_eq!(
        status.conditions[0].message,
        "0 of 1 broker pods confirmed credentials revision 1; retrying"
    );
    assert_eq!(test.pushes.take().len(), 1);
    assert_eq!(action, Action::requeue(FIRST_RETRY));
    // Retries back off while the pod cannot be reached.
    let action = test.reconcile().await.expect("reconciles");
    assert_eq!(action, Action::requeue(FIRST_RETRY * 2));
    let action = test.reconcile().await.expect("reconciles");
    assert_eq!(action, Action::requeue(FIRST_RETRY * 4));
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_credential_pushes_total{result=\"unreachable\"} 3"));
    test.server.take_requests();

    test.pushes
        .unreachable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn an_update_applies_only_what_changed_and_says_so() {
    let test = Test::running().await;
    let checksum = |sts: &Value| {
        sts["spec"]["template"]["metadata"]["annotations"]["kubemqtt.io/config-checksum"].clone()
    };
    let before = checksum(&test.server.get(STATEFUL_SET).expect("statefulset"));

    // The log level: the broker re-reads the file, no pod restarts.
    test.edit(|broker| broker["spec"]["logging"] = json!({"level": "debug"}));
    let action = test.reconcile().await.expect("updates");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        applying(&[CONFIG_MAP], &[event_post(), status_patch()])
    );
    let config = applied(&requests, CONFIG_MAP);
    let broker_toml = config["data"]["broker.toml"].as_str().expect("broker.toml");
    assert!(broker_toml.contains("level = \"debug\""), "{broker_toml}");
    assert_eq!(
        checksum(&test.server.get(STATEFUL_SET).expect("statefulset")),
        before
    );
    assert_eq!(
        events(&requests),
        [event("Normal", "Updated", "updated ConfigMap mq-config")]
    );
    assert_eq!(action, an_hour());

    // A key the broker reads only at start ($SYS interval): the pods roll.
    test.edit(|broker| broker["spec"]["config"] = json!({"sys": {"interval_secs": 0}}));
    let action = test.reconcile().await.expect("updates");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        applying(&[CONFIG_MAP, STATEFUL_SET], &[event_post(), status_patch()])
    );
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
    assert_eq!(status.observed_generation, Some(3));
    // The pod still serves on the old revision while the new one rolls.
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(
        condition(&status, "Progressing"),
        pair("True", "RollingOut")
    );
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn an_object_edited_by_someone_else_is_restored() {
    let test = Test::running().await;
    let mut config = test.server.get(CONFIG_MAP).expect("config map");
    let original = config["data"]["broker.toml"].clone();
    config["data"]["broker.toml"] = json!("# edited by hand\n");
    test.server.put(CONFIG_MAP, config);

    test.reconcile().await.expect("restores");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), applying(&[CONFIG_MAP], &[event_post()]));
    assert_eq!(
        test.server.get(CONFIG_MAP).unwrap()["data"]["broker.toml"],
        original
    );
    assert_eq!(
        events(&requests),
        [event("Normal", "Updated", "updated ConfigMap mq-config")]
    );
    // Restored: quiet again.
    test.reconcile().await.expect("reconciles");
    assert_eq!(lines(&test.server.take_requests()), reads());
}

#[tokio::test]
async fn an_expiring_certificate_is_renewed() {
    let test = Test::default();
    // The broker's objects as applied 340 days ago: the server
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
    for (path, mut object) in OBJECTS.iter().zip(old.objects().expect("objects")) {
        stamp(&mut object);
        test.server.put(path, object);
    }
    let old_certificate = secret_text(&test.server.get(TLS).expect("tls"), TLS_CERT_KEY);
    let old_ca = secret_text(&test.server.get(CA).expect("ca"), CA_CERT_KEY);

    test.reconcile().await.expect("renews");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        applying(&[TLS], &[event_post(), event_post(), status_patch()])
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
        status.certificate.expect("certificate").not_after.0,
        info.not_after
    );
}

#[tokio::test]
async fn a_ca_rotation_keeps_the_old_ca_signing_for_the_overlap() {
    let test = Test::running().await;
    let old_ca = secret_text(&test.server.get(CA).unwrap(), CA_CERT_KEY);
    let served = secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY);

    test.edit(|broker| {
        broker["metadata"]["annotations"] = json!({"kubemqtt.io/rotate-ca": "now"});
    });
    test.reconcile().await.expect("starts the rotation");
    let requests = test.server.take_requests();
    // The new CA joins the bundle; the served certificate stays.
    assert_eq!(
        lines(&requests),
        applying(
            &[CONFIG_MAP, CA, TLS],
            &[event_post(), event_post(), status_patch()]
        )
    );
    assert_eq!(
        secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY),
        served
    );
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_owned();
    let trusted = certs::pem_certificates(&bundle);
    assert_eq!(trusted.len(), 2);
    assert!(certs::same_certificate(&trusted[0], &old_ca));
    let status = written_status(&requests);
    let certificate = status.certificate.expect("certificate");
    let completes = certificate.ca_rotation_completes_at.expect("a rotation").0;
    let overlap = completes.duration_since(Timestamp::now());
    assert!(
        overlap > SignedDuration::from_hours(24 * 30 - 1),
        "{overlap:?}"
    );
    assert!(certificate.next_ca_not_after.is_some());
    let (_, reason, note) = &events(&requests)[1];
    assert_eq!(reason, "CaRotationStarted");
    assert!(note.contains("clients trust it from now on"), "{note}");

    // The overlap is over (as if 30 days went by).
    let mut ca = test.server.get(CA).unwrap();
    ca["metadata"]["annotations"]["kubemqtt.io/ca-rotation-completes-at"] =
        json!("2025-01-01T00:00:00Z");
    test.server.put(CA, ca);
    test.reconcile().await.expect("completes the rotation");
    let requests = test.server.take_requests();
    let new_ca = secret_text(&test.server.get(CA).unwrap(), CA_CERT_KEY);
    assert!(certs::same_certificate(&new_ca, &trusted[1]));
    let now_served = secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&now_served, &new_ca));
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(certs::pem_certificates(&bundle).len(), 1);
    assert!(events(&requests)
        .iter()
        .any(|(_, reason, _)| reason == "CaRotationCompleted"));
    let certificate = written_status(&requests).certificate.unwrap();
    assert_eq!(certificate.ca_rotation_completes_at, None);
}

#[tokio::test]
async fn the_ca_secrets_outlive_the_broker_and_are_adopted_again() {
    let test = Test::default();
    test.reconcile().await.expect("creates");
    let ca = test.server.get(CA).unwrap();
    let clients_ca = test.server.get(CLIENTS_CA).unwrap();
    assert!(ca["metadata"]["ownerReferences"].is_null());

    // The broker is deleted: the garbage collector takes what it owns.
    for path in OBJECTS.iter().filter(|p| ![CA, CLIENTS_CA].contains(p)) {
        test.server.remove(path);
    }
    test.server.remove(BROKER);
    // A broker of the same name comes back.
    let again = Test::default();
    for (path, object) in [(CA, &ca), (CLIENTS_CA, &clients_ca)] {
        again.server.put(path, object.clone());
    }
    again.reconcile().await.expect("creates");
    let requests = again.server.take_requests();
    assert!(
        !lines(&requests).contains(&format!("PATCH {CA}")),
        "the CA is kept as it is"
    );
    assert_eq!(
        secret_text(&again.server.get(CA).unwrap(), CA_CERT_KEY),
        secret_text(&ca, CA_CERT_KEY)
    );
    let served = secret_text(&again.server.get(TLS).unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&served, &secret_text(&ca, CA_CERT_KEY)));
    assert!(events(&requests)
        .iter()
        .all(|(_, _, note)| !note.contains("CA certificate")));

    // Deleted with the broker when asked.
    let owned = Test::new(
        json!({"tls": {"ca": {"deleteWithBroker": true}}}),
        json!({}),
    );
    owned.reconcile().await.expect("creates");
    assert_eq!(
        owned.server.get(CA).unwrap()["metadata"]["ownerReferences"][0]["uid"],
        UID
    );
}

#[tokio::test]
async fn a_teams_ca_issues_the_certificate_and_is_labelled_for_the_watch() {
    let test = Test::new(json!({"tls": {"ca": {"secretName": "team-ca"}}}), json!({}));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(
        condition(&status, "Degraded"),
        pair("True", "CaSecretInvalid")
    );
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("False", "CaSecretInvalid")
    );
    assert!(!requests
        .iter()
        .any(|r| r.method == Method::PATCH && r.path.starts_with(SECRETS)));

    let team_ca = certs::generate_ca(
        "Team CA",
        Timestamp::now(),
        SignedDuration::from_hours(24 * 365),
    )
    .unwrap();
    let secret = |ca: &certs::CertifiedKeyPem| {
        let secret = Secret {
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [("tls.crt", &ca.cert_pem), ("tls.key", &ca.key_pem)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let mut object = serde_json::to_value(secret).unwrap();
        object["metadata"] = json!({"name": "team-ca", "namespace": "iot", "uid": "team"});
        object
    };
    let path = "/api/v1/namespaces/iot/secrets/team-ca";
    test.server.put(path, secret(&team_ca));
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("PATCH {path} by kubemqtt-operator-references")));
    assert_eq!(
        test.server.get(path).unwrap()["metadata"]["labels"]["kubemqtt.io/referenced"],
        "true"
    );
    assert!(test.server.get(CA).is_none(), "no CA of the operator's");
    let served = secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&served, &team_ca.cert_pem));
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"].clone();
    assert!(certs::same_certificate(
        bundle.as_str().unwrap(),
        &team_ca.cert_pem
    ));

    // The team replaces its CA: the certificate the old one issued is
    // served for the overlap, both CAs trusted.
    let next_ca = certs::generate_ca(
        "Team CA 2",
        Timestamp::now(),
        SignedDuration::from_hours(24 * 365),
    )
    .unwrap();
    let mut replaced = secret(&next_ca);
    replaced["metadata"]["labels"] = json!({"kubemqtt.io/referenced": "true"});
    test.server.put(path, replaced);
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    assert_eq!(
        secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY),
        served
    );
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_owned();
    let trusted = certs::pem_certificates(&bundle);
    assert_eq!(trusted.len(), 2);
    assert!(certs::same_certificate(&trusted[0], &team_ca.cert_pem));
    assert!(certs::same_certificate(&trusted[1], &next_ca.cert_pem));
    let certificate = written_status(&requests).certificate.unwrap();
    assert!(certificate.ca_rotation_completes_at.is_some());
}

#[tokio::test]
async fn cert_manager_issues_the_certificate() {
    let test = Test::new(
        json!({"tls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}}),
        json!({}),
    );
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let certificate = applied(&requests, CERTIFICATE);
    assert_eq!(certificate["spec"]["secretName"], "mq-tls");
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert!(certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&json!("mq.iot.svc")));
    assert!(test.server.get(TLS).is_none(), "cert-manager writes it");
    assert!(test.server.get(CA).is_none());
    let status = written_status(&requests);
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("False", "SecretNotFound")
    );

    // cert-manager issues it, with its CA.
    let ca = certs::generate_ca(
        "Corp CA",
        Timestamp::now(),
        SignedDuration::from_hours(24 * 365),
    )
    .unwrap();
    let names = ["mq.iot.svc"]
        .iter()
        .map(|n| San::parse(n).unwrap())
        .collect();
    let server = certs::issue_server_cert(
        &ca,
        "mq",
        &names,
        Timestamp::now(),
        SignedDuration::from_hours(24 * 90),
    )
    .unwrap();
    let secret = Secret {
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", &server.cert_pem),
                ("tls.key", &server.key_pem),
                ("ca.crt", &ca.cert_pem),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Secret::default()
    };
    let mut object = serde_json::to_value(secret).unwrap();
    object["metadata"] =
        json!({"name": "mq-tls", "namespace": "iot", "labels": plan::common_labels("mq")});
    test.server.put(TLS, object);
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("True", "IssuedByCertManager")
    );
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"].clone();
    assert!(certs::same_certificate(
        bundle.as_str().unwrap(),
        &ca.cert_pem
    ));

    // Without cert-manager in the cluster, the Certificate is refused.
    let without = Test::new(
        json!({"tls": {"certManager": {"issuerRef": {"name": "corp-ca"}}}}),
        json!({}),
    );
    without
        .server
        .fail_once(Method::PATCH, CERTIFICATE, true, 404, "NotFound");
    let action = without.reconcile().await.expect("reports");
    let status = written_status(&without.server.take_requests());
    assert_eq!(condition(&status, "Degraded"), pair("True", "Rejected"));
    assert!(status.conditions[3]
        .message
        .contains("install cert-manager"));
    assert_eq!(action, Action::requeue(INVALID_REQUEUE));
}

#[tokio::test]
async fn persistence_is_turned_on_and_grown_without_recreating_the_broker() {
    let test = Test::running().await;
    test.edit(|broker| broker["spec"]["persistence"] = json!({"enabled": true, "size": "1Gi"}));
    test.reconcile().await.expect("turns persistence on");
    let requests = test.server.take_requests();
    let lines = lines(&requests);
    let dry_runs = [CONFIG_MAP].map(|p| format!("PATCH {p} (dry run)"));
    let mut expected = reads();
    expected.extend(dry_runs);
    expected.extend([
        "GET /api/v1/namespaces/iot/persistentvolumeclaims?app.kubernetes.io/instance=mq,app.kubernetes.io/name=kubemqtt-broker".to_owned(),
        format!("DELETE {STATEFUL_SET}"),
        format!("PATCH {CONFIG_MAP}"),
        format!("PATCH {STATEFUL_SET}"),
        event_post(),
        event_post(),
        status_patch(),
    ]);
    assert_eq!(lines, expected);
    let delete = requests
        .iter()
        .find(|r| r.method == Method::DELETE)
        .unwrap();
    assert_eq!(delete.body["propagationPolicy"], "Orphan");
    assert!(
        delete.body["preconditions"]["uid"].is_string() || delete.body["preconditions"].is_object()
    );
    let (_, reason, _) = &events(&requests)[1];
    assert_eq!(reason, "StatefulSetReplaced");
    let sts = test.server.get(STATEFUL_SET).unwrap();
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );

    // The StatefulSet controller made the pod's claim; it is grown.
    let claim = "/api/v1/namespaces/iot/persistentvolumeclaims/data-mq-0";
    test.server.put(
        claim,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-mq-0", "namespace": "iot", "labels": plan::selector_labels("mq")},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}},
        }),
    );
    test.edit(|broker| broker["spec"]["persistence"]["size"] = json!("5Gi"));
    test.reconcile().await.expect("grows");
    let requests = test.server.take_requests();
    assert!(super::tests::lines(&requests).contains(&format!("PATCH {claim}")));
    assert_eq!(
        test.server.get(claim).unwrap()["spec"]["resources"]["requests"]["storage"],
        "5Gi"
    );

    // Shrinking is refused, nothing applied.
    test.edit(|broker| broker["spec"]["persistence"]["size"] = json!("2Gi"));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "InvalidSpec"));
    assert!(!requests.iter().any(|r| r.method == Method::DELETE));
}

#[tokio::test]
async fn a_plain_listener_open_to_the_world_is_warned_about_once() {
    let test = Test::new(
        json!({"listeners": {"mqtt": {"external": true}}}),
        json!({}),
    );
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let warnings: Vec<_> = events(&requests)
        .into_iter()
        .filter(|(type_, _, _)| type_ == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].1, "PlainTextExposed");
    let external = applied(&requests, EXTERNAL);
    assert_eq!(external["spec"]["ports"][0]["name"], "mqtt");
    // Not repeated on the next reconcile.
    test.reconcile().await.expect("reconciles");
    assert_eq!(lines(&test.server.take_requests()), reads());
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
    expected.extend(OBJECTS[..9].iter().map(|p| format!("PATCH {p} (dry run)")));
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
        applying(
            &OBJECTS,
            &[event_post(), event_post(), event_post(), status_patch()]
        )
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
