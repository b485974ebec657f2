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

mod certificates;
mod reconcile;

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
