//! The broker controller with `spec.cluster` and `spec.autoscaling`,
//! against the fake API server: managed and external NATS, the autoscaler
//! added, changed and removed, the PodDisruptionBudget following the
//! replicas, and what a cluster cannot be.

use serde_json::{json, Value};

use super::broker::CLUSTER_REQUEUE;
use super::rebalance::{CONDITION_REBALANCING, IDLE_RECHECK};
use super::tests::{
    condition, event_post, events, lines, pair, reads, status_patch, written_status, Test, BROKER,
    PDB, STATEFUL_SET,
};
use crate::api::{CONDITION_CLUSTER_DEGRADED, REASON_REPLICA_DOWN};
use crate::plan;
use crate::plan::rebalance::REASON_BALANCED;
use kube::runtime::controller::Action;

const NATS_STS: &str = "/apis/apps/v1/namespaces/iot/statefulsets/mq-nats";
const NATS_PDB: &str = "/apis/policy/v1/namespaces/iot/poddisruptionbudgets/mq-nats";
const NATS_CONFIG: &str = "/api/v1/namespaces/iot/configmaps/mq-nats-config";
const NATS_CA: &str = "/api/v1/namespaces/iot/secrets/mq-nats-ca";
const NATS_TLS: &str = "/api/v1/namespaces/iot/secrets/mq-nats-tls";
const NATS_CLIENT: &str = "/api/v1/namespaces/iot/secrets/mq-nats-client";
const NATS_HEADLESS: &str = "/api/v1/namespaces/iot/services/mq-nats-headless";
const NATS_SERVICE: &str = "/api/v1/namespaces/iot/services/mq-nats";
const HPA: &str = "/apis/autoscaling/v2/namespaces/iot/horizontalpodautoscalers/mq";
const SCALED_OBJECT: &str = "/apis/keda.sh/v1alpha1/namespaces/iot/scaledobjects/mq";
const CONFIG_MAP: &str = "/api/v1/namespaces/iot/configmaps/mq-config";

/// What a reconcile of a broker with a managed NATS reads besides the
/// default broker's reads: the NATS ConfigMap, StatefulSet and budget (its
/// Secrets and Services come in the broker's lists).
fn nats_reads() -> Vec<String> {
    let mut expected = reads();
    let at = expected
        .iter()
        .position(|line| line.starts_with(&format!("GET {PDB}")))
        .expect("the PDB read")
        + 1;
    for (offset, path) in [NATS_CONFIG, NATS_STS, NATS_PDB].iter().enumerate() {
        expected.insert(at + offset, format!("GET {path}"));
    }
    expected
}

fn managed(replicas: i32) -> Value {
    json!({"replicas": replicas, "cluster": {"nats": {"managed": {}}}})
}

/// Metrics of a broker pod with `connections` clients, reaching NATS or
/// not.
fn metrics(connections: i64, connected: bool) -> String {
    format!(
        "kubemqtt_connections{{listener=\"mqtt\"}} {connections}\nkubemqtt_connections{{listener=\"mqtts\"}} 0\nkubemqtt_clients_connected {connections}\nkubemqtt_cluster_connected {}\n",
        u8::from(connected)
    )
}

impl Test {
    /// `n` broker pods `mq-<i>` at 10.0.0.<10+i>, all ready, the
    /// StatefulSet rolled out.
    fn broker_pods(&self, n: i32) {
        for i in 0..n {
            self.server.put(
                &format!("/api/v1/namespaces/iot/pods/mq-{i}"),
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": format!("mq-{i}"),
                        "namespace": "iot",
                        "uid": format!("9f2c1b3a-0000-4000-8000-00000000001{i}"),
                        "labels": plan::selector_labels("mq"),
                    },
                    "status": {
                        "podIP": format!("10.0.0.{}", 10 + i),
                        "conditions": [{
                            "type": "Ready", "status": "True",
                            "lastTransitionTime": "2025-01-01T00:00:00Z",
                        }],
                        "containerStatuses": [{
                            "name": "broker", "restartCount": 0, "ready": true,
                            "image": "broker", "imageID": "",
                        }],
                    },
                }),
            );
        }
        self.replicas_ready(STATEFUL_SET, n, n);
    }

    /// `ready` of `replicas` pods of the StatefulSet at `path` are ready.
    fn replicas_ready(&self, path: &str, replicas: i32, ready: i32) {
        let sts = self.server.get(path).expect("statefulset");
        self.server.set_status(
            path,
            json!({
                "observedGeneration": sts["metadata"]["generation"].clone(),
                "replicas": replicas,
                "readyReplicas": ready,
                "updatedReplicas": replicas,
                "currentRevision": "r1",
                "updateRevision": "r1",
            }),
        );
    }

    /// A clustered broker with `spec`, created and running: its pods and
    /// its NATS ready, its load balancer addressed, reconciled until
    /// nothing is left to do.
    async fn cluster(spec: Value, pods: i32) -> Test {
        let test = Test::new(spec, json!({}));
        test.reconcile().await.expect("creates");
        test.broker_pods(pods);
        if test.server.get(NATS_STS).is_some() {
            test.replicas_ready(NATS_STS, 3, 3);
        }
        test.load_balancer("203.0.113.7");
        test.pod_metrics.answer(Some(&metrics(100, true)));
        test.reconcile().await.expect("sees the pods");
        test.reconcile().await.expect("settles");
        test.server.take_requests();
        test.pushes.take();
        test.pod_metrics.take_reads();
        test
    }
}

fn status_of(test: &Test) -> crate::api::MqttBrokerStatus {
    test.server.broker(BROKER).status.expect("a status")
}

#[tokio::test]
async fn first_reconcile_of_a_broker_with_a_managed_nats() {
    let test = Test::new(managed(3), json!({}));
    let action = test.reconcile().await.expect("creates");
    let requests = test.server.take_requests();
    let applied: Vec<String> = requests
        .iter()
        .filter(|r| {
            r.method == http::Method::PATCH
                && !r.is_dry_run()
                && r.path != super::tests::BROKER_STATUS
        })
        .filter(|r| !r.path.contains("/events"))
        .map(|r| r.path.clone())
        .collect();
    // NATS first (its Secrets, configuration, Services, servers and
    // budget), then the broker, whose budget exists with 3 replicas.
    for path in [
        NATS_CA,
        NATS_TLS,
        NATS_CLIENT,
        NATS_CONFIG,
        NATS_HEADLESS,
        NATS_SERVICE,
        NATS_STS,
        NATS_PDB,
        STATEFUL_SET,
        PDB,
    ] {
        assert!(applied.contains(&path.to_owned()), "{path} in {applied:?}");
    }
    let position = |path: &str| applied.iter().position(|p| p == path).unwrap();
    assert!(position(NATS_STS) < position(STATEFUL_SET));
    // Every applied object was tried as a dry run first.
    let dry_runs = requests.iter().filter(|r| r.is_dry_run()).count();
    assert_eq!(dry_runs, applied.len());
    assert_eq!(&lines(&requests)[..10], &nats_reads()[..10]);

    let sts = test.server.get(STATEFUL_SET).unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);
    let config = test.server.get(CONFIG_MAP).unwrap()["data"]["broker.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(config.contains("[cluster]"), "{config}");
    assert!(
        config.contains("tls://mq-nats-0.mq-nats-headless.iot.svc.cluster.local:4222"),
        "{config}"
    );

    // Nothing is ready yet: NATS has no quorum.
    let status = written_status(&requests);
    let nats = status.nats.clone().expect("NATS in the status");
    assert_eq!(
        (nats.mode.as_str(), nats.state.as_str()),
        ("Managed", "QuorumLost")
    );
    assert_eq!(nats.ready_servers, Some(0));
    assert_eq!(
        condition(&status, CONDITION_CLUSTER_DEGRADED),
        pair("True", "NatsQuorumLost")
    );
    // The pods had no address: no metrics read, no connections known; back
    // soon to push the credentials to the pods once they exist.
    assert_eq!(status.connections, None);
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
}

#[tokio::test]
async fn a_steady_clustered_broker_reads_and_writes_nothing_else() {
    let test = Test::cluster(managed(3), 3).await;
    let status = status_of(&test);
    assert_eq!(status.connections, Some(300));
    let nats = status.nats.clone().unwrap();
    assert_eq!(
        (
            nats.state.as_str(),
            nats.ready_servers,
            nats.connected_brokers
        ),
        ("Ready", Some(3), Some(3))
    );
    assert_eq!(
        condition(&status, CONDITION_CLUSTER_DEGRADED),
        pair("False", "ClusterHealthy")
    );
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));

    test.pod_metrics.take_admin_requests();
    let action = test.reconcile().await.expect("steady");
    let requests = test.server.take_requests();
    // Ten reads (the default broker's seven, and NATS's ConfigMap,
    // StatefulSet and budget), no write; one metrics read per pod, for the
    // status and the replicas' step both.
    assert_eq!(lines(&requests), nats_reads());
    assert_eq!(requests.len(), 10);
    assert_eq!(test.pod_metrics.take_reads(), 3);
    // The replicas' step reads no metrics of its own and sheds nothing.
    let admin = test.pod_metrics.take_admin_requests();
    assert!(admin.is_empty(), "{admin:?}");
    let status = status_of(&test);
    assert_eq!(
        condition(&status, CONDITION_REBALANCING),
        pair("False", REASON_BALANCED)
    );
    // Back when the idle rebalance check is due (before the status's).
    assert!(IDLE_RECHECK < CLUSTER_REQUEUE);
    assert_eq!(action, Action::requeue(IDLE_RECHECK));
}

#[tokio::test]
async fn a_broker_or_nats_server_down_degrades_the_cluster() {
    let test = Test::cluster(managed(3), 3).await;
    test.replicas_ready(STATEFUL_SET, 3, 2);
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(
        condition(&status, CONDITION_CLUSTER_DEGRADED),
        pair("True", REASON_REPLICA_DOWN)
    );
    test.replicas_ready(STATEFUL_SET, 3, 3);
    test.replicas_ready(NATS_STS, 3, 1);
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(status.nats.clone().unwrap().state, "QuorumLost");
    assert_eq!(
        condition(&status, CONDITION_CLUSTER_DEGRADED),
        pair("True", "NatsQuorumLost")
    );
    // One server down keeps the quorum.
    test.replicas_ready(NATS_STS, 3, 2);
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(status.nats.clone().unwrap().state, "Degraded");
    assert_eq!(
        condition(&status, CONDITION_CLUSTER_DEGRADED),
        pair("False", "QuorumKept")
    );
}

#[tokio::test]
async fn an_external_nats_is_judged_by_the_brokers() {
    let spec = json!({
        "replicas": 2,
        "cluster": {"nats": {"external": {
            "urls": ["tls://nats.corp:4222"],
            "credentials": {"type": "Creds", "secretName": "nats-creds"},
            "tls": {"caSecretName": "corp-ca"},
        }}},
    });
    let test = Test::new(spec, json!({}));
    test.reconcile().await.expect("creates");
    let requests = test.server.take_requests();
    // No NATS of the operator's: the default reads only.
    assert_eq!(&lines(&requests)[..7], &reads()[..]);
    assert!(test.server.get(NATS_STS).is_none());
    let status = written_status(&requests);
    let nats = status.nats.clone().unwrap();
    assert_eq!(
        (nats.mode.as_str(), nats.state.as_str()),
        ("External", "Unknown")
    );
    assert_eq!(nats.urls, ["tls://nats.corp:4222"]);
    let sts = test.server.get(STATEFUL_SET).unwrap();
    let volumes = sts["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains("nats-creds") && volumes.contains("corp-ca"),
        "{volumes}"
    );

    test.broker_pods(2);
    test.pod_metrics.answer(Some(&metrics(7, false)));
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(status.nats.clone().unwrap().state, "Unreachable");
    assert_eq!(
        condition(&status, CONDITION_CLUSTER_DEGRADED),
        pair("True", "NatsUnreachable")
    );
    assert_eq!(status.connections, Some(14));
    test.pod_metrics.answer(Some(&metrics(7, true)));
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(status.nats.unwrap().state, "Ready");
}

#[tokio::test]
async fn the_hpa_is_added_changed_and_removed() {
    let test = Test::cluster(managed(2), 2).await;
    assert!(test.server.get(HPA).is_none());
    test.edit(|broker| {
        broker["spec"]["autoscaling"] =
            json!({"minReplicas": 2, "maxReplicas": 6, "targets": {"connectionsPerReplica": 5000}});
    });
    test.reconcile().await.expect("adds the HPA");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("GET {HPA}")));
    assert!(lines(&requests).contains(&format!("PATCH {HPA}")));
    let hpa = test.server.get(HPA).expect("an HPA");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "MqttBroker");
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(
        written_status(&requests).autoscaler.as_deref(),
        Some("HorizontalPodAutoscaler mq")
    );
    // The drain of a pod holding 5,000 clients takes longer than the
    // default 30 seconds.
    let grace = test.server.get(STATEFUL_SET).unwrap()["spec"]["template"]["spec"]
        ["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    assert!(grace > 10, "{grace}");

    // The autoscaler scales through the scale subresource: the operator
    // follows spec.replicas and leaves the HPA alone.
    test.edit(|broker| broker["spec"]["replicas"] = json!(4));
    test.reconcile().await.expect("scales");
    let requests = test.server.take_requests();
    assert!(!lines(&requests).contains(&format!("PATCH {HPA}")));
    assert_eq!(
        test.server.get(STATEFUL_SET).unwrap()["spec"]["replicas"],
        4
    );

    test.edit(|broker| broker["spec"]["autoscaling"]["maxReplicas"] = json!(9));
    test.reconcile().await.expect("changes the HPA");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("PATCH {HPA}")));
    assert_eq!(test.server.get(HPA).unwrap()["spec"]["maxReplicas"], 9);

    test.edit(|broker| {
        broker["spec"]
            .as_object_mut()
            .unwrap()
            .remove("autoscaling");
    });
    test.reconcile().await.expect("removes the HPA");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("DELETE {HPA}")));
    assert!(test.server.get(HPA).is_none());
    assert_eq!(written_status(&requests).autoscaler, None);
    assert!(lines(&requests).contains(&event_post()));
    // Gone and forgotten: not even read any more.
    test.reconcile().await.expect("steady");
    let requests = test.server.take_requests();
    assert!(!lines(&requests)
        .iter()
        .any(|l| l.contains("horizontalpodautoscalers")));
    // spec.replicas stays where the autoscaler left it.
    assert_eq!(
        test.server.get(STATEFUL_SET).unwrap()["spec"]["replicas"],
        4
    );
}

#[tokio::test]
async fn keda_replaces_the_hpa() {
    let test = Test::cluster(managed(2), 2).await;
    let autoscaling = json!({"maxReplicas": 6, "targets": {"cpuUtilization": 70}});
    test.edit(|broker| broker["spec"]["autoscaling"] = autoscaling.clone());
    test.reconcile().await.expect("adds the HPA");
    assert!(test.server.get(HPA).is_some());
    test.server.take_requests();
    test.edit(|broker| {
        broker["spec"]["autoscaling"]["provider"] = json!("keda");
        broker["spec"]["autoscaling"]["keda"] =
            json!({"prometheusServerAddress": "http://prometheus:9090"});
    });
    test.reconcile().await.expect("switches");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("PATCH {SCALED_OBJECT}")));
    assert!(lines(&requests).contains(&format!("DELETE {HPA}")));
    assert!(test.server.get(HPA).is_none());
    assert_eq!(
        written_status(&requests).autoscaler.as_deref(),
        Some("ScaledObject mq")
    );
}

#[tokio::test]
async fn the_budget_follows_the_replicas_and_nats_goes_with_the_spec() {
    let test = Test::cluster(managed(3), 3).await;
    assert!(test.server.get(PDB).is_some());
    test.edit(|broker| broker["spec"]["replicas"] = json!(1));
    test.reconcile().await.expect("scales down");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("DELETE {PDB}")));
    assert!(test.server.get(PDB).is_none());

    // The managed NATS replaced by an external one: its objects go (its
    // volumes, which the StatefulSet keeps, stay).
    test.edit(|broker| {
        broker["spec"]["cluster"] = json!({"nats": {"external": {"urls": ["nats://n:4222"]}}});
    });
    test.reconcile().await.expect("switches NATS");
    let requests = test.server.take_requests();
    for path in [
        NATS_STS,
        NATS_PDB,
        NATS_CONFIG,
        NATS_CA,
        NATS_TLS,
        NATS_CLIENT,
        NATS_HEADLESS,
        NATS_SERVICE,
    ] {
        assert!(
            lines(&requests).contains(&format!("DELETE {path}")),
            "{path}: {:?}",
            lines(&requests)
        );
        assert!(test.server.get(path).is_none(), "{path}");
    }
    let status = written_status(&requests);
    assert_eq!(status.nats.unwrap().mode, "External");
    // Forgotten: the next reconcile reads the default broker's objects only.
    test.reconcile().await.expect("steady");
    assert_eq!(lines(&test.server.take_requests()), reads());
}

#[tokio::test]
async fn replicas_above_one_without_a_cluster_are_refused_in_the_status() {
    // As an apiserver without the CRD's CEL rules would store it.
    let test = Test::new(json!({"replicas": 3}), json!({}));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    let mut expected = reads();
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected, "nothing applied");
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "InvalidSpec"));
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .message;
    assert!(
        message.contains("replicas above 1 need spec.cluster"),
        "{message}"
    );
    assert!(status
        .conditions
        .iter()
        .all(|c| c.type_ != CONDITION_CLUSTER_DEGRADED));

    // Persistence cannot go with a cluster either.
    let test = Test::new(
        json!({"replicas": 2, "persistence": {"enabled": true}, "cluster": {"nats": {"managed": {}}}}),
        json!({}),
    );
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    assert!(!requests.iter().any(|r| r.is_dry_run()), "nothing applied");
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "InvalidSpec"));
}

#[tokio::test]
async fn a_scaled_up_cluster_is_rebalanced_by_the_reconcile() {
    let test = Test::cluster(managed(3), 3).await;
    // mq-2 came up last and has no clients yet.
    test.pod_metrics
        .answer_for("10.0.0.10", &metrics(150, true));
    test.pod_metrics
        .answer_for("10.0.0.11", &metrics(150, true));
    test.pod_metrics.answer_for("10.0.0.12", &metrics(0, true));
    test.pod_metrics.take_admin_requests();
    test.server.take_requests();

    test.pod_metrics.take_reads();
    let action = test.reconcile().await.expect("rebalances");
    // One metrics read per pod (the status's, which the rebalance uses
    // too), then the sheds alone to the pods.
    assert_eq!(test.pod_metrics.take_reads(), 3);
    let admin = test.pod_metrics.take_admin_requests();
    let sheds: Vec<&String> = admin.iter().filter(|r| r.starts_with("POST ")).collect();
    assert_eq!(sheds.len(), 2, "both full replicas shed: {admin:?}");
    assert_eq!(sheds.len(), admin.len(), "{admin:?}");
    assert!(
        sheds.iter().all(|r| r.contains("/api/v1/shed?count=")),
        "{sheds:?}"
    );
    assert!(!sheds.iter().any(|r| r.contains("10.0.0.12")), "{sheds:?}");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(condition(&status, CONDITION_REBALANCING).0, "True");
    let told = events(&requests);
    assert!(
        told.iter().any(|(_, reason, _)| reason == "Rebalancing"),
        "{told:?}"
    );
    // Back once the round has settled (seconds), not at the idle check.
    let shown = format!("{action:?}");
    let seconds: f64 = shown
        .strip_prefix("Action { requeue_after: Some(")
        .and_then(|rest| rest.strip_suffix("s) }"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    assert!((1.0..=30.0).contains(&seconds), "{shown}");

    // Settling: the next reconcile sends nothing more.
    test.reconcile().await.expect("settling");
    let admin = test.pod_metrics.take_admin_requests();
    assert!(admin.iter().all(|r| !r.starts_with("POST ")), "{admin:?}");
}

#[tokio::test]
async fn each_running_pod_is_read_once_and_a_deleted_one_not_at_all() {
    let test = Test::cluster(managed(3), 3).await;
    // mq-1 is not ready (it still answers), mq-2 is being deleted.
    let pod = |i: i32| format!("/api/v1/namespaces/iot/pods/mq-{i}");
    let mut starting = test.server.get(&pod(1)).expect("mq-1");
    starting["status"]["conditions"][0]["status"] = json!("False");
    test.server.put(&pod(1), starting);
    let mut leaving = test.server.get(&pod(2)).expect("mq-2");
    leaving["metadata"]["deletionTimestamp"] = json!("2025-06-01T12:00:00Z");
    test.server.put(&pod(2), leaving);
    test.pod_metrics.take_admin_requests();

    test.reconcile().await.expect("reconciles");
    assert_eq!(test.pod_metrics.take_reads(), 2, "mq-0 and mq-1, once each");
    let admin = test.pod_metrics.take_admin_requests();
    assert!(admin.is_empty(), "{admin:?}");
    let status = written_status(&test.server.take_requests());
    // The status counts what both answered; the rebalance waits for mq-1.
    assert_eq!(status.connections, Some(200));
    let rebalancing = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_REBALANCING)
        .expect("the Rebalancing condition");
    assert_eq!(rebalancing.reason, "WaitingForReplicas", "{rebalancing:?}");
}
