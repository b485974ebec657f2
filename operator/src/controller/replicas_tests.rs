//! Rebalance and stuck-rollout recovery against the fake API server, with
//! the broker pods' HTTP answered in memory: which requests each step
//! makes, to the API server and to the pods. The pods come with the
//! `/metrics` the reconcile read (once, for the status too): the step
//! reads none itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::fixtures::ApiServer;
use super::rebalance::{reconcile_rebalance, RebalanceMemory, CONDITION_REBALANCING};
use super::replica_admin::{BrokerHttp, HttpFuture, ObservedPod, PodReplicas, ReplicaAdmin};
use super::rollout::recover_stuck;
use crate::plan::rebalance::RebalanceSettings;
use crate::plan::rollout::PROGRESS_DEADLINE;

const NOW: &str = "2025-06-01T12:00:00Z";
const TOKEN: &str = "admin-token-value";

/// Broker pods: the connections each pod's `/metrics` reports (by pod
/// IP), and every HTTP request made to them, recorded (only sheds are
/// answered).
#[derive(Default)]
struct FakePods {
    connections: Mutex<BTreeMap<String, u64>>,
    requests: Mutex<Vec<String>>,
}

impl FakePods {
    fn with(counts: &[u64]) -> Arc<FakePods> {
        let pods = FakePods::default();
        for (i, count) in counts.iter().enumerate() {
            pods.connections
                .lock()
                .unwrap()
                .insert(format!("10.0.0.{}", 10 + i), *count);
        }
        Arc::new(pods)
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.requests.lock().unwrap())
    }

    /// The `/metrics` text of the pod at `ip`, if it answers.
    fn metrics(&self, ip: &str) -> Option<String> {
        let count = self.connections.lock().unwrap().get(ip).copied()?;
        Some(format!(
            "kubemqtt_clients_connected {count}\nkubemqtt_cluster_connected 1\n"
        ))
    }

    /// `pods` with their `/metrics` as a reconcile reads them.
    fn read(&self, pods: &[Pod]) -> Vec<ObservedPod> {
        pods.iter()
            .map(|pod| ObservedPod {
                pod: pod.clone(),
                metrics: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| self.metrics(ip)),
            })
            .collect()
    }
}

impl BrokerHttp for FakePods {
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        token: Option<&'a str>,
    ) -> HttpFuture<'a> {
        Box::pin(async move {
            let auth = match token {
                Some(token) if token == TOKEN => " (token)",
                Some(_) => " (wrong token)",
                None => "",
            };
            self.requests
                .lock()
                .unwrap()
                .push(format!("{method} {url}{auth}"));
            let rest = url.strip_prefix("http://").ok_or("not http")?;
            let (_, path) = rest.split_once('/').ok_or("no path")?;
            match (method, path) {
                ("POST", shed) if shed.starts_with("api/v1/shed?") => {
                    let count = shed
                        .split(['?', '&'])
                        .find_map(|pair| pair.strip_prefix("count="))
                        .unwrap_or("0");
                    Ok((202, format!("{{\"shedding\":{count},\"rate\":50}}")))
                }
                _ => Ok((404, String::new())),
            }
        })
    }
}

/// Broker pod `mq-<i>` at 10.0.0.<10+i>, Ready since a minute, on
/// `revision`.
fn pod(i: usize, revision: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("mq-{i}"),
            "namespace": "iot",
            "uid": format!("uid-{i}"),
            "labels": {"controller-revision-hash": revision},
            "creationTimestamp": "2025-06-01T11:00:00Z",
        },
        "status": {
            "podIP": format!("10.0.0.{}", 10 + i),
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-06-01T11:59:00Z"}],
            "containerStatuses": [{"name": "broker", "ready": true, "restartCount": 0, "image": "b", "imageID": "b", "state": {"running": {}}}],
        },
    })
}

fn crash_looping(mut pod: serde_json::Value) -> serde_json::Value {
    pod["status"]["conditions"][0]["status"] = json!("False");
    pod["status"]["containerStatuses"][0] = json!({
        "name": "broker", "ready": false, "restartCount": 5, "image": "b", "imageID": "b",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "message": "Error: broker.toml line 3: unknown field `limitz`"}},
    });
    pod
}

fn pods(values: &[serde_json::Value]) -> Vec<Pod> {
    values
        .iter()
        .map(|value| serde_json::from_value(value.clone()).unwrap())
        .collect()
}

/// The replicas of `pods`, with the metrics `http` answers now (as the
/// reconcile read them).
fn admin(client: kube::Client, pods: Vec<Pod>, http: Arc<FakePods>) -> PodReplicas {
    PodReplicas::new(
        client,
        "iot",
        http.read(&pods),
        http,
        8080,
        TOKEN.to_owned(),
        NOW.parse().unwrap(),
    )
}

#[tokio::test]
async fn a_scale_up_rebalance_sheds_from_the_replicas_above_the_mean() {
    let (client, server) = ApiServer::start();
    let http = FakePods::with(&[34, 33, 33, 0]);
    let observed = pods(&[pod(0, "r1"), pod(1, "r1"), pod(2, "r1"), pod(3, "r1")]);
    let admin = admin(client, observed, http.clone());
    let memory = RebalanceMemory::default();
    let now: Timestamp = NOW.parse().unwrap();
    let settings = RebalanceSettings::default();

    let outcome =
        reconcile_rebalance(&admin, &settings, &memory, "iot/mq", None, Some(3), now).await;
    // The sheds alone: the connections came with the pods.
    assert_eq!(
        http.take(),
        [
            "POST http://10.0.0.10:8080/api/v1/shed?count=8&rate=50 (token)",
            "POST http://10.0.0.11:8080/api/v1/shed?count=8&rate=50 (token)",
            "POST http://10.0.0.12:8080/api/v1/shed?count=8&rate=50 (token)",
        ]
    );
    // Nothing asked of the API server: the pods came with the observation.
    assert!(server.take_requests().is_empty());
    let condition = &outcome.condition;
    assert_eq!(
        (
            condition.type_.as_str(),
            condition.status.as_str(),
            condition.reason.as_str()
        ),
        (CONDITION_REBALANCING, "True", "Shedding")
    );
    assert!(
        condition.message.contains("mq-3 0 (mean 25.0"),
        "{}",
        condition.message
    );
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].reason, "Rebalancing");
    assert!(!outcome.events[0].warning);
    // Back when the clients have moved: 8 at 50/s, and 3 s to reconnect.
    assert!(
        outcome.requeue > Duration::from_secs(3) && outcome.requeue < Duration::from_secs(4),
        "{:?}",
        outcome.requeue
    );

    // While the round settles, a reconcile asks nothing of anyone.
    let again = reconcile_rebalance(
        &admin,
        &settings,
        &memory,
        "iot/mq",
        Some(&outcome.condition),
        Some(3),
        now,
    )
    .await;
    assert!(http.take().is_empty());
    assert!(again.events.is_empty());
    assert_eq!(again.condition, outcome.condition);

    // Once settled and balanced (the next reconcile's pods and metrics):
    // one Event saying so, no shed.
    memory.forget("iot/mq");
    *http.connections.lock().unwrap() = [
        ("10.0.0.10".to_owned(), 26),
        ("10.0.0.11".to_owned(), 25),
        ("10.0.0.12".to_owned(), 25),
        ("10.0.0.13".to_owned(), 24),
    ]
    .into();
    let (client, _server) = ApiServer::start();
    let observed = pods(&[pod(0, "r1"), pod(1, "r1"), pod(2, "r1"), pod(3, "r1")]);
    let admin = self::admin(client, observed, http.clone());
    let balanced = reconcile_rebalance(
        &admin,
        &settings,
        &memory,
        "iot/mq",
        Some(&outcome.condition),
        Some(3),
        now,
    )
    .await;
    assert!(http.take().is_empty(), "no shed, no read");
    assert_eq!(balanced.condition.reason, "Balanced");
    assert_eq!(balanced.condition.status, "False");
    assert_eq!(balanced.events.len(), 1);
    assert_eq!(balanced.events[0].reason, "Rebalanced");
}

#[tokio::test]
async fn a_balanced_cluster_makes_no_requests() {
    let (client, server) = ApiServer::start();
    let http = FakePods::with(&[25, 26, 24]);
    let observed = pods(&[pod(0, "r1"), pod(1, "r1"), pod(2, "r1")]);
    let admin = admin(client, observed, http.clone());
    let memory = RebalanceMemory::default();
    let now: Timestamp = NOW.parse().unwrap();
    let outcome = reconcile_rebalance(
        &admin,
        &RebalanceSettings::default(),
        &memory,
        "iot/mq",
        None,
        Some(1),
        now,
    )
    .await;
    assert!(http.take().is_empty());
    assert!(server.take_requests().is_empty());
    assert_eq!(outcome.condition.reason, "Balanced");
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.requeue, super::rebalance::IDLE_RECHECK);
}

#[tokio::test]
async fn a_replica_not_ready_holds_the_rebalance_and_its_metrics_are_not_counted() {
    let (client, _server) = ApiServer::start();
    let http = FakePods::with(&[50, 50, 0]);
    let mut starting = pod(2, "r1");
    starting["status"]["conditions"][0]["status"] = json!("False");
    let admin = admin(
        client,
        pods(&[pod(0, "r1"), pod(1, "r1"), starting]),
        http.clone(),
    );
    let outcome = reconcile_rebalance(
        &admin,
        &RebalanceSettings::default(),
        &RebalanceMemory::default(),
        "iot/mq",
        None,
        None,
        NOW.parse().unwrap(),
    )
    .await;
    assert!(http.take().is_empty());
    assert_eq!(outcome.condition.reason, "WaitingForReplicas");
    assert_eq!(outcome.condition.message, "mq-2 is not ready");
    // mq-2 answered its metrics (the status counts them), but a replica
    // not ready has no connections for the rebalance.
    let connections: Vec<Option<u64>> = admin
        .replicas()
        .await
        .unwrap()
        .iter()
        .map(|r| r.connections)
        .collect();
    assert_eq!(connections, [Some(50), Some(50), None]);
}

/// mq-0 and mq-1 Ready on "good", mq-2 crash-looping on "broken", the
/// StatefulSet rolling out `update`: what [`recover_stuck`] does, with the
/// fake API server (holding mq-2) and the pods' HTTP.
async fn recover_with_update_revision(
    update: &str,
) -> (super::rollout::Recovery, ApiServer, Arc<FakePods>) {
    let (client, server) = ApiServer::start();
    let stuck = crash_looping(pod(2, "broken"));
    server.put("/api/v1/namespaces/iot/pods/mq-2", stuck.clone());
    let observed = pods(&[pod(0, "good"), pod(1, "good"), stuck]);
    let http = FakePods::with(&[]);
    let admin = admin(client, observed.clone(), http.clone());
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "mq"},
        "status": {"replicas": 3, "currentRevision": "good", "updateRevision": update},
    }))
    .unwrap();
    let recovery = recover_stuck(
        &admin,
        Some(&stateful_set),
        &observed,
        PROGRESS_DEADLINE,
        NOW.parse().unwrap(),
    )
    .await;
    (recovery, server, http)
}

#[tokio::test]
async fn a_pod_stuck_on_a_reverted_revision_is_deleted() {
    // The spec was reverted: the StatefulSet rolls out "good" again.
    let (recovery, server, http) = recover_with_update_revision("good").await;
    let requests: Vec<String> = server.take_requests().iter().map(|r| r.line()).collect();
    assert_eq!(requests, ["DELETE /api/v1/namespaces/iot/pods/mq-2"]);
    assert!(server.get("/api/v1/namespaces/iot/pods/mq-2").is_none());
    assert!(http.take().is_empty());
    assert_eq!(recovery.assessment.delete.as_deref(), Some("mq-2"));
    assert_eq!(recovery.events.len(), 1);
    assert_eq!(recovery.events[0].reason, "StuckPodDeleted");
    assert!(
        recovery.events[0].note.contains("CrashLoopBackOff")
            && recovery.events[0].note.contains("kubernetes#67250"),
        "{}",
        recovery.events[0].note
    );
}

#[tokio::test]
async fn a_pod_stuck_on_the_new_revision_is_reported_and_left() {
    let (recovery, server, _http) = recover_with_update_revision("broken").await;
    assert!(server.take_requests().is_empty());
    assert!(server.get("/api/v1/namespaces/iot/pods/mq-2").is_some());
    assert_eq!(recovery.events.len(), 1);
    assert_eq!(recovery.events[0].reason, "RolloutStuck");
    assert!(
        recovery.events[0].note.contains("unknown field `limitz`"),
        "{}",
        recovery.events[0].note
    );
    assert!(recovery.assessment.delete.is_none());
}

#[tokio::test]
async fn a_healthy_rollout_asks_for_nothing() {
    let (client, server) = ApiServer::start();
    let healthy = pods(&[pod(0, "good"), pod(1, "good")]);
    let admin = admin(client, healthy.clone(), FakePods::with(&[]));
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "mq"},
        "status": {"replicas": 2, "currentRevision": "good", "updateRevision": "new"},
    }))
    .unwrap();
    let recovery = recover_stuck(
        &admin,
        Some(&stateful_set),
        &healthy,
        PROGRESS_DEADLINE,
        NOW.parse().unwrap(),
    )
    .await;
    assert!(recovery.events.is_empty());
    assert!(recovery.assessment.delete.is_none());
    assert!(server.take_requests().is_empty());
}

#[tokio::test]
async fn the_replicas_step_sheds_and_publishes_its_events() {
    let (client, server) = ApiServer::start();
    let http = FakePods::with(&[34, 33, 33, 0]);
    let observed = pods(&[pod(0, "r1"), pod(1, "r1"), pod(2, "r1"), pod(3, "r1")]);
    let events = super::events::Events::new(client.clone(), None);
    let memory = RebalanceMemory::default();
    let ctx = super::replicas::ReplicasContext {
        client: &client,
        events: &events,
        http: http.clone(),
        memory: &memory,
    };
    let mut broker = crate::api::MqttBroker::new("mq", crate::api::MqttBrokerSpec::default());
    broker.metadata.namespace = Some("iot".to_owned());
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "mq"},
        "status": {"replicas": 4, "currentRevision": "r1", "updateRevision": "r1"},
    }))
    .unwrap();
    let step = super::replicas::reconcile_replicas(
        &ctx,
        &broker,
        &RebalanceSettings::default(),
        &http.read(&observed),
        Some(&stateful_set),
        TOKEN,
        NOW.parse().unwrap(),
    )
    .await;
    assert_eq!(step.condition.reason, "Shedding");
    // Three sheds, no metrics read: they came with the pods.
    let requests = http.take();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.starts_with("POST ")),
        "{requests:?}"
    );
    // One Event (the round), nothing else asked of the API server.
    let requests: Vec<String> = server.take_requests().iter().map(|r| r.line()).collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("POST /apis/events.k8s.io/v1/namespaces/iot/events"),
        "{requests:?}"
    );
}
