//! The fleet controller against the fake API server
//! ([`crate::controller::fixtures`]): what a reconcile reads and writes,
//! the broker's fleets Secret, the finalizer, the push of the revocation
//! lists to the broker pods, the status, the watch filter and the backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};

use super::*;
use crate::controller::fixtures::{ApiServer, Push, Recorded, RecordingPusher};

const NS: &str = "/api/v1/namespaces/iot";
const FLEETS: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttdevicefleets";
const BROKER: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq";
const PODS: &str = "/api/v1/namespaces/iot/pods?app.kubernetes.io/name=kubemqtt-broker,app.kubernetes.io/instance=mq";
const TOKEN: &str = "admin-token-of-mq";

/// Every broker pod answers with `online` devices of fleet `sensors`.
struct Pods(i64);

impl MetricsReader for Pods {
    fn read(&self, host: String) -> MetricsFuture {
        let text = format!(
            "# TYPE kubemqtt_fleet_devices_online gauge\n\
             kubemqtt_fleet_devices_online{{fleet=\"sensors\"}} {}\n",
            self.0
        );
        assert!(host.ends_with(".mq-headless.iot.svc"), "{host}");
        Box::pin(async move { Ok(text) })
    }
}

struct Test {
    server: ApiServer,
    ctx: Arc<FleetContext>,
    pusher: Arc<RecordingPusher>,
}

fn context(client: Client, pusher: Arc<RecordingPusher>) -> Arc<FleetContext> {
    Arc::new(FleetContext {
        client,
        metrics: Arc::new(Pods(3)),
        reporter: Reporter {
            controller: "kubemqtt-operator".into(),
            instance: None,
        },
        pusher,
        pushed: PushedRevisions::default(),
        failures: Failures::default(),
    })
}

impl Test {
    fn new() -> Test {
        let (client, server) = ApiServer::start();
        server.put(
            &format!("{NS}/secrets/mq-auth"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "mq-auth", "namespace": "iot"},
                   "data": {"admin-token": base64(TOKEN)}}),
        );
        server.put(&format!("{NS}/pods/mq-0"), pod("mq-0", "10.0.0.7", 0));
        server.put(
            BROKER,
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttBroker",
                "metadata": {"name": "mq", "namespace": "iot",
                             "uid": "0b8e1f2a-5d1c-4e0f-9a43-2d6f1c7e9b10"},
                "spec": {"replicas": 1},
            }),
        );
        let pusher = Arc::new(RecordingPusher::default());
        let ctx = context(client, pusher.clone());
        Test {
            server,
            ctx,
            pusher,
        }
    }

    fn put_fleet(&self, name: &str, spec: Value, created: &str) {
        self.server.put(
            &format!("{FLEETS}/{name}"),
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttDeviceFleet",
                "metadata": {"name": name, "namespace": "iot", "generation": 1,
                             "uid": format!("uid-{name}"), "creationTimestamp": created},
                "spec": spec,
            }),
        );
    }

    fn fleet(&self, name: &str) -> MqttDeviceFleet {
        serde_json::from_value(self.server.get(&format!("{FLEETS}/{name}")).unwrap()).unwrap()
    }

    async fn reconcile(&self, name: &str) -> Action {
        reconcile(Arc::new(self.fleet(name)), self.ctx.clone())
            .await
            .unwrap()
    }

    fn fleets_secret_keys(&self) -> Vec<String> {
        let secret = self.server.get(&format!("{NS}/secrets/mq-fleets")).unwrap();
        secret["data"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn ready(&self, name: &str) -> (String, String) {
        let status = self.fleet(name).status.unwrap();
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }
}

fn base64(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
}

/// A broker pod with an address, its broker container restarted
/// `restarts` times.
fn pod(name: &str, ip: &str, restarts: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "iot", "uid": format!("uid-{name}"),
                     "labels": {"app.kubernetes.io/name": "kubemqtt-broker",
                                "app.kubernetes.io/instance": "mq"}},
        "status": {"podIP": ip, "containerStatuses": [
            {"name": "broker", "restartCount": restarts, "image": "x", "imageID": "", "ready": true}]},
    })
}

fn lines(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| !r.path.contains("/events"))
        .map(Recorded::line)
        .collect()
}

#[tokio::test]
async fn a_derived_fleet_gets_its_secret_and_its_entry_in_the_brokers_fleets() {
    let t = Test::new();
    t.put_fleet(
        "sensors",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived",
               "acl": [{"action": "publish", "topic": "sensors/%d/#"}],
               "revocations": {"devices": ["s-9", "s-10"]}}),
        "2026-12-01T00:00:00Z",
    );
    let action = t.reconcile("sensors").await;
    assert_eq!(action, Action::requeue(REFRESH));
    let requests = t.server.take_requests();
    assert_eq!(
        lines(&requests),
        [
            format!("PATCH {FLEETS}/sensors"),
            format!("GET {BROKER}"),
            format!("GET {NS}/secrets/sensors-fleet-secret"),
            format!("PATCH {NS}/secrets/sensors-fleet-secret"),
            format!("GET {FLEETS}"),
            format!("GET {NS}/secrets/sensors-fleet-secret"),
            format!("GET {NS}/secrets/mq-fleets"),
            format!("PATCH {NS}/secrets/mq-fleets"),
            format!("GET {PODS}"),
            format!("GET {NS}/secrets/mq-auth"),
            format!("PATCH {FLEETS}/sensors/status"),
        ]
    );
    assert_eq!(t.fleet("sensors").finalizers(), [FINALIZER]);
    assert_eq!(
        t.fleets_secret_keys(),
        [
            "revision",
            "sensors.revoked",
            "sensors.secret",
            "sensors.toml"
        ]
    );
    // The Secret is written first, then its revocation lists are pushed.
    let revision = t.fleet("sensors").status.unwrap().revision.unwrap();
    assert_eq!(
        t.pusher.take(),
        [Push {
            url: "http://10.0.0.7:8080/api/v1/fleets/revocations".into(),
            token: TOKEN.into(),
            body: format!(
                "revision = {revision}\n\n[revocations]\n\
                 sensors = \"\"\"\ndevice s-9\ndevice s-10\n\"\"\"\n"
            ),
        }]
    );
    let secret = t.server.get(&format!("{NS}/secrets/mq-fleets")).unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "MqttBroker"
    );
    let status = t.fleet("sensors").status.unwrap();
    assert_eq!(t.ready("sensors"), ("True".into(), "InForce".into()));
    assert_eq!(status.devices_online, Some(3));
    assert_eq!(status.revoked, Some(2));
    assert_eq!(status.secret_name.as_deref(), Some("sensors-fleet-secret"));
    assert_eq!(status.pods_confirmed, Some(1));

    // A steady-state reconcile reads and writes nothing more than it must,
    // and pushes nothing.
    t.reconcile("sensors").await;
    let requests = t.server.take_requests();
    assert_eq!(
        lines(&requests),
        [
            format!("GET {BROKER}"),
            format!("GET {NS}/secrets/sensors-fleet-secret"),
            format!("GET {FLEETS}"),
            format!("GET {NS}/secrets/sensors-fleet-secret"),
            format!("GET {NS}/secrets/mq-fleets"),
            format!("GET {PODS}"),
        ]
    );
    assert!(t.pusher.take().is_empty());
}

#[tokio::test]
async fn a_fleet_that_cannot_be_used_is_reported_and_the_others_stay() {
    let t = Test::new();
    t.put_fleet(
        "sensors",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived"}),
        "2026-12-01T00:00:00Z",
    );
    t.put_fleet(
        "copycat",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived", "usernameTemplate": "%d@sensors"}),
        "2026-12-02T00:00:00Z",
    );
    t.put_fleet(
        "keyless",
        json!({"brokerRef": {"name": "mq"}, "mode": "jwt",
               "jwt": {"keysSecretKeyRef": {"name": "no-such-secret", "key": "k"}}}),
        "2026-12-03T00:00:00Z",
    );
    t.reconcile("sensors").await;
    t.reconcile("copycat").await;
    t.reconcile("keyless").await;
    assert_eq!(t.ready("sensors"), ("True".into(), "InForce".into()));
    assert_eq!(t.ready("copycat"), ("False".into(), "InvalidFleet".into()));
    assert_eq!(
        t.ready("keyless"),
        ("False".into(), "MissingReference".into())
    );
    assert!(t
        .fleets_secret_keys()
        .iter()
        .all(|k| k.starts_with("sensors.") || k == "revision"));
    let requests = t.server.take_requests();
    let warnings: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.contains("/events"))
        .filter(|r| r.body["type"] == "Warning")
        .collect();
    assert_eq!(warnings.len(), 2, "one Warning Event per refused fleet");
}

#[tokio::test]
async fn a_deleted_fleet_leaves_the_broker_before_it_goes() {
    let t = Test::new();
    for (name, created) in [
        ("sensors", "2026-12-01T00:00:00Z"),
        ("meters", "2026-12-02T00:00:00Z"),
    ] {
        t.put_fleet(
            name,
            json!({"brokerRef": {"name": "mq"}, "mode": "derived"}),
            created,
        );
        t.reconcile(name).await;
    }
    assert!(t.fleets_secret_keys().contains(&"meters.toml".to_owned()));
    let path = format!("{FLEETS}/meters");
    let mut deleting = t.server.get(&path).unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
    t.server.put(&path, deleting);
    assert_eq!(t.reconcile("meters").await, Action::await_change());
    assert!(t
        .fleets_secret_keys()
        .iter()
        .all(|k| k.starts_with("sensors.") || k == "revision"));
    assert!(
        t.fleet("meters").finalizers().is_empty(),
        "finalizer removed"
    );
}

#[tokio::test]
async fn a_fleet_of_a_missing_broker_is_not_ready() {
    let t = Test::new();
    t.put_fleet(
        "orphans",
        json!({"brokerRef": {"name": "elsewhere"}, "mode": "certificate"}),
        "2026-12-01T00:00:00Z",
    );
    assert_eq!(
        t.reconcile("orphans").await,
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(
        t.ready("orphans"),
        ("False".into(), "BrokerNotFound".into())
    );
    assert!(t
        .server
        .get(&format!("{NS}/secrets/elsewhere-fleets"))
        .is_none());
}

#[tokio::test]
async fn a_certificate_fleet_gets_a_ca_of_the_operator() {
    let t = Test::new();
    t.put_fleet(
        "meters",
        json!({"brokerRef": {"name": "mq"}, "mode": "certificate",
               "revocations": {"serials": ["0a:1b"]}}),
        "2026-12-01T00:00:00Z",
    );
    t.reconcile("meters").await;
    let ca = t
        .server
        .get(&format!("{NS}/secrets/meters-fleet-ca"))
        .unwrap();
    assert!(ca["data"]["tls.key"].is_string());
    assert_eq!(
        t.fleets_secret_keys(),
        ["meters.ca.crt", "meters.revoked", "meters.toml", "revision"]
    );
    assert!(
        !t.fleets_secret_keys().iter().any(|k| k.contains("key")),
        "no CA key in the broker"
    );
}

#[test]
fn devices_online_are_read_from_the_metrics() {
    let text = "kubemqtt_fleet_devices_online{fleet=\"a\"} 7\n\
                kubemqtt_fleet_devices_online{fleet=\"ab\"} 2\n";
    assert_eq!(devices_online(text, "a"), Some(7));
    assert_eq!(devices_online(text, "ab"), Some(2));
    assert_eq!(devices_online(text, "b"), None);
}

#[tokio::test]
async fn what_a_fleet_names_is_labelled_for_the_watch_and_maps_back_to_it() {
    let t = Test::new();
    let keys = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("car-keys".into()),
            namespace: Some("iot".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "keys.pem".to_owned(),
                k8s_openapi::ByteString(keys.into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    let mut secret = serde_json::to_value(&secret).unwrap();
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    t.server.put(&format!("{NS}/secrets/car-keys"), secret);
    t.server.put(
        &format!("{NS}/configmaps/revoked-cars"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "revoked-cars", "namespace": "iot"},
               "data": {"list": "device car-9\n"}}),
    );
    t.put_fleet(
        "cars",
        json!({"brokerRef": {"name": "mq"}, "mode": "jwt", "usernameTemplate": "car",
               "jwt": {"keysSecretKeyRef": {"name": "car-keys", "key": "keys.pem"}},
               "revocations": {"configMapKeyRef": {"name": "revoked-cars", "key": "list"}}}),
        "2026-12-01T00:00:00Z",
    );
    t.reconcile("cars").await;
    assert_eq!(t.ready("cars"), ("True".into(), "InForce".into()));
    let label =
        |path: &str| t.server.get(path).unwrap()["metadata"]["labels"][REFERENCED_LABEL].clone();
    assert_eq!(label(&format!("{NS}/secrets/car-keys")), "true");
    assert_eq!(label(&format!("{NS}/configmaps/revoked-cars")), "true");
    t.server.take_requests();
    t.reconcile("cars").await;
    let writes: Vec<String> = lines(&t.server.take_requests())
        .into_iter()
        .filter(|line| !line.starts_with("GET"))
        .collect();
    assert!(writes.is_empty(), "labelled once: {writes:?}");

    // The watch of labelled objects maps a change back to the fleet.
    let fleets = [Arc::new(t.fleet("cars"))];
    let named = |kind, namespace: &str, name: &str| {
        let object = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..ConfigMap::default()
        };
        fleets_referencing(&fleets, kind, &object)
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(named(Referenced::Secret, "iot", "car-keys"), ["cars"]);
    assert_eq!(
        named(Referenced::ConfigMap, "iot", "revoked-cars"),
        ["cars"]
    );
    assert!(named(Referenced::ConfigMap, "iot", "car-keys").is_empty());
    assert!(named(Referenced::Secret, "other", "car-keys").is_empty());
}

#[tokio::test]
async fn revocations_are_pushed_to_every_pod_and_retried_until_each_confirms() {
    let t = Test::new();
    t.server
        .put(&format!("{NS}/pods/mq-1"), pod("mq-1", "10.0.0.8", 0));
    let mut broker = t.server.get(BROKER).unwrap();
    broker["spec"]["replicas"] = json!(2);
    t.server.put(BROKER, broker);
    let spec = |devices: &[&str]| {
        json!({"brokerRef": {"name": "mq"}, "mode": "derived",
               "revocations": {"devices": devices}})
    };
    t.put_fleet("sensors", spec(&["s-9"]), "2026-12-01T00:00:00Z");

    // No pod answers: the Secret is written, the fleet waits for the pods
    // and is looked at again after 5 s, then 10 s.
    t.pusher.unreachable.store(true, Ordering::SeqCst);
    let seconds = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(t.reconcile("sensors").await, seconds(5));
    assert_eq!(t.pusher.take().len(), 2, "one push per pod");
    assert_eq!(
        t.ready("sensors"),
        ("False".into(), REASON_PROPAGATING.into())
    );
    let status = t.fleet("sensors").status.unwrap();
    assert_eq!(status.pods_confirmed, Some(0));
    let first = status.revision.unwrap();
    assert!(t.fleets_secret_keys().contains(&"sensors.revoked".into()));
    assert_eq!(t.reconcile("sensors").await, seconds(10));
    assert_eq!(t.pusher.take().len(), 2, "tried again");

    // The pods answer: both confirm, the fleet is Ready.
    t.pusher.unreachable.store(false, Ordering::SeqCst);
    assert_eq!(t.reconcile("sensors").await, Action::requeue(REFRESH));
    let pushed: Vec<String> = t.pusher.take().into_iter().map(|p| p.url).collect();
    assert_eq!(
        pushed,
        [
            "http://10.0.0.7:8080/api/v1/fleets/revocations",
            "http://10.0.0.8:8080/api/v1/fleets/revocations"
        ]
    );
    assert_eq!(t.ready("sensors"), ("True".into(), "InForce".into()));
    assert_eq!(t.fleet("sensors").status.unwrap().pods_confirmed, Some(2));
    // Its next failure waits 5 s again.
    t.pusher.unreachable.store(true, Ordering::SeqCst);
    t.server
        .put(&format!("{NS}/pods/mq-1"), pod("mq-1", "10.0.0.8", 1));
    assert_eq!(t.reconcile("sensors").await, seconds(5), "back off anew");
    assert_eq!(t.pusher.take().len(), 1, "only the restarted pod");
    t.pusher.unreachable.store(false, Ordering::SeqCst);

    // A new revocation: a new revision of the Secret, pushed to both.
    t.put_fleet("sensors", spec(&["s-9", "s-1"]), "2026-12-01T00:00:00Z");
    t.reconcile("sensors").await;
    let status = t.fleet("sensors").status.unwrap();
    let second = status.revision.unwrap();
    assert!(second > first, "{second} after {first}");
    let pushes = t.pusher.take();
    assert_eq!(pushes.len(), 2);
    assert!(
        pushes
            .iter()
            .all(|p| p.body.contains(&format!("revision = {second}"))
                && p.body.contains("device s-1"))
    );
    let secret = t.server.get(&format!("{NS}/secrets/mq-fleets")).unwrap();
    assert_eq!(secret["data"]["revision"], base64(&second.to_string()));

    // A restarted broker container reads the files and is pushed again;
    // the other pod is not.
    t.server
        .put(&format!("{NS}/pods/mq-0"), pod("mq-0", "10.0.0.7", 1));
    t.reconcile("sensors").await;
    let pushed: Vec<String> = t.pusher.take().into_iter().map(|p| p.url).collect();
    assert_eq!(pushed, ["http://10.0.0.7:8080/api/v1/fleets/revocations"]);
}

#[tokio::test]
async fn a_status_write_does_not_reconcile_a_fleet_a_spec_change_does() {
    let t = Test::new();
    t.put_fleet(
        "sensors",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived"}),
        "2026-12-01T00:00:00Z",
    );
    let first = t.fleet("sensors");
    let mut online = first.clone();
    online.status = Some(MqttDeviceFleetStatus {
        devices_online: Some(41),
        ..MqttDeviceFleetStatus::default()
    });
    let mut more_online = online.clone();
    more_online.status.as_mut().unwrap().devices_online = Some(42);
    let mut edited = more_online.clone();
    edited.metadata.generation = Some(2);
    let mut deleting = edited.clone();
    deleting.metadata.deletion_timestamp = Some(Time("2026-12-03T00:00:00Z".parse().unwrap()));
    let events = futures::stream::iter(
        [
            watcher::Event::Init,
            watcher::Event::InitApply(first),
            watcher::Event::InitDone,
            // The reconcile's own status writes, devices online changing.
            watcher::Event::Apply(online),
            watcher::Event::Apply(more_online.clone()),
            // The watch restarts and lists everything again.
            watcher::Event::Init,
            watcher::Event::InitApply(more_online),
            watcher::Event::InitDone,
            watcher::Event::Apply(edited),
            watcher::Event::Apply(deleting.clone()),
            watcher::Event::Delete(deleting),
        ]
        .map(Ok),
    );
    let passed: Vec<(Option<i64>, bool)> = watch::changed_or_deleted(events, fleet_fingerprint)
        .map(|fleet| {
            let fleet = fleet.unwrap();
            (
                fleet.metadata.generation,
                fleet.metadata.deletion_timestamp.is_some(),
            )
        })
        .collect()
        .await;
    // The first sight, the new generation, the deletion mark, the deletion.
    assert_eq!(
        passed,
        [
            (Some(1), false),
            (Some(2), false),
            (Some(2), true),
            (Some(2), true)
        ]
    );
}

#[tokio::test]
async fn failures_back_off_per_fleet_until_a_reconcile_works() {
    let t = Test::new();
    for name in ["sensors", "meters"] {
        t.put_fleet(
            name,
            json!({"brokerRef": {"name": "mq"}, "mode": "derived"}),
            "2026-12-01T00:00:00Z",
        );
    }
    let fail = |name: &str| {
        t.server.fail_once(
            Method::PATCH,
            &format!("{FLEETS}/{name}"),
            false,
            500,
            "InternalError",
        )
    };
    let attempt = |name: &'static str| {
        fail(name);
        let fleet = Arc::new(t.fleet(name));
        let ctx = t.ctx.clone();
        async move {
            let error = reconcile(fleet.clone(), ctx.clone()).await.unwrap_err();
            error_policy(fleet, &error, ctx)
        }
    };
    let seconds = |s| Action::requeue(Duration::from_secs(s));
    let mut delays = Vec::new();
    for _ in 0..3 {
        delays.push(attempt("sensors").await);
    }
    assert_eq!(delays, [seconds(5), seconds(10), seconds(20)]);
    // Another fleet's failures are its own.
    assert_eq!(attempt("meters").await, seconds(5));
    // Once a reconcile of the fleet works, its next failure waits 5 s again.
    t.reconcile("sensors").await;
    let mut without_finalizer = t.server.get(&format!("{FLEETS}/sensors")).unwrap();
    without_finalizer["metadata"]["finalizers"] = json!([]);
    t.server
        .put(&format!("{FLEETS}/sensors"), without_finalizer);
    assert_eq!(attempt("sensors").await, seconds(5));
}
