//! The controllers: the broker controller ([`broker`]) keeps each
//! `MqttBroker`'s objects as the planner says and reports back in its
//! status; the user controller ([`user`]) keeps each `MqttUser`'s Secret.
//!
//! One reconcile of a broker:
//!
//! 0. Being deleted: nothing (the objects go with it, through their owner
//!    references; the CA Secrets stay unless `tls.ca.deleteWithBroker`).
//! 1. Paused (`kubemqtt.io/paused: "true"`): only the status changes, its
//!    `Progressing` condition saying `Paused` (and one Event when the
//!    pause begins). No other object is read or written.
//! 2. [`observe`]: read the broker's objects (a few list and get requests)
//!    and its users from the cache ([`index`]).
//! 3. [`plan::plan`](fn@crate::plan::plan): compute every object. A spec that cannot be planned
//!    is reported (status `Degraded`, a Warning Event) and nothing is
//!    applied.
//! 4. [`apply`]: server-side apply of the objects that changed (none, when
//!    nothing did), as a dry run and then for real; the StatefulSet is
//!    replaced without its pods when its volume claims change. An object
//!    the API server refuses is reported like an invalid spec; any other
//!    API error is reported and retried with backoff.
//! 5. Events for objects created or changed, certificates issued and
//!    exposure warnings ([`events`]); the credentials file pushed to every
//!    pod that does not have it yet ([`push`]), and the users' Secrets told
//!    which revision holds their entry; then the [`status`] (only when it
//!    changed).
//! 6. Come back when a certificate next needs attention, at the latest in
//!    an hour (sooner, with backoff, while a pod misses its credentials).
//!    Changes come sooner through the watches ([`run`], [`watch`]).

pub mod apply;
pub mod bridge;
pub mod broker;
pub mod cluster;
pub mod endpoints;
pub mod events;
pub mod fleet;
pub mod index;
pub mod observe;
pub mod pod_http;
pub mod push;
pub mod rebalance;
pub mod replica_admin;
pub mod replicas;
pub mod rollout;
pub mod run;
pub mod status;
pub mod user;
pub mod watch;

#[cfg(test)]
mod cluster_tests;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
#[cfg(test)]
mod replicas_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod user_tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use self::apply::{AppliedVersions, ApplyError, FIELD_MANAGER};
use self::index::UserIndex;
use self::observe::ObserveError;
use self::push::{CredentialsPusher, HttpPusher, PushedRevisions};
use crate::api::{MqttBroker, PAUSED_ANNOTATION};
use crate::metrics::Metrics;
use crate::plan::Settings;

pub use self::broker::{error_policy, reconcile};

/// The longest wait between two reconciles of a healthy object.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// When a broker whose spec cannot be applied is looked at again (its
/// changes are seen at once through the watch).
pub const INVALID_REQUEUE: Duration = Duration::from_secs(300);
/// The first retry after a failure; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// A kind and a name: one of a broker's objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind, e.g. `Secret`.
    pub kind: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// The object `kind`/`name`.
    pub fn new(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Install-time settings for the planner.
    pub settings: Settings,
    /// Publishes Events on brokers and users.
    pub events: events::Events,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Consecutive failures per object (and per broker's pushes), for the
    /// backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Sends credentials files to the brokers' admin API.
    pub pusher: Arc<dyn CredentialsPusher>,
    /// The credentials revision each broker pod confirmed.
    pub pushed: PushedRevisions,
    /// The version of each object last applied.
    pub applied: AppliedVersions,
    /// The `MqttUser`s, from the watch.
    pub index: UserIndex,
    /// Reads the broker pods' `/metrics`, once per reconcile of a
    /// clustered broker (its status and its replicas' step).
    pub pod_metrics: Arc<dyn fleet::MetricsReader>,
    /// HTTP to the broker pods' admin API (shed requests).
    pub broker_http: Arc<dyn replica_admin::BrokerHttp>,
    /// Rebalance rounds still settling, per broker.
    pub rebalance: rebalance::RebalanceMemory,
}

impl Context {
    /// A context for `client`; `instance` names this replica in Events.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Context {
        Context {
            events: events::Events::new(client.clone(), instance),
            client,
            settings,
            metrics,
            failures: Mutex::new(HashMap::new()),
            pusher: Arc::new(HttpPusher::default()),
            pushed: PushedRevisions::default(),
            applied: AppliedVersions::default(),
            index: UserIndex::default(),
            pod_metrics: Arc::new(fleet::HttpMetricsReader),
            broker_http: Arc::new(replica_admin::HyperBrokerHttp::default()),
            rebalance: rebalance::RebalanceMemory::default(),
        }
    }

    /// The same context reaching the pods' admin API through `http`
    /// (tests answer without a network).
    pub fn with_broker_http(mut self, http: Arc<dyn replica_admin::BrokerHttp>) -> Context {
        self.broker_http = http;
        self
    }

    /// The same context reading the pods' metrics through `reader` (tests
    /// answer without a network).
    pub fn with_pod_metrics(mut self, reader: Arc<dyn fleet::MetricsReader>) -> Context {
        self.pod_metrics = reader;
        self
    }

    /// The same context sending credentials through `pusher` (tests
    /// record them).
    pub fn with_pusher(mut self, pusher: Arc<dyn CredentialsPusher>) -> Context {
        self.pusher = pusher;
        self
    }

    /// Counts one more failure of `what`; returns the count.
    fn record_failure(&self, what: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(what.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `what` after it worked.
    fn clear_failures(&self, what: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(what);
    }
}

/// The failure-counting key of an object.
fn failure_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A reconcile that must be retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object came without a namespace (the API server always sets
    /// one on a namespaced resource).
    #[error("the resource has no namespace")]
    NoNamespace,
    /// Reading what a user reconcile needs failed.
    #[error("cannot read the user's broker or Secrets: {0}")]
    UserObserve(#[source] kube::Error),
    /// The cache of `MqttUser`s cannot answer yet.
    #[error("{0}")]
    UserCache(String),
    /// Reading the broker's objects failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Applying the objects failed.
    #[error(transparent)]
    Apply(ApplyError),
    /// Replacing the StatefulSet or growing its claims failed.
    #[error("cannot change the broker's volumes: {0}")]
    Persistence(#[source] kube::Error),
    /// Writing the status failed.
    #[error("cannot write the status: {0}")]
    Status(#[source] kube::Error),
    /// Deleting an object the spec no longer asks for failed.
    #[error("cannot delete {object}: {source}")]
    Delete {
        /// The object.
        object: ObjectKey,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The plan's objects could not be turned into JSON.
    #[error("cannot serialize the objects: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// The stage that failed, for the error metric.
    fn stage(&self) -> &'static str {
        match self {
            Error::NoNamespace
            | Error::Observe(_)
            | Error::UserObserve(_)
            | Error::UserCache(_) => "observe",
            Error::Apply(_)
            | Error::Serialize(_)
            | Error::Persistence(_)
            | Error::Delete { .. } => "apply",
            Error::Status(_) => "status",
        }
    }
}

/// The wait before retrying after `failures` consecutive failures:
/// [`FIRST_RETRY`], doubling each time, at most [`MAX_RETRY`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Writes `status` on `object` (a broker or a user) with server-side
/// apply, unless `current` (the status it has) is exactly that once
/// written (times are stored to the second).
pub(crate) async fn write_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    let stored = |status: &S| serde_json::to_value(status).ok();
    if current.is_some_and(|current| stored(current) == stored(status)) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Whether the broker carries `kubemqtt.io/paused: "true"`.
pub fn is_paused(broker: &MqttBroker) -> bool {
    broker
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|value| value == "true")
}

/// Whether the status already says the broker is paused.
pub(crate) fn was_paused(broker: &MqttBroker) -> bool {
    broker.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|c| {
            c.type_ == crate::api::CONDITION_PROGRESSING && c.reason == status::REASON_PAUSED
        })
    })
}
