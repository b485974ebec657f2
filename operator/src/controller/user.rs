//! The `MqttUser` controller: one user's credentials Secret and status.
//!
//! Each reconcile reads the user's broker, the user's Secret, the Secret
//! its password comes from (if any), the broker's CA bundle and clients CA,
//! and takes the broker's other users (for user name conflicts) from the
//! cache; plans with [`plan_user`]; applies the Secret if it changed;
//! writes the status if it changed; and tells what changed in Events. The
//! broker controller, which watches users and their Secrets, then puts the
//! change in force on the broker (its credentials file and a push to the
//! pods) and records on the user's Secret which revision of the file holds
//! it: the user is Ready once every broker pod confirmed that revision.
//!
//! A user that cannot be planned (unknown broker, taken user name, invalid
//! topic rule, missing password Secret) gets `Ready=False` with the reason
//! and a Warning Event; nothing is applied and the other users are not
//! affected. Deleting a user needs no cleanup here: its Secret goes with
//! it (owner reference) and the broker controller drops it from the
//! broker, which disconnects its clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{info, warn, Instrument};

use super::apply::{self, Seen};
use super::events::BrokerEvent;
use super::status::Verdict;
use super::{backoff, failure_key, write_status, Context, Error, ObjectKey, MAX_REQUEUE};
use crate::api::{
    AuthenticationType, MqttBroker, MqttUser, MqttUserStatus, CONDITION_ROTATING,
    CONDITION_USER_READY,
};
use crate::metrics::ReconcileResult;
use crate::plan::configmap::CA_BUNDLE_KEY;
use crate::plan::secrets::read_clients_ca;
use crate::plan::user_secret::{
    self, plan_user, CredentialChange, UserObserved, UserPlan, UserPlanError,
};
use crate::plan::users::{self, BrokerUser};
use crate::plan::Names;

/// How soon a refused user is looked at again without a change (watches
/// bring changes sooner).
pub const REFUSED_REQUEUE: Duration = Duration::from_secs(300);

/// Reason of a user's `Ready=False` while its broker's pods do not all
/// have its credentials yet.
pub const REASON_PROPAGATING: &str = "Propagating";

/// Reconciles one user (see the module documentation).
pub async fn reconcile(user: Arc<MqttUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile_user",
        namespace = user.namespace().unwrap_or_default(),
        user = user.name_any()
    );
    let result = reconcile_user(&user, &ctx, Timestamp::now())
        .instrument(span)
        .await;
    let outcome = match &result {
        Ok((outcome, _)) => *outcome,
        Err(error) => {
            ctx.metrics.failed(error.stage());
            ReconcileResult::Error
        }
    };
    if matches!(outcome, ReconcileResult::Applied) {
        ctx.clear_failures(&failure_key(user.as_ref()));
    }
    ctx.metrics.reconciled_user(outcome);
    tracing::debug!(took = ?started.elapsed(), "user reconciled");
    result.map(|(_, action)| action)
}

/// What to do after a failed reconcile: retry with the same backoff as
/// brokers (per user).
pub fn error_policy(user: Arc<MqttUser>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&failure_key(user.as_ref()));
    let delay = backoff(failures);
    warn!(
        namespace = user.namespace().unwrap_or_default(),
        user = user.name_any(),
        %error,
        failures,
        retry_in_seconds = delay.as_secs(),
        "user reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_user(
    user: &MqttUser,
    ctx: &Context,
    now: Timestamp,
) -> Result<(ReconcileResult, Action), Error> {
    let namespace = user.namespace().ok_or(Error::NoNamespace)?;
    if user.metadata.deletion_timestamp.is_some() {
        return Ok((ReconcileResult::Deleting, Action::await_change()));
    }
    let observed = observe(ctx, user, &namespace).await?;
    apply::mark_referenced(&ctx.client, &namespace, observed.password_source.as_slice()).await;
    let clients_ca = observed
        .clients_ca
        .as_ref()
        .and_then(|s| read_clients_ca(Some(s)));
    let input = UserObserved {
        broker: observed.broker.as_ref(),
        siblings: &observed.siblings,
        secret: observed.secret.as_ref(),
        password_source: observed.password_source.as_ref(),
        trust_bundle: observed.trust_bundle.as_deref(),
        clients_ca: clients_ca.as_ref(),
    };
    let users: Api<MqttUser> = Api::namespaced(ctx.client.clone(), &namespace);
    let plan = match plan_user(user, &input, &ctx.settings, now) {
        Ok(plan) => plan,
        Err(error) => {
            let message = error.to_string();
            warn!(reason = error.reason(), error = %message, "the user cannot be applied");
            write_status(
                &users,
                user,
                user.status.as_ref(),
                &refused_status(user, &error, now),
            )
            .await?;
            ctx.events
                .publish(
                    user,
                    BrokerEvent::warning(error.reason(), "Reconcile", message),
                )
                .await;
            let requeue = match error {
                // Backs off while the broker is not there yet; its watch
                // brings the change sooner.
                UserPlanError::WaitingForBroker(_) => {
                    backoff(ctx.record_failure(&failure_key(user)))
                }
                _ => REFUSED_REQUEUE,
            };
            return Ok((ReconcileResult::Invalid, Action::requeue(requeue)));
        }
    };

    let object = with_type_meta(serde_json::to_value(&plan.secret)?);
    let seen: BTreeMap<ObjectKey, Seen> = observed
        .secret
        .iter()
        .map(|secret| {
            (
                ObjectKey::new("Secret", &secret.name_any()),
                Seen::of(&secret.metadata),
            )
        })
        .collect();
    apply::apply_changed(&ctx.client, &namespace, vec![object], &seen, &ctx.applied)
        .await
        .map_err(Error::Apply)?;
    if let Some(event) = change_event(&plan) {
        info!(reason = %event.reason, "{}", event.note);
        ctx.events.publish(user, event).await;
    }
    let in_force = in_force(user, &plan, &observed, now);
    write_status(
        &users,
        user,
        user.status.as_ref(),
        &ready_status(user, &plan, &in_force, now),
    )
    .await?;

    let requeue = plan
        .recheck_at
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
        .unwrap_or(MAX_REQUEUE)
        .clamp(Duration::from_secs(1), MAX_REQUEUE);
    Ok((ReconcileResult::Applied, Action::requeue(requeue)))
}

/// What one user reconcile reads.
#[derive(Debug, Default)]
pub struct UserObservation {
    /// The user's broker.
    pub broker: Option<MqttBroker>,
    /// The broker's users that claim the same user name.
    pub siblings: Vec<MqttUser>,
    /// The user's credentials Secret.
    pub secret: Option<Secret>,
    /// The Secret its password comes from.
    pub password_source: Option<Secret>,
    /// The broker's CA bundle.
    pub trust_bundle: Option<String>,
    /// The broker's clients CA.
    pub clients_ca: Option<Secret>,
}

async fn observe(
    ctx: &Context,
    user: &MqttUser,
    namespace: &str,
) -> Result<UserObservation, Error> {
    let client = &ctx.client;
    let broker_name = &user.spec.broker_ref.name;
    let names = Names::new(broker_name);
    let read = |e: kube::Error| Error::UserObserve(e);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let broker = Api::<MqttBroker>::namespaced(client.clone(), namespace)
        .get_opt(broker_name)
        .await
        .map_err(read)?;
    let mut observation = UserObservation {
        secret: secrets
            .get_opt(&user_secret::secret_name(&user.name_any()))
            .await
            .map_err(read)?,
        ..UserObservation::default()
    };
    if let Some(from) = &user.spec.authentication.password.value_from {
        observation.password_source = secrets
            .get_opt(&from.secret_key_ref.name)
            .await
            .map_err(read)?;
    }
    if broker.is_some() {
        // Only those claiming the same user name matter to admission.
        let username = users::username(user);
        observation.siblings = ctx
            .index
            .users_of(namespace, broker_name)
            .await?
            .iter()
            .filter(|other| users::username(other) == username)
            .map(|other| other.as_ref().clone())
            .collect();
        observation.trust_bundle = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&names.config_map)
            .await
            .map_err(read)?
            .and_then(|config_map| config_map.data?.remove(CA_BUNDLE_KEY));
        if user.spec.authentication.type_ == AuthenticationType::Tls {
            observation.clients_ca = secrets
                .get_opt(&names.clients_ca_secret)
                .await
                .map_err(read)?;
        }
    }
    observation.broker = broker;
    Ok(observation)
}

/// `apiVersion` and `kind` on a serialized Secret, for server-side apply.
fn with_type_meta(mut object: serde_json::Value) -> serde_json::Value {
    object["apiVersion"] = "v1".into();
    object["kind"] = "Secret".into();
    object
}

/// The Event telling what a plan changed in the credentials.
pub fn change_event(plan: &UserPlan) -> Option<BrokerEvent> {
    let secret = plan.secret.name_any();
    let (reason, note) = match plan.change? {
        CredentialChange::PasswordCreated => (
            "PasswordCreated",
            format!("the password of `{}` is in Secret {secret}", plan.username),
        ),
        CredentialChange::PasswordRotated(cause) => (
            "PasswordRotated",
            match plan.previous_password_valid_until {
                Some(until) => format!(
                    "new password in Secret {secret} ({}); the previous one is accepted until {until}",
                    cause.describe()
                ),
                None => format!(
                    "new password in Secret {secret} ({}); the previous one no longer works",
                    cause.describe()
                ),
            },
        ),
        CredentialChange::GraceEnded => (
            "GraceEnded",
            "the previous password's grace window ended: it no longer works".to_owned(),
        ),
        CredentialChange::CertificateIssued(reason) => (
            "CertificateIssued",
            format!(
                "new client certificate in Secret {secret} ({})",
                reason.describe()
            ),
        ),
    };
    Some(BrokerEvent::normal(reason, "Reconcile", note))
}

/// Whether the user's current credentials are in force on every pod of its
/// broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InForce {
    /// Every pod confirmed the revision that holds them.
    Everywhere {
        /// That revision.
        revision: i64,
    },
    /// Not yet: why.
    Pending(String),
}

/// Compares the entry the broker controller recorded on the user's Secret
/// (and the revision every broker pod confirmed) with the credentials this
/// plan holds.
pub fn in_force(
    user: &MqttUser,
    plan: &UserPlan,
    observed: &UserObservation,
    now: Timestamp,
) -> InForce {
    let broker = &user.spec.broker_ref.name;
    let wanted = users::entry_digest(
        &BrokerUser {
            user,
            secret: Some(&plan.secret),
        },
        now,
    );
    let recorded = observed.secret.as_ref().and_then(users::recorded_entry);
    let confirmed = observed
        .broker
        .as_ref()
        .and_then(|b| b.status.as_ref())
        .and_then(|s| s.credentials.as_ref())
        .and_then(|c| c.confirmed_revision);
    match (recorded, wanted, confirmed) {
        (Some((revision, digest)), Some(wanted), Some(confirmed))
            if digest == wanted && confirmed >= revision =>
        {
            InForce::Everywhere { revision }
        }
        (Some((revision, digest)), Some(wanted), _) if digest == wanted => {
            InForce::Pending(format!(
                "the credentials are in revision {revision} of MqttBroker {broker}'s credentials \
             file; not every broker pod has confirmed it yet"
            ))
        }
        _ => InForce::Pending(format!(
            "waiting for MqttBroker {broker} to take the new credentials into its credentials file"
        )),
    }
}

/// The status of a user whose credentials were applied.
pub fn ready_status(
    user: &MqttUser,
    plan: &UserPlan,
    in_force: &InForce,
    now: Timestamp,
) -> MqttUserStatus {
    let previous = user
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = user.metadata.generation;
    let secret = plan.secret.name_any();
    let ready = match in_force {
        InForce::Everywhere { revision } => Verdict::yes(
            "CredentialsInForce",
            &format!(
                "user `{}` is in Secret {secret}, and every pod of MqttBroker {} has it in force \
                 (credentials revision {revision})",
                plan.username, user.spec.broker_ref.name
            ),
        ),
        InForce::Pending(why) => Verdict::no(REASON_PROPAGATING, why),
    };
    let rotating = match plan.previous_password_valid_until {
        Some(until) => Verdict::yes(
            "GraceWindowOpen",
            &format!("the previous password is accepted until {until}"),
        ),
        None => Verdict::no(
            "NoPreviousPassword",
            "only the current password is accepted",
        ),
    };
    MqttUserStatus {
        observed_generation: generation,
        conditions: vec![
            ready.condition(CONDITION_USER_READY, previous, generation, now),
            rotating.condition(CONDITION_ROTATING, previous, generation, now),
        ],
        username: Some(plan.username.clone()),
        secret_name: Some(secret),
        password_rotated_at: plan.password_rotated_at.map(Time),
        previous_password_valid_until: plan.previous_password_valid_until.map(Time),
        certificate_not_after: plan.certificate_not_after.map(Time),
    }
}

/// The status of a user that cannot be applied: `Ready=False` with the
/// reason; what the previous status said about the credentials stays.
pub fn refused_status(user: &MqttUser, error: &UserPlanError, now: Timestamp) -> MqttUserStatus {
    let old = user.status.clone().unwrap_or_default();
    let generation = user.metadata.generation;
    let ready = Verdict::no(error.reason(), &error.to_string());
    let mut conditions =
        vec![ready.condition(CONDITION_USER_READY, &old.conditions, generation, now)];
    conditions.extend(
        old.conditions
            .iter()
            .filter(|c| c.type_ == CONDITION_ROTATING)
            .cloned(),
    );
    MqttUserStatus {
        observed_generation: generation,
        conditions,
        ..old
    }
}
