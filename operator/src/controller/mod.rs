//! The controller: keeps each `MqttBroker`'s objects as the planner says
//! and reports back in its status.
//!
//! One reconcile of a broker:
//!
//! 0. Being deleted: nothing (the objects go with it, through their owner
//!    references).
//! 1. Paused (`kubemqtt.io/paused: "true"`): only the status changes, its
//!    `Progressing` condition saying `Paused` (and one Event when the
//!    pause begins). No other object is read or written.
//! 2. [`observe`]: read every object of the broker.
//! 3. [`plan::plan`]: compute every object. A spec that cannot be planned
//!    is reported (status `Degraded`, a Warning Event) and nothing is
//!    applied.
//! 4. [`apply`]: server-side apply of every object, as a dry run and then
//!    for real. An object the API server refuses is reported like an
//!    invalid spec; any other API error is reported and retried with
//!    backoff ([`error_policy`]).
//! 5. Publish Events for created and updated objects and issued
//!    certificates ([`events`]), then write the [`status`] (only when it
//!    changed).
//! 6. Come back when the certificate next needs attention, at the latest
//!    in an hour. Changes to the broker or to any object it owns come
//!    sooner, through the watches.

pub mod apply;
pub mod bridge;
pub mod events;
pub mod observe;
pub mod push;
pub mod run;
pub mod status;
pub mod user;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn, Instrument};

use self::apply::{AppliedObject, ApplyError, FIELD_MANAGER};
use self::observe::{Observation, ObserveError};
use self::push::{CredentialsPusher, HttpPusher, PushError, PushedRevisions};
use self::status::{Outcome, Seen};
use crate::api::{MqttBroker, CONDITION_PROGRESSING, PAUSED_ANNOTATION};
use crate::metrics::{Metrics, ReconcileResult};
use crate::plan::{self, Names, Settings};

/// The longest wait between two reconciles of a healthy broker.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// When a broker whose spec cannot be applied is looked at again (its
/// changes are seen at once through the watch).
pub const INVALID_REQUEUE: Duration = Duration::from_secs(300);
/// The first retry after an API error; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries after API errors.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// How soon credentials are pushed again to a pod that missed them.
pub const PUSH_RETRY: Duration = Duration::from_secs(10);

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
    /// Publishes Events on brokers.
    pub events: events::Events,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Consecutive failed reconciles per broker, for the backoff.
    failures: Mutex<HashMap<ObjectRef<MqttBroker>, u32>>,
    /// Sends credentials files to the brokers' admin API.
    pub pusher: Arc<dyn CredentialsPusher>,
    /// The credentials revision each broker pod confirmed.
    pub pushed: PushedRevisions,
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
        }
    }

    /// The same context sending credentials through `pusher` (tests
    /// record them).
    pub fn with_pusher(mut self, pusher: Arc<dyn CredentialsPusher>) -> Context {
        self.pusher = pusher;
        self
    }

    /// Counts one more failure of `broker`; returns the count.
    fn record_failure(&self, broker: &MqttBroker) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(ObjectRef::from_obj(broker)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `broker` after a reconcile that worked.
    fn clear_failures(&self, broker: &MqttBroker) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&ObjectRef::from_obj(broker));
    }
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
    /// The broker came without a namespace (the API server always sets
    /// one on a namespaced resource).
    #[error("the resource has no namespace")]
    NoNamespace,
    /// Reading what a user reconcile needs failed.
    #[error("cannot read the user's broker or Secrets: {0}")]
    UserObserve(#[source] kube::Error),
    /// Reading the broker's objects failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Applying the objects failed.
    #[error(transparent)]
    Apply(ApplyError),
    /// Writing the status failed.
    #[error("cannot write the status: {0}")]
    Status(#[source] kube::Error),
    /// The plan's objects could not be turned into JSON.
    #[error("cannot serialize the objects: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// The stage that failed, for the error metric.
    fn stage(&self) -> &'static str {
        match self {
            Error::NoNamespace | Error::Observe(_) | Error::UserObserve(_) => "observe",
            Error::Apply(_) | Error::Serialize(_) => "apply",
            Error::Status(_) => "status",
        }
    }
}

/// Reconciles one broker (see the module documentation).
pub async fn reconcile(broker: Arc<MqttBroker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        namespace = broker.namespace().unwrap_or_default(),
        broker = broker.name_any()
    );
    let result = reconcile_broker(&broker, &ctx, Timestamp::now())
        .instrument(span)
        .await;
    match &result {
        Ok((outcome, _)) => {
            ctx.metrics.reconciled(*outcome, started.elapsed());
            ctx.clear_failures(&broker);
        }
        Err(error) => {
            ctx.metrics.failed(error.stage());
            ctx.metrics
                .reconciled(ReconcileResult::Error, started.elapsed());
        }
    }
    result.map(|(_, action)| action)
}

/// What to do after a failed reconcile: retry after [`backoff`] of the
/// broker's consecutive failures.
pub fn error_policy(broker: Arc<MqttBroker>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&broker);
    let delay = backoff(failures);
    warn!(
        namespace = broker.namespace().unwrap_or_default(),
        broker = broker.name_any(),
        %error,
        failures,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The wait before retrying after `failures` consecutive failures:
/// [`FIRST_RETRY`], doubling each time, at most [`MAX_RETRY`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

async fn reconcile_broker(
    broker: &MqttBroker,
    ctx: &Context,
    now: Timestamp,
) -> Result<(ReconcileResult, Action), Error> {
    let namespace = broker.namespace().ok_or(Error::NoNamespace)?;
    let brokers: Api<MqttBroker> = Api::namespaced(ctx.client.clone(), &namespace);

    if broker.metadata.deletion_timestamp.is_some() {
        // Kubernetes deletes the objects through their owner references;
        // applying them now would bring them back.
        return Ok((ReconcileResult::Deleting, Action::await_change()));
    }
    if is_paused(broker) {
        write_status(
            &brokers,
            broker,
            broker.status.as_ref(),
            &status::paused(broker, now),
        )
        .await?;
        if !was_paused(broker) {
            info!("paused: the operator changes nothing until the annotation is removed");
            ctx.events.publish(broker, events::paused()).await;
        }
        return Ok((ReconcileResult::Paused, Action::await_change()));
    }

    let names = Names::new(&broker.name_any());
    let observation = observe::observe(&ctx.client, broker, &namespace, &names).await?;
    let plan = match plan::plan(broker, &observation.planner, &ctx.settings, now) {
        Ok(plan) => plan,
        Err(error) => {
            let message = error.to_string();
            return report_invalid(
                ctx,
                &brokers,
                broker,
                &observation,
                error.reason(),
                &message,
                now,
            )
            .await;
        }
    };

    let objects = plan.objects()?;
    let applied = match apply::apply_all(&ctx.client, &namespace, &objects).await {
        Ok(applied) => applied,
        Err(error @ ApplyError::Rejected { .. }) => {
            let message = error.to_string();
            return report_invalid(
                ctx,
                &brokers,
                broker,
                &observation,
                "Rejected",
                &message,
                now,
            )
            .await;
        }
        Err(error) => {
            let message = error.to_string();
            let outcome = Outcome::ApplyFailed { message: &message };
            let failed = status::status(broker, outcome, seen_before(&observation), now);
            // The status is best effort here: the API may be failing.
            if let Err(status_error) =
                write_status(&brokers, broker, broker.status.as_ref(), &failed).await
            {
                warn!(error = %status_error, "cannot report the failure in the status");
            }
            ctx.events
                .publish(broker, events::apply_failed(&message))
                .await;
            return Err(Error::Apply(error));
        }
    };

    let stateful_set: Option<StatefulSet> = parse_applied(&applied, "StatefulSet", &names.broker);
    let client_service: Option<Service> = parse_applied(&applied, "Service", &names.broker);
    let outcome = Outcome::Applied {
        certificate: plan.certificate.as_ref(),
    };
    let seen = Seen {
        stateful_set: stateful_set.as_ref(),
        client_service: client_service.as_ref(),
        user_certificate: observation.user_certificate.as_ref(),
    };
    // What happened is told first: a failed status write is retried, and
    // the retry finds nothing left to tell.
    let renewals = plan
        .certificate
        .as_ref()
        .map(|certificate| events::renewals(&certificate.renewals))
        .unwrap_or_default();
    for event in events::changes(&observation.resource_versions, &applied)
        .into_iter()
        .chain(renewals)
    {
        info!(reason = %event.reason, "{}", event.note);
        ctx.events.publish(broker, event).await;
    }
    write_status(
        &brokers,
        broker,
        broker.status.as_ref(),
        &status::status(broker, outcome, seen, now),
    )
    .await?;
    let all_pushed = push_credentials(ctx, broker, &names, &namespace, &plan.auth_secret).await;

    let requeue = plan
        .certificate
        .as_ref()
        .map(|certificate| {
            let until = certificate.recheck_at.duration_since(now);
            Duration::try_from(until).unwrap_or(Duration::ZERO)
        })
        .unwrap_or(MAX_REQUEUE)
        .min(if all_pushed { MAX_REQUEUE } else { PUSH_RETRY })
        .clamp(Duration::from_secs(1), MAX_REQUEUE);
    Ok((ReconcileResult::Applied, Action::requeue(requeue)))
}

/// Sends the credentials file of `auth_secret` to every broker pod that
/// has not confirmed its revision yet. Returns whether every pod has it;
/// a pod that cannot be reached (not started yet) reads the file when it
/// starts, and is tried again after [`PUSH_RETRY`].
async fn push_credentials(
    ctx: &Context,
    broker: &MqttBroker,
    names: &Names,
    namespace: &str,
    auth_secret: &k8s_openapi::api::core::v1::Secret,
) -> bool {
    let text = |key: &str| {
        auth_secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| std::str::from_utf8(&value.0).ok())
    };
    let (Some(credentials), Some(token)) = (
        text(plan::secrets::CREDENTIALS_KEY),
        text(plan::secrets::ADMIN_TOKEN_KEY),
    ) else {
        return true;
    };
    let revision = kubemqtt_broker::auth::credentials_revision(&kubemqtt_broker::auth::AuthText {
        text: credentials.to_owned(),
        origin: names.auth_secret.clone(),
    })
    .ok()
    .flatten()
    .unwrap_or(0);
    let urls = push::pod_urls(
        &names.broker,
        &names.headless_service,
        namespace,
        &ctx.settings.cluster_domain,
        broker.spec.replicas,
        plan::HTTP_PORT,
    );
    let mut all = true;
    for url in urls {
        if ctx.pushed.is_current(&url, revision) {
            continue;
        }
        match ctx.pusher.push(&url, token, credentials).await {
            Ok(reply) => {
                ctx.metrics.pushed("ok");
                info!(%url, revision, ?reply, "credentials pushed");
                ctx.pushed.confirm(&url, revision);
            }
            Err(error @ PushError::Unreachable { .. }) => {
                ctx.metrics.pushed("unreachable");
                tracing::debug!(%error, "cannot push the credentials yet");
                ctx.pushed.forget(&url);
                all = false;
            }
            Err(error) => {
                ctx.metrics.pushed("refused");
                warn!(%error, "the broker refused the pushed credentials");
                ctx.pushed.forget(&url);
                all = false;
            }
        }
    }
    all
}

/// Reports a spec that cannot be applied: status and a Warning Event,
/// nothing applied, looked at again after [`INVALID_REQUEUE`].
async fn report_invalid(
    ctx: &Context,
    brokers: &Api<MqttBroker>,
    broker: &MqttBroker,
    observation: &Observation,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(ReconcileResult, Action), Error> {
    warn!(
        reason,
        error = message,
        "the spec cannot be applied; nothing was applied"
    );
    let outcome = Outcome::Invalid { reason, message };
    let invalid = status::status(broker, outcome, seen_before(observation), now);
    write_status(brokers, broker, broker.status.as_ref(), &invalid).await?;
    ctx.events
        .publish(broker, events::invalid(reason, message))
        .await;
    Ok((ReconcileResult::Invalid, Action::requeue(INVALID_REQUEUE)))
}

/// The objects as observed before anything was applied.
fn seen_before(observation: &Observation) -> Seen<'_> {
    Seen {
        stateful_set: observation.stateful_set.as_ref(),
        client_service: observation.client_service.as_ref(),
        user_certificate: observation.user_certificate.as_ref(),
    }
}

/// The applied object `kind`/`name` as its type.
fn parse_applied<K>(applied: &[AppliedObject], kind: &str, name: &str) -> Option<K>
where
    K: Resource + serde::de::DeserializeOwned,
{
    let object = applied
        .iter()
        .find(|object| object.key == ObjectKey::new(kind, name))?;
    match object.object.clone().try_parse::<K>() {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            warn!(%error, "cannot read the applied {kind} {name}");
            None
        }
    }
}

/// Writes `status` on `object` (a broker or a user) with server-side
/// apply, unless `current` (the status it has) is exactly that.
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
    if current == Some(status) {
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
fn was_paused(broker: &MqttBroker) -> bool {
    broker.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_PROGRESSING && c.reason == status::REASON_PAUSED)
    })
}
