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
//!    The Secret carries a revision, one more at each change.
//! 5. The revision's revocation lists are pushed to every broker pod that
//!    has not confirmed it yet ([`propagate`](mod@propagate)): a revocation is in force
//!    on every pod within a second, not when the kubelet refreshes the
//!    Secret volume.
//! 6. The status: Ready once every broker pod confirmed the revision that
//!    holds the fleet (`Propagating` until then; or why not), the revision
//!    and the pods that confirmed it, entries revoked, and devices online
//!    summed from the broker pods' `/metrics` ([`online`]); an Event when
//!    Ready changes.
//! 7. Back in a minute (devices online are looked at again, pods that
//!    restarted are pushed again); pods that could not be pushed are tried
//!    again after 5 s, doubling up to 5 minutes.
//!
//! A fleet reconciles when its spec changes (its `generation`) or it is
//! being deleted, when its own Secret changes, when a Secret or ConfigMap
//! it names changes, and every minute; not on its own status writes
//! (devices online change with traffic, so reconciling on them would loop).
//! A failed reconcile is retried after 5 s, doubling per consecutive
//! failure of that fleet up to 5 minutes.
//!
//! The Secrets and the revocation ConfigMap a fleet names get the
//! [`REFERENCED_LABEL`] (as a broker's and a user's do), and the controller
//! watches the labelled ones (metadata only): a revocation list the team's
//! tooling rewrites, or a CA bundle or key set it rotates, reaches the
//! broker's fleets Secret at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{MqttBroker, MqttDeviceFleet, MqttDeviceFleetStatus, REFERENCED_LABEL};
use crate::controller::apply::mark_referenced;
use crate::controller::bridge::Failures;
use crate::controller::push::{CredentialsPusher, HttpPusher, PushedRevisions};
use crate::controller::{backoff, watch};
use crate::plan::fleet::{
    fleets_secret_name, own_secret_name, plan_own_secret, BrokerFleets, FleetSources, FLEET_LABEL,
};
use crate::plan::MANAGER;

mod online;
mod propagate;
mod status;

use status::{publish_status, set_ready};

pub use online::{devices_online, HttpMetricsReader, MetricsFuture, MetricsReader};
pub use propagate::{propagate, Propagation, FLEETS_PUSH_PATH};

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

/// What the fleet controller needs.
pub struct FleetContext {
    pub client: Client,
    pub metrics: Arc<dyn MetricsReader>,
    pub reporter: Reporter,
    /// Sends the revocation lists to the broker pods' admin API.
    pub pusher: Arc<dyn CredentialsPusher>,
    /// The fleets revision each broker pod confirmed.
    pub pushed: PushedRevisions,
    /// Consecutive failed reconciles (and pushes) per fleet, for the
    /// backoff (the bridge controller's counter).
    pub failures: Failures,
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
            pusher: Arc::new(HttpPusher::default()),
            pushed: PushedRevisions::default(),
            failures: Failures::default(),
        }
    }
}

/// What a reconcile acts on in the fleet itself: its spec, and whether it
/// is being deleted. Its status (written by the reconcile, devices online
/// included) is not part of it.
pub fn fleet_fingerprint(fleet: &MqttDeviceFleet) -> u64 {
    let mut hasher = DefaultHasher::new();
    fleet.metadata.generation.hash(&mut hasher);
    fleet
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    hasher.finish()
}

fn failure_key(fleet: &MqttDeviceFleet) -> String {
    format!(
        "{}/{}",
        fleet.namespace().unwrap_or_default(),
        fleet.name_any()
    )
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
    let (store, writer) = reflector::store();
    let changed = watch::changed_or_deleted(
        reflector(
            writer,
            watcher(fleets, watcher::Config::default()).default_backoff(),
        ),
        fleet_fingerprint,
    );
    let controller = Controller::for_stream(changed, store);
    let (by_secret, by_config_map) = (controller.store(), controller.store());
    let referenced = watcher::Config::default().labels(REFERENCED_LABEL);
    controller
        .owns_stream(
            watcher(
                scoped::<PartialObjectMeta<Secret>>(client, namespace),
                watcher::Config::default().labels(FLEET_LABEL),
            )
            .default_backoff()
            .touched_objects(),
        )
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

/// Retries a failed reconcile with the brokers' backoff, per fleet.
pub fn error_policy(
    fleet: Arc<MqttDeviceFleet>,
    error: &FleetError,
    ctx: Arc<FleetContext>,
) -> Action {
    let failures = ctx.failures.record(&failure_key(&fleet));
    let delay = backoff(failures);
    tracing::warn!(
        namespace = fleet.namespace().unwrap_or_default(),
        fleet = fleet.name_any(),
        %error,
        failures,
        retry_in_seconds = delay.as_secs(),
        "fleet reconcile failed"
    );
    Action::requeue(delay)
}

/// Reconciles one fleet (see the module documentation).
pub async fn reconcile(
    fleet: Arc<MqttDeviceFleet>,
    ctx: Arc<FleetContext>,
) -> Result<Action, FleetError> {
    let result = reconcile_fleet(fleet.clone(), &ctx).await;
    if result.is_ok() {
        ctx.failures.clear(&failure_key(&fleet));
    }
    result
}

async fn reconcile_fleet(
    fleet: Arc<MqttDeviceFleet>,
    ctx: &FleetContext,
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
                rebuild(ctx, &broker, Some(&name)).await?;
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
        publish_status(&fleet, ctx, &old, status).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    };

    ensure_own_secret(ctx, &fleet).await?;
    let (built, revision) = rebuild(ctx, &broker, None).await?;
    let propagation = propagate(ctx, &broker, &built, revision).await?;
    let secret = fleets_secret_name(broker_name);
    match built.refused.get(&name) {
        Some(error) => set_ready(&mut status, false, error.reason(), &error.to_string()),
        None if built.included.contains(&name) && propagation.everywhere => set_ready(
            &mut status,
            true,
            "InForce",
            &format!(
                "in Secret {secret} (revision {revision}) of broker {broker_name}, \
                 in force on every broker pod"
            ),
        ),
        None if built.included.contains(&name) => set_ready(
            &mut status,
            false,
            REASON_PROPAGATING,
            &format!(
                "in Secret {secret} (revision {revision}) of broker {broker_name}; \
                 not every broker pod has confirmed it yet"
            ),
        ),
        None => set_ready(&mut status, false, "Pending", "not planned yet"),
    }
    status.revision = i64::try_from(revision).ok();
    status.pods_confirmed = i32::try_from(propagation.pods_confirmed).ok();
    status.revoked = built.revoked.get(&name).map(|n| *n as i64);
    status.devices_online = online::online(ctx, &broker, &name)
        .await
        .or(old.devices_online);
    publish_status(&fleet, ctx, &old, status).await?;
    let push_key = format!("push/{}", failure_key(&fleet));
    if propagation.everywhere {
        ctx.failures.clear(&push_key);
        return Ok(Action::requeue(REFRESH));
    }
    let delay = backoff(ctx.failures.record(&push_key)).min(REFRESH);
    tracing::info!(
        fleet = %name,
        retry_in_seconds = delay.as_secs(),
        "some broker pods do not have the fleet revocations yet"
    );
    Ok(Action::requeue(delay))
}

/// Reason of a fleet's `Ready=False` while its broker's pods do not all
/// have the revision of the fleets Secret that holds it.
pub const REASON_PROPAGATING: &str = "Propagating";

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

/// Puts every fleet of `broker` (but `without`) in its fleets Secret; the
/// fleets and the Secret's revision.
async fn rebuild(
    ctx: &FleetContext,
    broker: &MqttBroker,
    without: Option<&str>,
) -> Result<(BrokerFleets, u64), FleetError> {
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
    let current = secrets
        .get_opt(&fleets_secret_name(&broker_name))
        .await
        .map_err(api_error("read the fleets Secret"))?;
    let (planned, revision) = built.secret_after(broker, current.as_ref(), Timestamp::now());
    if current.as_ref().and_then(|s| s.data.as_ref()) != planned.data.as_ref() {
        apply(&ctx.client, &namespace, &planned).await?;
    }
    Ok((built, revision))
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

#[cfg(test)]
mod tests;
