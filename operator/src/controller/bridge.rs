//! The `MqttBridge` controller: one bridge's objects and status.
//!
//! Each reconcile plans the bridge ([`plan_bridge`]), applies its five
//! objects (server-side apply: the MqttUser, the ConfigMap, the two
//! Services and the StatefulSet, whose apply answer carries the ready pod
//! count), reads each pod's `GET /status` (messages forwarded, failed,
//! dead-lettered, lag, last error), and writes the status only when it
//! changed. Events tell state changes: Ready or not, a new error, an
//! invalid spec. A steady bridge costs five requests to the API server
//! per reconcile (every 30 seconds, to refresh the counters).
//!
//! A bridge reconciles when its spec changes (its `generation`), when its
//! StatefulSet changes, and every 30 seconds; not on its own status writes
//! (the counters change with every message, so reconciling on them would
//! loop as fast as the API server answers). A failed reconcile is retried
//! after 5 s, doubling per consecutive failure of that bridge up to 5
//! minutes.
//!
//! An invalid spec (an expression that does not parse, say) applies
//! nothing and gets `Ready=False`, reason `InvalidSpec`, naming the field.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::bridge::{BridgeErrorStatus, CONDITION_BRIDGE_READY};
use crate::api::{MqttBridge, MqttBridgeStatus};
use crate::plan::bridge::{plan_bridge, BridgeNames, BridgePlan, BRIDGE_APP, BRIDGE_HTTP_PORT};
use crate::plan::{MANAGER, NAME_LABEL};

use super::{backoff, watch};

/// How often a bridge's counters are refreshed.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Why a bridge reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The error.
        source: kube::Error,
    },
}

/// A future answering a pod's `GET /status`.
pub type StatusFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// Reads a bridge pod's status; tests answer without a network.
pub trait StatusReader: Send + Sync {
    /// `GET /status` of the pod at `host`.
    fn read(&self, host: String) -> StatusFuture;
}

/// Reads `/status` over HTTP on port 9090.
pub struct HttpStatusReader;

impl StatusReader for HttpStatusReader {
    fn read(&self, host: String) -> StatusFuture {
        Box::pin(async move {
            let body = super::pod_http::get_body(&host, BRIDGE_HTTP_PORT, "/status").await?;
            serde_json::from_str(&body).map_err(|e| format!("{host}: /status is not JSON: {e}"))
        })
    }
}

/// What the bridge controller needs.
pub struct BridgeContext {
    /// The API client.
    pub client: Client,
    /// How pods' status is read.
    pub status: Arc<dyn StatusReader>,
    /// The bridge image, when the operator is told one.
    pub image: Option<String>,
    /// Who publishes the Events.
    pub reporter: Reporter,
    /// Consecutive failed reconciles per bridge, for the backoff.
    pub failures: Failures,
}

/// Consecutive failures per object (`namespace/name`).
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `key`; how many in a row now.
    pub fn record(&self, key: &str) -> u32 {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `key` after it worked.
    pub fn clear(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

fn failure_key(bridge: &MqttBridge) -> String {
    format!(
        "{}/{}",
        bridge.namespace().unwrap_or_default(),
        bridge.name_any()
    )
}

/// What a reconcile acts on in the bridge itself: its spec. Its status
/// (written by the reconcile, counters included) is not part of it.
pub fn bridge_fingerprint(bridge: &MqttBridge) -> u64 {
    bridge.metadata.generation.unwrap_or_default() as u64
}

impl BridgeContext {
    /// A context reading pods over HTTP.
    pub fn new(client: Client, image: Option<String>) -> BridgeContext {
        BridgeContext {
            client,
            status: Arc::new(HttpStatusReader),
            image,
            reporter: Reporter {
                controller: MANAGER.to_owned(),
                instance: std::env::var("HOSTNAME").ok(),
            },
            failures: Failures::default(),
        }
    }
}

/// The controller of every `MqttBridge` in `namespace` (all when `None`).
pub fn controller(
    client: &Client,
    namespace: Option<&str>,
) -> impl Future<Output = ()> + Send + 'static {
    let (bridges, sets): (Api<MqttBridge>, Api<StatefulSet>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let context = Arc::new(BridgeContext::new(client.clone(), None));
    let (store, writer) = reflector::store();
    let changed = watch::changed_or_deleted(
        reflector(
            writer,
            watcher(bridges, watcher::Config::default()).default_backoff(),
        ),
        bridge_fingerprint,
    );
    Controller::for_stream(changed, store)
        .owns(
            sets,
            watcher::Config::default().labels(&format!("{NAME_LABEL}={BRIDGE_APP}")),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((bridge, _)) => tracing::debug!(bridge = %bridge, "reconciled"),
                Err(error) => tracing::warn!(%error, "bridge controller"),
            }
        })
}

/// Retries a failed reconcile with the brokers' backoff, per bridge.
pub fn error_policy(
    bridge: Arc<MqttBridge>,
    error: &BridgeError,
    ctx: Arc<BridgeContext>,
) -> Action {
    let failures = ctx.failures.record(&failure_key(&bridge));
    let delay = backoff(failures);
    tracing::warn!(
        namespace = bridge.namespace().unwrap_or_default(),
        bridge = bridge.name_any(),
        %error,
        failures,
        retry_in_seconds = delay.as_secs(),
        "bridge reconcile failed"
    );
    Action::requeue(delay)
}

/// Reconciles one bridge (see the module documentation).
pub async fn reconcile(
    bridge: Arc<MqttBridge>,
    ctx: Arc<BridgeContext>,
) -> Result<Action, BridgeError> {
    let result = reconcile_bridge(&bridge, &ctx).await;
    if result.is_ok() {
        ctx.failures.clear(&failure_key(&bridge));
    }
    result
}

async fn reconcile_bridge(bridge: &MqttBridge, ctx: &BridgeContext) -> Result<Action, BridgeError> {
    let namespace = bridge.namespace().unwrap_or_default();
    let old = bridge.status.clone().unwrap_or_default();
    let plan = match plan_bridge(bridge, ctx.image.as_deref()) {
        Ok(plan) => plan,
        Err(error) => {
            let mut status = old.clone();
            status.observed_generation = bridge.metadata.generation;
            set_ready(&mut status, false, "InvalidSpec", &error.to_string());
            publish_status(bridge, ctx, &old, status).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    let ready_replicas = apply_plan(&ctx.client, &namespace, &plan).await?;
    let replicas = bridge.spec.replicas;
    let names = BridgeNames::new(&bridge.name_any());
    let mut pods = Vec::new();
    for ordinal in 0..replicas {
        let host = format!(
            "{}-{ordinal}.{}.{namespace}.svc",
            names.workload, names.pods_service
        );
        match ctx.status.read(host).await {
            Ok(status) => pods.push(status),
            Err(error) => tracing::debug!(%error, "bridge pod status"),
        }
    }
    let mut status = aggregate(&old, &pods);
    status.observed_generation = bridge.metadata.generation;
    status.replicas = replicas;
    status.ready_replicas = ready_replicas;
    let connected = pods.iter().filter(|p| p["connected"] == true).count() as i32;
    if replicas == 0 {
        set_ready(&mut status, false, "ScaledToZero", "spec.replicas is 0");
    } else if ready_replicas < replicas {
        set_ready(
            &mut status,
            false,
            "Starting",
            &format!("{ready_replicas} of {replicas} pods ready"),
        );
    } else if connected < replicas {
        set_ready(
            &mut status,
            false,
            "NotConnected",
            &format!("{connected} of {replicas} pods connected to the broker"),
        );
    } else {
        set_ready(
            &mut status,
            true,
            "Running",
            &format!("{replicas} pods subscribed"),
        );
    }
    publish_status(bridge, ctx, &old, status).await?;
    Ok(Action::requeue(REFRESH))
}

/// Applies the plan's objects; returns the StatefulSet's ready pods.
async fn apply_plan(
    client: &Client,
    namespace: &str,
    plan: &BridgePlan,
) -> Result<i32, BridgeError> {
    apply(client, namespace, &plan.user).await?;
    apply(client, namespace, &plan.config_map).await?;
    apply(client, namespace, &plan.service).await?;
    apply(client, namespace, &plan.pods_service).await?;
    let set: StatefulSet = apply(client, namespace, &plan.stateful_set).await?;
    Ok(set.status.and_then(|s| s.ready_replicas).unwrap_or(0))
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, BridgeError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| BridgeError::Api {
        action: format!("apply {} {name}", K::kind(&())),
        source,
    })
}

/// Sums the pods' counters; the newest error wins.
pub fn aggregate(old: &MqttBridgeStatus, pods: &[Value]) -> MqttBridgeStatus {
    let sum = |field: &str| pods.iter().filter_map(|p| p[field].as_i64()).sum::<i64>();
    let last_error = pods
        .iter()
        .filter_map(|p| {
            let error = &p["lastError"];
            Some(BridgeErrorStatus {
                route: error["route"].as_str()?.to_owned(),
                message: error["message"].as_str()?.to_owned(),
                time: error["time"].as_str()?.to_owned(),
            })
        })
        .max_by(|a, b| a.time.cmp(&b.time))
        .or_else(|| old.last_error.clone());
    MqttBridgeStatus {
        conditions: old.conditions.clone(),
        forwarded: sum("forwarded"),
        failed: sum("failed"),
        dead_lettered: sum("deadLettered"),
        lag: sum("lag"),
        last_error,
        ..MqttBridgeStatus::default()
    }
}

/// Sets the Ready condition, keeping its transition time when unchanged.
fn set_ready(status: &mut MqttBridgeStatus, ready: bool, reason: &str, message: &str) {
    let generation = status.observed_generation;
    super::status::set_condition(
        &mut status.conditions,
        CONDITION_BRIDGE_READY,
        ready,
        reason,
        message,
        generation,
    );
}

fn ready_of(status: &MqttBridgeStatus) -> Option<(&str, &str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_BRIDGE_READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Writes the status if it changed, and tells the changes in Events.
async fn publish_status(
    bridge: &MqttBridge,
    ctx: &BridgeContext,
    old: &MqttBridgeStatus,
    status: MqttBridgeStatus,
) -> Result<(), BridgeError> {
    if &status == old {
        return Ok(());
    }
    let api: Api<MqttBridge> =
        Api::namespaced(ctx.client.clone(), &bridge.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &bridge.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| BridgeError::Api {
        action: "write the status".into(),
        source,
    })?;
    let mut events = Vec::new();
    if ready_of(&status) != ready_of(old) {
        if let Some(condition) = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_BRIDGE_READY)
        {
            let ready = condition.status == "True";
            events.push(Event {
                type_: if ready {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: condition.reason.clone(),
                note: Some(condition.message.clone()),
                action: if ready {
                    "Ready".into()
                } else {
                    "NotReady".into()
                },
                secondary: None,
            });
        }
    }
    if status.last_error != old.last_error {
        if let Some(error) = &status.last_error {
            let note: String = format!("{}: {}", error.route, error.message)
                .chars()
                .take(1000)
                .collect();
            events.push(Event {
                type_: EventType::Warning,
                reason: "BridgeError".into(),
                note: Some(note),
                action: "Forward".into(),
                secondary: None,
            });
        }
    }
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for event in events {
        if let Err(error) = recorder.publish(&event, &bridge.object_ref(&())).await {
            tracing::warn!(%error, "cannot publish an Event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
