//! The fleet controller against the fake API server
//! ([`crate::controller::fixtures`]): what a reconcile reads and writes,
//! the broker's fleets Secret, the finalizer, and the status.

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};

use super::*;
use crate::controller::fixtures::{ApiServer, Recorded};

const NS: &str = "/api/v1/namespaces/iot";
const FLEETS: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttdevicefleets";
const BROKER: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq";

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
}

impl Test {
    fn new() -> Test {
        let (client, server) = ApiServer::start();
        server.put(
            BROKER,
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttBroker",
                "metadata": {"name": "mq", "namespace": "iot",
                             "uid": "0b8e1f2a-5d1c-4e0f-9a43-2d6f1c7e9b10"},
                "spec": {"replicas": 1},
            }),
        );
        let ctx = Arc::new(FleetContext {
            client,
            metrics: Arc::new(Pods(3)),
            reporter: Reporter {
                controller: "kubemqtt-operator".into(),
                instance: None,
            },
        });
        Test { server, ctx }
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
            format!("PATCH {FLEETS}/sensors/status"),
        ]
    );
    assert_eq!(t.fleet("sensors").finalizers(), [FINALIZER]);
    assert_eq!(
        t.fleets_secret_keys(),
        ["sensors.revoked", "sensors.secret", "sensors.toml"]
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

    // A steady-state reconcile reads and writes nothing more than it must.
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
        ]
    );
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
        .all(|k| k.starts_with("sensors.")));
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
        .all(|k| k.starts_with("sensors.")));
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
        ["meters.ca.crt", "meters.revoked", "meters.toml"]
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
