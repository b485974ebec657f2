//! The `MqttDeviceFleet` controller: the fleet's own Secret (CA or fleet
//! secret), its broker's fleets Secret, and its status.
//!
//! One reconcile of a fleet:
//!
//! 1. Being deleted: its broker's fleets Secret is written without it
//!    (its devices are then refused and disconnected by the broker), and
//!    the operator's finalizer is removed. A fleet without the finalizer
//!    gets it first, so that this step always happens.
//! 2. Its broker is read; without one, `Ready=False` (`BrokerNotFound`).
//! 3. The operator's own Secret of the fleet (`<fleet>-fleet-ca` or
//!    `<fleet>-fleet-secret`) is made when missing, then kept.
//! 4. Every fleet of the broker (oldest first) with the Secrets and
//!    ConfigMaps they name goes through [`BrokerFleets::build`]; the
//!    broker's fleets Secret (`<broker>-fleets`) is applied when it
//!    changed. A fleet that cannot be used is left out and the others stay.
//! 5. The status: Ready (or why not), entries revoked, and devices online
//!    summed from the broker pods' `/metrics`; an Event when Ready changes.
//! 6. Back in a minute: devices online are looked at again.
//!
//! The Secrets and the revocation ConfigMap a fleet names get the
//! [`REFERENCED_LABEL`] (as a broker's and a user's do), and the controller
//! watches the labelled ones (metadata only): a revocation list the team's
//! tooling rewrites, or a CA bundle or key set it rotates, reaches the
//! broker's fleets Secret at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::fleet::CONDITION_FLEET_READY;
use crate::api::{MqttBroker, MqttDeviceFleet, MqttDeviceFleetStatus, REFERENCED_LABEL};
use crate::controller::apply::mark_referenced;
use crate::plan::fleet::{
    fleets_secret_name, own_secret_name, plan_own_secret, BrokerFleets, FleetSources,
};
use crate::plan::{HTTP_PORT, MANAGER};

/// The operator's finalizer on fleets: their devices leave the broker
/// before the fleet goes.
pub const FINALIZER: &str = "kubemqtt.io/fleet";
/// How often a fleet is looked at without a change.
const REFRESH: Duration = Duration::from_secs(60);

/// A fleet reconcile that must be retried.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> FleetError {
    let action = action.into();
    move |source| FleetError::Api { action, source }
}

/// A future of one pod's `/metrics` text.
pub type MetricsFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Reads a broker pod's `/metrics` (tests answer without a network).
pub trait MetricsReader: Send + Sync {
    fn read(&self, host: String) -> MetricsFuture;
}

/// Reads `/metrics` over HTTP on the broker's HTTP port.
pub struct HttpMetricsReader;

impl MetricsReader for HttpMetricsReader {
    fn read(&self, host: String) -> MetricsFuture {
        Box::pin(async move {
            tokio::time::timeout(Duration::from_secs(2), http_get_metrics(&host))
                .await
                .map_err(|_| format!("{host}: no answer within 2s"))?
        })
    }
}

async fn http_get_metrics(host: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((host, HTTP_PORT))
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{host}: not an HTTP response"))?;
    Ok(body.to_owned())
}

/// The devices online of `fleet` in a Prometheus text exposition.
pub fn devices_online(metrics: &str, fleet: &str) -> Option<i64> {
    let sample = format!("kubemqtt_fleet_devices_online{{fleet=\"{fleet}\"}} ");
    metrics.lines().find_map(|line| {
        line.strip_prefix(&sample)?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as i64)
    })
}

/// What the fleet controller needs.
pub struct FleetContext {
    pub client: Client,
    pub metrics: Arc<dyn MetricsReader>,
    pub reporter: Reporter,
}

impl FleetContext {
    /// A context reading the pods' metrics over HTTP.
    pub fn new(client: Client) -> FleetContext {
        FleetContext {
            client,
            metrics: Arc::new(HttpMetricsReader),
            reporter: Reporter {
                controller: MANAGER.to_owned(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        }
    }
}

/// The controller of every `MqttDeviceFleet` in `namespace` (all when
/// `None`).
pub fn controller(
    client: &Client,
    namespace: Option<&str>,
) -> impl Future<Output = ()> + Send + 'static {
    let fleets: Api<MqttDeviceFleet> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let context = Arc::new(FleetContext::new(client.clone()));
    let controller = Controller::new(fleets, watcher::Config::default());
    let (by_secret, by_config_map) = (controller.store(), controller.store());
    let referenced = watcher::Config::default().labels(REFERENCED_LABEL);
    controller
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<Secret>>(client, namespace),
                referenced.clone(),
            )
            .default_backoff()
            .touched_objects(),
            move |secret| fleets_referencing(&by_secret.state(), Referenced::Secret, &secret),
        )
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<ConfigMap>>(client, namespace),
                referenced,
            )
            .default_backoff()
            .touched_objects(),
            move |map| fleets_referencing(&by_config_map.state(), Referenced::ConfigMap, &map),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((fleet, _)) => tracing::debug!(fleet = %fleet, "reconciled"),
                Err(error) => tracing::warn!(%error, "fleet controller"),
            }
        })
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What kind of object a fleet names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referenced {
    Secret,
    ConfigMap,
}

/// The fleets that name `object` (a Secret or ConfigMap of their
/// namespace).
pub fn fleets_referencing<K: Resource>(
    fleets: &[Arc<MqttDeviceFleet>],
    kind: Referenced,
    object: &K,
) -> Vec<ObjectRef<MqttDeviceFleet>> {
    let Some(name) = object.meta().name.as_deref() else {
        return Vec::new();
    };
    let namespace = object.meta().namespace.as_deref();
    fleets
        .iter()
        .filter(|fleet| fleet.namespace().as_deref() == namespace)
        .filter(|fleet| match kind {
            Referenced::Secret => referenced_secrets(fleet).iter().any(|s| s == name),
            Referenced::ConfigMap => fleet
                .spec
                .revocations
                .config_map_key_ref
                .as_ref()
                .is_some_and(|r| r.name == name),
        })
        .map(|fleet| ObjectRef::from_obj(fleet.as_ref()))
        .collect()
}

/// Retries a failed reconcile after a while.
pub fn error_policy(_: Arc<MqttDeviceFleet>, error: &FleetError, _: Arc<FleetContext>) -> Action {
    tracing::warn!(%error, "fleet reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

/// Reconciles one fleet (see the module documentation).
pub async fn reconcile(
    fleet: Arc<MqttDeviceFleet>,
    ctx: Arc<FleetContext>,
) -> Result<Action, FleetError> {
    let namespace = fleet.namespace().unwrap_or_default();
    let name = fleet.name_any();
    let fleets: Api<MqttDeviceFleet> = Api::namespaced(ctx.client.clone(), &namespace);
    let brokers: Api<MqttBroker> = Api::namespaced(ctx.client.clone(), &namespace);
    let broker_name = &fleet.spec.broker_ref.name;
    let has_finalizer = fleet.finalizers().iter().any(|f| f == FINALIZER);

    if fleet.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            if let Some(broker) = brokers
                .get_opt(broker_name)
                .await
                .map_err(api_error("read the broker"))?
            {
                rebuild(&ctx, &broker, Some(&name)).await?;
            }
            let finalizers: Vec<String> = fleet
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            set_finalizers(&fleets, &fleet, finalizers).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut finalizers = fleet.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        set_finalizers(&fleets, &fleet, finalizers).await?;
    }

    let old = fleet.status.clone().unwrap_or_default();
    let mut status = MqttDeviceFleetStatus {
        observed_generation: fleet.metadata.generation,
        conditions: old.conditions.clone(),
        devices_online: old.devices_online,
        secret_name: own_secret_name(&fleet),
        ..MqttDeviceFleetStatus::default()
    };
    let Some(broker) = brokers
        .get_opt(broker_name)
        .await
        .map_err(api_error("read the broker"))?
    else {
        set_ready(
            &mut status,
            false,
            "BrokerNotFound",
            &format!("no MqttBroker {broker_name} in namespace {namespace}"),
        );
        status.devices_online = None;
        publish_status(&fleet, &ctx, &old, status).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    };

    ensure_own_secret(&ctx, &fleet).await?;
    let built = rebuild(&ctx, &broker, None).await?;
    match built.refused.get(&name) {
        Some(error) => set_ready(&mut status, false, error.reason(), &error.to_string()),
        None if built.included.contains(&name) => set_ready(
            &mut status,
            true,
            "InForce",
            &format!(
                "in Secret {} of broker {broker_name}",
                fleets_secret_name(broker_name)
            ),
        ),
        None => set_ready(&mut status, false, "Pending", "not planned yet"),
    }
    status.revoked = built.revoked.get(&name).map(|n| *n as i64);
    status.devices_online = online(&ctx, &broker, &name).await.or(old.devices_online);
    publish_status(&fleet, &ctx, &old, status).await?;
    Ok(Action::requeue(REFRESH))
}

async fn set_finalizers(
    fleets: &Api<MqttDeviceFleet>,
    fleet: &MqttDeviceFleet,
    finalizers: Vec<String>,
) -> Result<(), FleetError> {
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": fleet.resource_version(),
        }
    });
    fleets
        .patch(
            &fleet.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(api_error("set the finalizer"))?;
    Ok(())
}

/// Makes the operator's own Secret of the fleet when it is missing (or no
/// longer holds usable material).
async fn ensure_own_secret(ctx: &FleetContext, fleet: &MqttDeviceFleet) -> Result<(), FleetError> {
    let Some(name) = own_secret_name(fleet) else {
        return Ok(());
    };
    let namespace = fleet.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets
        .get_opt(&name)
        .await
        .map_err(api_error(format!("read Secret {name}")))?;
    let planned = match plan_own_secret(fleet, existing.as_ref(), Timestamp::now()) {
        Ok(Some(planned)) => planned,
        Ok(None) => return Ok(()),
        Err(error) => {
            tracing::warn!(%error, fleet = %fleet.name_any(), "cannot plan the fleet's Secret");
            return Ok(());
        }
    };
    if existing.as_ref().and_then(|s| s.data.as_ref()) != planned.data.as_ref() {
        apply(&ctx.client, &namespace, &planned).await?;
    }
    Ok(())
}

/// Puts every fleet of `broker` (but `without`) in its fleets Secret.
async fn rebuild(
    ctx: &FleetContext,
    broker: &MqttBroker,
    without: Option<&str>,
) -> Result<BrokerFleets, FleetError> {
    let namespace = broker.namespace().unwrap_or_default();
    let broker_name = broker.name_any();
    let fleets: Api<MqttDeviceFleet> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut members: Vec<MqttDeviceFleet> = fleets
        .list(&ListParams::default())
        .await
        .map_err(api_error("list the fleets"))?
        .items
        .into_iter()
        .filter(|f| f.spec.broker_ref.name == broker_name)
        .filter(|f| f.metadata.deletion_timestamp.is_none())
        .filter(|f| Some(f.name_any().as_str()) != without)
        .collect();
    members.sort_by_key(|f| (f.creation_timestamp().map(|t| t.0), f.name_any()));

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut found_secrets = BTreeMap::new();
    let mut found_maps = BTreeMap::new();
    let mut own = BTreeMap::new();
    for fleet in &members {
        for name in referenced_secrets(fleet) {
            if found_secrets.contains_key(&name) {
                continue;
            }
            if let Some(secret) = secrets
                .get_opt(&name)
                .await
                .map_err(api_error(format!("read Secret {name}")))?
            {
                found_secrets.insert(name, secret);
            }
        }
        if let Some(reference) = &fleet.spec.revocations.config_map_key_ref {
            if !found_maps.contains_key(&reference.name) {
                if let Some(map) = config_maps
                    .get_opt(&reference.name)
                    .await
                    .map_err(api_error(format!("read ConfigMap {}", reference.name)))?
                {
                    found_maps.insert(reference.name.clone(), map);
                }
            }
        }
        if let Some(name) = own_secret_name(fleet) {
            if let Some(secret) = secrets
                .get_opt(&name)
                .await
                .map_err(api_error(format!("read Secret {name}")))?
            {
                own.insert(fleet.name_any(), secret);
            }
        }
    }
    let team_secrets: Vec<Secret> = found_secrets.values().cloned().collect();
    mark_referenced(&ctx.client, &namespace, &team_secrets).await;
    let team_maps: Vec<ConfigMap> = found_maps.values().cloned().collect();
    mark_referenced(&ctx.client, &namespace, &team_maps).await;
    let sources: Vec<FleetSources<'_>> = members
        .iter()
        .map(|fleet| FleetSources {
            fleet,
            own_secret: own.get(&fleet.name_any()),
            secrets: &found_secrets,
            config_maps: &found_maps,
        })
        .collect();
    let built = BrokerFleets::build(&sources);
    let planned = built.secret(broker);
    let current = secrets
        .get_opt(&fleets_secret_name(&broker_name))
        .await
        .map_err(api_error("read the fleets Secret"))?;
    let data = |s: &Secret| s.data.clone().unwrap_or_default();
    if current.as_ref().map(data) != Some(data(&planned)) {
        apply(&ctx.client, &namespace, &planned).await?;
    }
    Ok(built)
}

/// The Secrets a fleet's spec names.
fn referenced_secrets(fleet: &MqttDeviceFleet) -> Vec<String> {
    let spec = &fleet.spec;
    let mut names = Vec::new();
    if let Some(ca) = spec.certificate.as_ref().and_then(|c| c.ca.as_ref()) {
        names.push(ca.secret_name.clone());
    }
    if let Some(d) = &spec.derived {
        names.extend(d.secret_key_ref.iter().map(|r| r.name.clone()));
        names.extend(d.previous_secret_key_ref.iter().map(|r| r.name.clone()));
    }
    if let Some(j) = &spec.jwt {
        names.extend(j.keys_secret_key_ref.iter().map(|r| r.name.clone()));
        names.extend(j.jwks_ca_secret_key_ref.iter().map(|r| r.name.clone()));
    }
    if let Some(h) = &spec.hook {
        names.extend(h.token_secret_key_ref.iter().map(|r| r.name.clone()));
        names.extend(h.ca_secret_key_ref.iter().map(|r| r.name.clone()));
    }
    names
}

/// Devices online, summed over the broker's pods that answered; `None`
/// when none did.
async fn online(ctx: &FleetContext, broker: &MqttBroker, fleet: &str) -> Option<i64> {
    let namespace = broker.namespace().unwrap_or_default();
    let name = broker.name_any();
    let mut total = None;
    for ordinal in 0..broker.spec.replicas.max(0) {
        let host = format!("{name}-{ordinal}.{name}-headless.{namespace}.svc");
        match ctx.metrics.read(host).await {
            Ok(text) => {
                if let Some(n) = devices_online(&text, fleet) {
                    total = Some(total.unwrap_or(0) + n);
                }
            }
            Err(error) => tracing::debug!(%error, "broker pod metrics"),
        }
    }
    total
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, FleetError>
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
    .map_err(api_error(format!("apply {} {name}", K::kind(&()))))
}

/// Sets the Ready condition, keeping its transition time when unchanged.
fn set_ready(status: &mut MqttDeviceFleetStatus, ready: bool, reason: &str, message: &str) {
    let value = if ready { "True" } else { "False" };
    let previous = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_FLEET_READY);
    if previous.is_some_and(|c| c.status == value && c.reason == reason && c.message == message) {
        return;
    }
    let since = match previous {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    status
        .conditions
        .retain(|c| c.type_ != CONDITION_FLEET_READY);
    status.conditions.push(Condition {
        type_: CONDITION_FLEET_READY.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: status.observed_generation,
    });
}

fn ready_of(status: &MqttDeviceFleetStatus) -> Option<(&str, &str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_FLEET_READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Writes the status if it changed; an Event when Ready changed.
async fn publish_status(
    fleet: &MqttDeviceFleet,
    ctx: &FleetContext,
    old: &MqttDeviceFleetStatus,
    status: MqttDeviceFleetStatus,
) -> Result<(), FleetError> {
    if &status == old {
        return Ok(());
    }
    let api: Api<MqttDeviceFleet> =
        Api::namespaced(ctx.client.clone(), &fleet.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &fleet.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_error("write the status"))?;
    if ready_of(&status) == ready_of(old) {
        return Ok(());
    }
    let Some(condition) = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_FLEET_READY)
    else {
        return Ok(());
    };
    let ready = condition.status == "True";
    let event = Event {
        type_: if ready {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: condition.reason.clone(),
        note: Some(condition.message.chars().take(1000).collect()),
        action: if ready { "Ready" } else { "NotReady" }.into(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(error) = recorder.publish(&event, &fleet.object_ref(&())).await {
        tracing::warn!(%error, "cannot publish an Event");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
