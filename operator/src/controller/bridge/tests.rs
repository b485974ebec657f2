//! The bridge controller against kube's mock API service: which requests a
//! reconcile makes, what it writes, and what it tells in Events.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock;

use super::*;
use crate::api::MqttBridgeSpec;

/// One request: `METHOD path`, and its body.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A mock API server: answers an apply with the object applied (a
/// StatefulSet with `ready` ready pods), a status patch with the bridge,
/// an Event creation with the Event; records every request.
fn api_server(ready: i32) -> (Client, Seen) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let bytes = http_body_util::BodyExt::collect(request.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            record
                .lock()
                .unwrap()
                .push((format!("{method} {path}"), body.clone()));
            let mut answer = body;
            if method == Method::PATCH && path.contains("/statefulsets/") {
                answer["status"] = json!({"replicas": ready, "readyReplicas": ready});
            }
            if path.ends_with("/status") {
                answer = json!({
                    "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttBridge",
                    "metadata": {"name": "plant", "namespace": "iot"},
                    "spec": {"brokerRef": {"name": "mq"}},
                    "status": answer["status"].clone(),
                });
            }
            let status = if method == Method::POST { 201 } else { 200 };
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "iot"), seen)
}

/// Pods' `/status` answers, by host.
struct Pods(Vec<(String, Value)>);

impl StatusReader for Pods {
    fn read(&self, host: String) -> StatusFuture {
        let answer = self
            .0
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("{host}: connection refused"));
        Box::pin(async move { answer })
    }
}

fn pod(forwarded: i64, lag: i64, error: Option<(&str, &str)>) -> Value {
    json!({
        "connected": true,
        "forwarded": forwarded,
        "failed": 1,
        "deadLettered": 2,
        "lag": lag,
        "lastError": error.map(|(message, time)| json!({"route": "readings", "message": message, "time": time})),
    })
}

fn context(client: Client, pods: Vec<Value>) -> Arc<BridgeContext> {
    let hosts = pods
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("plant-bridge-{i}.plant-bridge-pods.iot.svc"), v))
        .collect();
    Arc::new(BridgeContext {
        client,
        status: Arc::new(Pods(hosts)),
        image: None,
        reporter: Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
        failures: Failures::default(),
    })
}

fn bridge(status: Option<MqttBridgeStatus>) -> Arc<MqttBridge> {
    let spec: MqttBridgeSpec =
        serde_saphyr::from_str(crate::plan::bridge::tests::SPEC).expect("the spec parses");
    let mut bridge = MqttBridge::new("plant", spec);
    bridge.metadata.namespace = Some("iot".into());
    bridge.metadata.uid = Some("uid-1".into());
    bridge.metadata.generation = Some(3);
    bridge.status = status;
    Arc::new(bridge)
}

fn lines(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(line, _)| line.clone())
        .collect()
}

const APPLIES: [&str; 5] = [
    "PATCH /apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttusers/plant-bridge",
    "PATCH /api/v1/namespaces/iot/configmaps/plant-bridge-config",
    "PATCH /api/v1/namespaces/iot/services/plant-bridge",
    "PATCH /api/v1/namespaces/iot/services/plant-bridge-pods",
    "PATCH /apis/apps/v1/namespaces/iot/statefulsets/plant-bridge",
];

#[tokio::test]
async fn a_running_bridge_reports_its_pods_counters_then_stays_quiet() {
    let (client, seen) = api_server(2);
    let pods = vec![
        pod(
            100,
            3,
            Some(("PostgreSQL: connection refused", "2026-01-01T00:00:01.000Z")),
        ),
        pod(
            50,
            4,
            Some(("PostgreSQL: timeout", "2026-01-01T00:00:09.000Z")),
        ),
    ];
    let ctx = context(client, pods);
    let action = reconcile(bridge(None), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(REFRESH));
    let requests = lines(&seen);
    assert_eq!(&requests[..5], APPLIES);
    assert_eq!(
        requests[5],
        "PATCH /apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbridges/plant/status"
    );
    let events: Vec<&String> = requests[6..].iter().collect();
    assert!(events.iter().all(|r| r.contains("/events")), "{requests:?}");
    assert_eq!(events.len(), 2, "Ready and the error: {requests:?}");

    let status_body = seen.lock().unwrap()[5].1.clone();
    let status: MqttBridgeStatus = serde_json::from_value(status_body["status"].clone()).unwrap();
    assert_eq!(
        (
            status.forwarded,
            status.failed,
            status.dead_lettered,
            status.lag
        ),
        (150, 2, 4, 7)
    );
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
    assert_eq!(
        status.last_error.as_ref().unwrap().message,
        "PostgreSQL: timeout"
    );
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(ready_of(&status), Some(("True", "Running")));
    let applied_user = seen.lock().unwrap()[0].1.clone();
    assert_eq!(applied_user["kind"], "MqttUser");
    assert_eq!(applied_user["spec"]["brokerRef"]["name"], "mq");

    // The next reconcile finds the same: five applies, nothing else.
    seen.lock().unwrap().clear();
    reconcile(bridge(Some(status)), ctx).await.unwrap();
    assert_eq!(lines(&seen), APPLIES);
}

#[tokio::test]
async fn pods_not_ready_or_not_connected_are_not_ready() {
    let (client, seen) = api_server(1);
    reconcile(bridge(None), context(client, vec![pod(1, 0, None)]))
        .await
        .unwrap();
    let body = seen.lock().unwrap()[5].1.clone();
    let status: MqttBridgeStatus = serde_json::from_value(body["status"].clone()).unwrap();
    assert_eq!(ready_of(&status), Some(("False", "Starting")));

    let (client, seen) = api_server(2);
    let mut away = pod(1, 0, None);
    away["connected"] = json!(false);
    reconcile(bridge(None), context(client, vec![pod(1, 0, None), away]))
        .await
        .unwrap();
    let body = seen.lock().unwrap()[5].1.clone();
    let status: MqttBridgeStatus = serde_json::from_value(body["status"].clone()).unwrap();
    assert_eq!(ready_of(&status), Some(("False", "NotConnected")));
    let event = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(line, _)| line.contains("/events"))
        .map(|(_, body)| body.clone())
        .expect("an Event");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "NotConnected");
}

#[tokio::test]
async fn an_invalid_expression_applies_nothing_and_says_where() {
    let (client, seen) = api_server(0);
    let mut invalid = (*bridge(None)).clone();
    invalid.spec.routes[0].where_ = Some("payload.temp >".into());
    reconcile(Arc::new(invalid), context(client, vec![]))
        .await
        .unwrap();
    let requests = lines(&seen);
    assert_eq!(
        requests[0],
        "PATCH /apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbridges/plant/status"
    );
    assert!(
        requests[1..].iter().all(|r| r.contains("/events")),
        "{requests:?}"
    );
    let body = seen.lock().unwrap()[0].1.clone();
    let condition = &body["status"]["conditions"][0];
    assert_eq!(condition["reason"], "InvalidSpec");
    let message = condition["message"].as_str().unwrap();
    assert!(message.starts_with("spec.routes[0].where:"), "{message}");
}

#[test]
fn aggregation_keeps_the_last_error_when_pods_report_none() {
    let old = MqttBridgeStatus {
        last_error: Some(BridgeErrorStatus {
            route: "r".into(),
            message: "m".into(),
            time: "t".into(),
        }),
        ..MqttBridgeStatus::default()
    };
    let status = aggregate(&old, &[pod(5, 1, None)]);
    assert_eq!(status.last_error, old.last_error);
    assert_eq!(status.forwarded, 5);
}

#[tokio::test]
async fn a_status_write_does_not_reconcile_a_bridge_a_spec_change_does() {
    let first = (*bridge(None)).clone();
    let mut counted = first.clone();
    counted.status = Some(aggregate(&MqttBridgeStatus::default(), &[pod(7, 0, None)]));
    let mut edited = counted.clone();
    edited.metadata.generation = Some(4);
    let events = futures::stream::iter(
        [
            watcher::Event::Init,
            watcher::Event::InitApply(first.clone()),
            watcher::Event::InitDone,
            // The reconcile's own status write, with new counters.
            watcher::Event::Apply(counted.clone()),
            // The watch restarts and lists everything again.
            watcher::Event::Init,
            watcher::Event::InitApply(counted),
            watcher::Event::InitDone,
            watcher::Event::Apply(edited.clone()),
            watcher::Event::Delete(edited),
        ]
        .map(Ok),
    );
    let passed: Vec<Option<i64>> = watch::changed_or_deleted(events, bridge_fingerprint)
        .map(|bridge| bridge.unwrap().metadata.generation)
        .collect()
        .await;
    // The first sight, the new generation and the deletion.
    assert_eq!(passed, [Some(3), Some(4), Some(4)]);
}

/// A mock API server that refuses every request with 500.
fn failing_api_server() -> Client {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((_, send)) = handle.next_request().await {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "message": "etcdserver: request timed out", "code": 500});
            send.send_response(
                Response::builder()
                    .status(500)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, "iot")
}

#[tokio::test]
async fn failures_back_off_per_bridge_until_a_reconcile_works() {
    let ctx = context(failing_api_server(), vec![]);
    let plant = bridge(None);
    let mut other = (*bridge(None)).clone();
    other.metadata.name = Some("dock".into());
    let other = Arc::new(other);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let error = reconcile(plant.clone(), ctx.clone()).await.unwrap_err();
        delays.push(error_policy(plant.clone(), &error, ctx.clone()));
    }
    let seconds = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(delays, [seconds(5), seconds(10), seconds(20)]);
    // Another bridge's failures are its own.
    let error = reconcile(other.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(error_policy(other, &error, ctx.clone()), seconds(5));

    // Once a reconcile of the bridge works, its next failure waits 5 s again.
    let (client, _) = api_server(1);
    let working = Arc::new(BridgeContext {
        client,
        status: Arc::new(Pods(Default::default())),
        image: None,
        reporter: ctx.reporter.clone(),
        failures: Failures::default(),
    });
    working.failures.record(&failure_key(&plant));
    working.failures.record(&failure_key(&plant));
    reconcile(plant.clone(), working.clone()).await.unwrap();
    let error = reconcile(plant.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(error_policy(plant, &error, working), seconds(5));
}
