//! The broker controller's reconcile (see [the module
//! documentation](super) for its steps).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn, Instrument};

use super::apply::{self, AppliedObject, ApplyError, Pending, CREDENTIALS_MANAGER};
use super::cluster;
use super::observe::{self, Observation};
use super::push::{self, PushError};
use super::replicas::{reconcile_replicas, ReplicasContext};
use super::status::{self, ClusterSeen, Outcome, Propagation, Seen};
use super::{
    backoff, events, failure_key, is_paused, was_paused, write_status, Context, Error, ObjectKey,
    INVALID_REQUEUE, MAX_REQUEUE,
};
use crate::api::MqttBroker;
use crate::metrics::ReconcileResult;
use crate::plan::rebalance::RebalanceSettings;
use crate::plan::secrets::{self, ADMIN_TOKEN_KEY};
use crate::plan::statefulset::CONTAINER_NAME;
use crate::plan::users::{
    self, BrokerUser, CREDENTIALS_DIGEST_ANNOTATION, CREDENTIALS_REVISION_ANNOTATION,
};
use crate::plan::{self, persistence, selector_labels, Names, Plan};

/// Reconciles one broker.
pub async fn reconcile(broker: Arc<MqttBroker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        namespace = broker.namespace().unwrap_or_default(),
        broker = broker.name_any()
    );
    // Boxed: the reconcile's state is large for a task's (or a test
    // thread's) stack.
    let result = Box::pin(reconcile_broker(&broker, &ctx, Timestamp::now()))
        .instrument(span)
        .await;
    match &result {
        Ok((outcome, _)) => {
            ctx.metrics.reconciled(*outcome, started.elapsed());
            ctx.clear_failures(&failure_key(broker.as_ref()));
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
    let failures = ctx.record_failure(&failure_key(broker.as_ref()));
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
    let observation = observe::observe(&ctx.client, &ctx.index, broker, &namespace, &names).await?;
    apply::mark_referenced(&ctx.client, &namespace, &observation.referenced).await;
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

    let applied = match apply_plan(ctx, &namespace, &names, &plan, &observation).await {
        Ok(applied) => applied,
        Err(Error::Apply(error @ ApplyError::Rejected { .. })) => {
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
            return Err(error);
        }
    };

    // What the spec no longer asks for goes: the broker's
    // PodDisruptionBudget (one replica), a managed NATS, an autoscaler.
    let deleted =
        cluster::delete_dropped(ctx, &namespace, &names, &plan, &observation.cluster).await?;

    // What happened is told first: a failed status write is retried, and
    // the retry finds nothing left to tell.
    let renewals = plan
        .certificate
        .as_ref()
        .map(events::renewals)
        .unwrap_or_default();
    let warnings = plan.warnings.iter().map(events::exposure);
    for event in events::changes(&applied.created, &applied.updated)
        .into_iter()
        .chain(applied.replaced.then(events::replaced_stateful_set))
        .chain(renewals)
        .chain(warnings)
        .chain(deleted.iter().map(events::deleted))
    {
        info!(reason = %event.reason, "{}", event.note);
        ctx.events.publish(broker, event).await;
    }

    let propagation = propagate(ctx, broker, &plan, &observation).await;
    let stateful_set: Option<StatefulSet> =
        parse_applied(&applied.objects, "StatefulSet", &names.broker)
            .or_else(|| observation.stateful_set.clone());
    let external_service: Option<Service> =
        parse_applied(&applied.objects, "Service", &names.external_service)
            .or_else(|| observation.external_service.clone())
            .filter(|_| plan.external_service.is_some());
    let outcome = Outcome::Applied {
        certificate: plan.certificate.as_ref(),
        credentials: propagation.as_ref().map(|p| p.status),
    };
    let clustered = broker.spec.cluster.is_some();
    let nats_stateful_set: Option<StatefulSet> =
        parse_applied(&applied.objects, "StatefulSet", &names.nats)
            .or_else(|| observation.cluster.nats_stateful_set.clone())
            .filter(|_| plan.nats.is_some());
    // A clustered broker's pods, each with its `/metrics` read once: for
    // the status (connections, NATS) and for the replicas' step.
    let pods = match clustered {
        true => cluster::read_pods(ctx, &observation.pods).await,
        false => Vec::new(),
    };
    let metrics = clustered.then(|| cluster::PodMetrics::of(&pods));
    let autoscaler = plan.autoscaler.as_ref().map(|object| {
        format!(
            "{} {}",
            object["kind"].as_str().unwrap_or_default(),
            names.broker
        )
    });
    // A clustered broker's pods: a stuck rollout recovered, clients
    // spread after a scale-up (the `Rebalancing` condition).
    let replicas_step = match &broker.spec.cluster {
        Some(spec) => {
            let token = secrets::text(&plan.auth_secret, ADMIN_TOKEN_KEY).unwrap_or_default();
            let step_ctx = ReplicasContext {
                client: &ctx.client,
                events: &ctx.events,
                http: ctx.broker_http.clone(),
                memory: &ctx.rebalance,
            };
            Some(
                reconcile_replicas(
                    &step_ctx,
                    broker,
                    &RebalanceSettings::from(&spec.rebalance),
                    &pods,
                    stateful_set.as_ref(),
                    token,
                    now,
                )
                .await,
            )
        }
        None => None,
    };
    let seen = Seen {
        stateful_set: stateful_set.as_ref(),
        external_service: external_service.as_ref(),
        user_certificate: observation.user_certificate.as_ref(),
        certificate_object: observation.certificate_object.as_ref(),
        cluster: ClusterSeen {
            nats_stateful_set: nats_stateful_set.as_ref(),
            metrics,
            autoscaler: autoscaler.as_deref(),
            rebalancing: replicas_step.as_ref().map(|step| &step.condition),
        },
    };
    write_status(
        &brokers,
        broker,
        broker.status.as_ref(),
        &status::status(broker, outcome, seen, now),
    )
    .await?;
    if let Some(propagation) = &propagation {
        record_entries(
            ctx,
            &namespace,
            &observation,
            propagation.status.revision,
            now,
        )
        .await?;
    }

    let push_key = format!("push/{}", failure_key(broker));
    let push_retry = match &propagation {
        Some(p) if !p.status.everywhere => {
            let delay = backoff(ctx.record_failure(&push_key));
            info!(
                retry_in_seconds = delay.as_secs(),
                "some broker pods do not have the credentials yet"
            );
            delay
        }
        _ => {
            ctx.clear_failures(&push_key);
            MAX_REQUEUE
        }
    };
    // When to come back, at the soonest of what asks: a certificate, a
    // pod without its credentials, a clustered broker's status (its
    // connections and NATS move without any object changing), the
    // replicas' step (a rebalance round settling, a rollout to watch).
    let mut come_back = vec![push_retry];
    if clustered {
        come_back.push(CLUSTER_REQUEUE);
    }
    come_back.extend(replicas_step.map(|step| step.requeue));
    let requeue = plan
        .recheck_at
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
        .into_iter()
        .chain(come_back)
        .min()
        .unwrap_or(MAX_REQUEUE)
        .clamp(Duration::from_secs(1), MAX_REQUEUE);
    Ok((ReconcileResult::Applied, Action::requeue(requeue)))
}

/// How often a clustered broker is looked at even when nothing changed: its
/// connections and NATS state are in its status.
pub const CLUSTER_REQUEUE: Duration = Duration::from_secs(120);

/// What [`apply_plan`] did.
struct Applied {
    objects: Vec<AppliedObject>,
    created: Vec<ObjectKey>,
    updated: Vec<ObjectKey>,
    /// The StatefulSet was replaced for new volume claims.
    replaced: bool,
}

/// Applies what changed. When the StatefulSet's volume claims change, the
/// existing claims are grown and the StatefulSet is deleted without its
/// pods (after the dry run of everything else) and created again.
async fn apply_plan(
    ctx: &Context,
    namespace: &str,
    names: &Names,
    plan: &Plan,
    observation: &Observation,
) -> Result<Applied, Error> {
    let replace = observation
        .stateful_set
        .as_ref()
        .filter(|observed| persistence::needs_replacement(&plan.stateful_set, observed));
    let mut seen = observation.seen.clone();
    let stateful_set_key = ObjectKey::new("StatefulSet", &names.broker);
    if replace.is_some() {
        // Created anew: it is not compared with the one to be deleted.
        seen.remove(&stateful_set_key);
    }
    let pending =
        Pending::new(namespace, plan.objects()?, &seen, &ctx.applied).map_err(Error::Apply)?;
    pending
        .dry_run(&ctx.client, namespace, replace.map(|_| &stateful_set_key))
        .await
        .map_err(Error::Apply)?;
    if let Some(observed) = replace {
        grow_claims(ctx, namespace, names, plan).await?;
        let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            preconditions: Some(Preconditions {
                uid: observed.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match statefulsets.delete(&names.broker, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(Error::Persistence(error)),
        }
    }
    let applied = pending
        .commit(&ctx.client, namespace, &ctx.applied)
        .await
        .map_err(Error::Apply)?;
    let mut created = applied.created;
    let mut updated = applied.updated;
    if replace.is_some() {
        // Told as a replacement, not a creation.
        created.retain(|key| *key != stateful_set_key);
        updated.retain(|key| *key != stateful_set_key);
    }
    Ok(Applied {
        objects: applied.objects,
        created,
        updated,
        replaced: replace.is_some(),
    })
}

/// Grows every claim of the broker's pods that is smaller than
/// `spec.persistence.size` (its StorageClass must allow expansion).
async fn grow_claims(
    ctx: &Context,
    namespace: &str,
    names: &Names,
    plan: &Plan,
) -> Result<(), Error> {
    let Some(wanted) = persistence::claim(&plan.stateful_set) else {
        return Ok(());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = selector_labels(&names.broker)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let existing = claims
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::Persistence)?;
    for claim in existing.items {
        if !persistence::is_smaller(&claim, &wanted.size) {
            continue;
        }
        let name = claim.name_any();
        let patch = serde_json::json!({
            "spec": {"resources": {"requests": {"storage": wanted.size}}},
        });
        claims
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::Persistence)?;
        info!(claim = %name, size = %wanted.size.0, "volume claim grown");
    }
    Ok(())
}

/// The credentials file's propagation to the pods.
struct PropagationResult {
    status: Propagation,
}

/// Sends the credentials file of the auth Secret to every broker pod that
/// has not confirmed its revision yet (a new pod, a restarted broker, a new
/// revision). `None` when the auth Secret has no file.
async fn propagate(
    ctx: &Context,
    broker: &MqttBroker,
    plan: &Plan,
    observation: &Observation,
) -> Option<PropagationResult> {
    let credentials = plan::secrets::text(&plan.auth_secret, plan::secrets::CREDENTIALS_KEY)?;
    let token = plan::secrets::text(&plan.auth_secret, plan::secrets::ADMIN_TOKEN_KEY)?;
    let revision = kubemqtt_broker::auth::credentials_revision(&kubemqtt_broker::auth::AuthText {
        text: credentials.to_owned(),
        origin: plan.auth_secret.name_any(),
    })
    .ok()
    .flatten()
    .unwrap_or(0);
    let targets = push::targets(&observation.pods, CONTAINER_NAME, plan::HTTP_PORT);
    let mut confirmed = 0;
    for target in &targets {
        if ctx.pushed.is_current(&target.key, revision) {
            confirmed += 1;
            continue;
        }
        let Some(url) = &target.url else {
            tracing::debug!(pod = %target.name, "no address yet: cannot push the credentials");
            continue;
        };
        match ctx.pusher.push(url, token, credentials).await {
            Ok(reply) => {
                ctx.metrics.pushed("ok");
                info!(pod = %target.name, revision, ?reply, "credentials pushed");
                ctx.pushed.confirm(&target.key, revision);
                confirmed += 1;
            }
            Err(error @ PushError::Unreachable { .. }) => {
                ctx.metrics.pushed("unreachable");
                tracing::debug!(%error, "cannot push the credentials yet");
                ctx.pushed.forget(&target.key);
            }
            Err(error) => {
                ctx.metrics.pushed("refused");
                warn!(%error, "the broker refused the pushed credentials");
                ctx.pushed.forget(&target.key);
            }
        }
    }
    let desired = usize::try_from(broker.spec.replicas.max(0)).unwrap_or(0);
    Some(PropagationResult {
        status: Propagation {
            revision: i64::try_from(revision).unwrap_or(i64::MAX),
            pods_confirmed: i32::try_from(confirmed).unwrap_or(i32::MAX),
            everywhere: confirmed == targets.len() && targets.len() >= desired,
        },
    })
}

/// Tells each admitted user whose entry changed which revision of the
/// credentials file holds it (annotations on its Secret, under their own
/// field manager): its controller marks it Ready once every pod confirmed
/// that revision.
async fn record_entries(
    ctx: &Context,
    namespace: &str,
    observation: &Observation,
    revision: i64,
    now: Timestamp,
) -> Result<(), Error> {
    let users: Vec<BrokerUser<'_>> = observation
        .planner
        .users
        .iter()
        .map(|(user, secret)| BrokerUser {
            user,
            secret: secret.as_ref(),
        })
        .collect();
    for (user, digest) in users::admitted_digests(&users, now) {
        let Some(secret) = user.secret else {
            continue;
        };
        if users::recorded_entry(secret).is_some_and(|(_, recorded)| recorded == digest) {
            continue;
        }
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret.name_any(),
                "namespace": namespace,
                "annotations": {
                    CREDENTIALS_REVISION_ANNOTATION: revision.to_string(),
                    CREDENTIALS_DIGEST_ANNOTATION: digest,
                },
            },
        });
        let stored = apply::apply_metadata(&ctx.client, namespace, CREDENTIALS_MANAGER, object)
            .await
            .map_err(Error::Apply)?;
        ctx.applied.refresh(namespace, &stored);
    }
    Ok(())
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
        external_service: observation.external_service.as_ref(),
        user_certificate: observation.user_certificate.as_ref(),
        certificate_object: observation.certificate_object.as_ref(),
        cluster: ClusterSeen {
            nats_stateful_set: observation.cluster.nats_stateful_set.as_ref(),
            metrics: None,
            autoscaler: None,
            rebalancing: None,
        },
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
