//! The `MqttBroker`'s status, built from what a reconcile did and what it
//! saw. Pure: no API calls, the time is a parameter.
//!
//! | condition | `True` when |
//! |---|---|
//! | `Ready` | nothing is degraded, the certificate is ready, every wanted pod is ready, the load balancer has an address (when there is one), and every pod confirmed the current credentials |
//! | `Available` | at least one broker pod is ready |
//! | `Progressing` | the StatefulSet is still rolling out (or scaling to) the applied spec |
//! | `Degraded` | the spec cannot be applied (reason from the planner or the API server), or applying failed |
//! | `CertificatesReady` | the server certificate exists and has not expired |
//!
//! A condition keeps its `lastTransitionTime` while its status stays the
//! same, so writing the same status twice changes nothing. Where each
//! listener is reachable comes from [`endpoints`](super::endpoints).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;

use super::cluster::{cluster_status, ClusterStatus, PodMetrics};
use super::endpoints::Exposure;
use super::observe::UserCertificate;
use super::rebalance::CONDITION_REBALANCING;
use crate::api::{
    CertificateStatus, CredentialsStatus, EndpointsStatus, MqttBroker, MqttBrokerStatus,
    CONDITION_AVAILABLE, CONDITION_CERTIFICATES_READY, CONDITION_CLUSTER_DEGRADED,
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, PAUSED_ANNOTATION,
};
use crate::plan::cert_manager::ready_condition;
use crate::plan::{selector_labels, CertificatePlan};

/// What the reconcile did.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Every object was applied. `certificate` describes the issued
    /// certificate (`None` when cert-manager or the team provides it).
    Applied {
        /// The issued certificate after the apply.
        certificate: Option<&'a CertificatePlan>,
        /// How far the credentials file reached the pods.
        credentials: Option<Propagation>,
    },
    /// The spec cannot be applied, and nothing was.
    Invalid {
        /// CamelCase reason (`InvalidSpec`, `InvalidConfig`,
        /// `CertificateError`, `Rejected`, ...).
        reason: &'a str,
        /// What is wrong.
        message: &'a str,
    },
    /// An API call failed while applying; it is retried.
    ApplyFailed {
        /// The error.
        message: &'a str,
    },
}

/// How far a credentials file reached the broker pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// The file's revision.
    pub revision: i64,
    /// Pods that confirmed having it in force.
    pub pods_confirmed: i32,
    /// Whether every wanted pod exists and confirmed it.
    pub everywhere: bool,
}

/// What the reconcile saw of the broker's objects: after the apply when it
/// applied, before otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The StatefulSet.
    pub stateful_set: Option<&'a StatefulSet>,
    /// The external Service.
    pub external_service: Option<&'a Service>,
    /// The served certificate when the operator does not issue it.
    pub user_certificate: Option<&'a UserCertificate>,
    /// The cert-manager `Certificate`.
    pub certificate_object: Option<&'a DynamicObject>,
    /// What was seen of the cluster (brokers with `spec.cluster`).
    pub cluster: ClusterSeen<'a>,
}

/// What a reconcile saw of a clustered broker.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterSeen<'a> {
    /// The managed NATS StatefulSet.
    pub nats_stateful_set: Option<&'a StatefulSet>,
    /// The broker pods' metrics, when they were read.
    pub metrics: Option<PodMetrics>,
    /// The autoscaler applied: kind and name.
    pub autoscaler: Option<&'a str>,
    /// The `Rebalancing` condition of the replicas' step, when it ran.
    pub rebalancing: Option<&'a Condition>,
}

/// Reason of the `Degraded` and `Ready` conditions after an API error.
pub const REASON_APPLY_FAILED: &str = "ApplyFailed";
/// Reason of the `Progressing` condition of a paused broker.
pub const REASON_PAUSED: &str = "Paused";

/// The status of `broker` after a reconcile that ended with `outcome`.
pub fn status(
    broker: &MqttBroker,
    outcome: Outcome<'_>,
    seen: Seen<'_>,
    now: Timestamp,
) -> MqttBrokerStatus {
    let previous = broker.status.clone().unwrap_or_default();
    let name = broker.metadata.name.as_deref().unwrap_or_default();
    let generation = broker.metadata.generation;
    let pods = Pods::new(broker.spec.replicas, seen.stateful_set);
    let exposure = Exposure::new(broker, seen.external_service);

    let (certificate, certificate_status) = certificate(broker, outcome, seen, &previous, now);
    let degraded = match outcome {
        Outcome::Applied { .. } => None,
        Outcome::Invalid { reason, message } => Some((reason, message)),
        Outcome::ApplyFailed { message } => Some((REASON_APPLY_FAILED, message)),
    };
    let credentials = match outcome {
        Outcome::Applied {
            credentials: Some(propagation),
            ..
        } => Some(CredentialsStatus {
            revision: propagation.revision,
            confirmed_revision: if propagation.everywhere {
                Some(propagation.revision)
            } else {
                previous
                    .credentials
                    .as_ref()
                    .and_then(|c| c.confirmed_revision)
            },
            pods_confirmed: propagation.pods_confirmed,
        }),
        _ => previous.credentials.clone(),
    };
    // Every pod must have the file in force now (a restarted broker must
    // confirm it again).
    let unconfirmed = credentials
        .as_ref()
        .filter(|c| c.confirmed_revision != Some(c.revision) || c.pods_confirmed < pods.desired);
    let endpoint = exposure.endpoint();

    let ready = match degraded {
        Some((reason, message)) => Verdict::no(reason, message),
        None if certificate.status == "False" => {
            Verdict::no("CertificateNotReady", &certificate.message)
        }
        None if pods.desired == 0 => Verdict::no("ScaledToZero", "spec.replicas is 0"),
        None if pods.ready < pods.desired => Verdict::no("PodsNotReady", &pods.ready_message()),
        None if exposure.load_balancer_pending() => Verdict::no(
            "LoadBalancerPending",
            &format!(
                "the load balancer of Service {name}-external has no address yet; see its \
                 Events (kubectl describe service {name}-external)"
            ),
        ),
        None if unconfirmed.is_some() => {
            let c = unconfirmed
                .map(|c| (c.pods_confirmed, c.revision))
                .unwrap_or_default();
            Verdict::no(
                "CredentialsNotPushed",
                &format!(
                    "{} of {} broker pods confirmed credentials revision {}; retrying",
                    c.0, pods.desired, c.1
                ),
            )
        }
        None => Verdict::yes(
            "Ready",
            &format!(
                "the broker accepts connections at {}",
                endpoint.as_deref().unwrap_or(&exposure.internal_host)
            ),
        ),
    };
    let available = if pods.desired == 0 {
        Verdict::no("ScaledToZero", "spec.replicas is 0")
    } else if pods.ready >= 1 {
        Verdict::yes("PodsReady", &pods.ready_message())
    } else {
        Verdict::no("NoPodsReady", &pods.ready_message())
    };
    let progressing = match outcome {
        Outcome::Invalid { reason, .. } => Verdict::no(
            reason,
            "nothing is rolled out until the spec can be applied",
        ),
        _ if pods.rolled_out => Verdict::no("RolloutComplete", &pods.rollout_message()),
        _ => Verdict::yes("RollingOut", &pods.rollout_message()),
    };
    let degraded = match degraded {
        Some((reason, message)) => Verdict::yes(reason, message),
        None => Verdict::no("Reconciled", "every object is applied"),
    };

    let applied = matches!(outcome, Outcome::Applied { .. });
    let cluster = if applied {
        cluster_status(
            broker,
            seen.cluster,
            (pods.ready, pods.desired, &pods.ready_message()),
            &previous,
        )
    } else {
        ClusterStatus {
            connections: previous.connections,
            nats: previous.nats.clone(),
            autoscaler: previous.autoscaler.clone(),
            verdict: None,
        }
    };

    let conditions = &previous.conditions;
    let mut all = vec![
        ready.condition(CONDITION_READY, conditions, generation, now),
        available.condition(CONDITION_AVAILABLE, conditions, generation, now),
        progressing.condition(CONDITION_PROGRESSING, conditions, generation, now),
        degraded.condition(CONDITION_DEGRADED, conditions, generation, now),
        certificate.condition(CONDITION_CERTIFICATES_READY, conditions, generation, now),
    ];
    match cluster.verdict {
        Some(verdict) => {
            all.push(verdict.condition(CONDITION_CLUSTER_DEGRADED, conditions, generation, now))
        }
        // Not judged this time (nothing applied): kept as it was.
        None if broker.spec.cluster.is_some() => all.extend(
            conditions
                .iter()
                .find(|c| c.type_ == CONDITION_CLUSTER_DEGRADED)
                .cloned(),
        ),
        None => {}
    }
    // Judged by the replicas' step; kept when it did not run.
    let rebalancing = seen.cluster.rebalancing.cloned().or_else(|| {
        conditions
            .iter()
            .find(|c| c.type_ == CONDITION_REBALANCING)
            .filter(|_| broker.spec.cluster.is_some())
            .cloned()
    });
    all.extend(rebalancing);
    MqttBrokerStatus {
        observed_generation: generation,
        conditions: all,
        connections: cluster.connections,
        nats: cluster.nats,
        autoscaler: cluster.autoscaler,
        replicas: pods.replicas,
        ready_replicas: pods.ready,
        selector: Some(
            selector_labels(name)
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        endpoint,
        endpoints: Some(EndpointsStatus {
            internal: exposure.internal_host.clone(),
            external: exposure.external_host.clone(),
        }),
        listeners: exposure.listeners(),
        certificate: certificate_status,
        credentials,
    }
}

/// The status of a paused broker: as it was, with `Progressing` saying
/// that the operator changes nothing.
pub fn paused(broker: &MqttBroker, now: Timestamp) -> MqttBrokerStatus {
    let mut status = broker.status.clone().unwrap_or_default();
    let progressing = Verdict::no(
        REASON_PAUSED,
        &format!("the annotation {PAUSED_ANNOTATION} is \"true\": the operator changes nothing"),
    )
    .condition(
        CONDITION_PROGRESSING,
        &status.conditions,
        broker.metadata.generation,
        now,
    );
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == CONDITION_PROGRESSING)
    {
        Some(condition) => *condition = progressing,
        None => status.conditions.push(progressing),
    }
    status
}

/// The `CertificatesReady` condition and the certificate's expiry.
fn certificate(
    broker: &MqttBroker,
    outcome: Outcome<'_>,
    seen: Seen<'_>,
    previous: &MqttBrokerStatus,
    now: Timestamp,
) -> (Verdict, Option<CertificateStatus>) {
    let expiry = |not_after: Timestamp| {
        Some(CertificateStatus {
            not_after: Time(not_after),
            ca_not_after: None,
            next_ca_not_after: None,
            ca_rotation_completes_at: None,
        })
    };
    let tls = &broker.spec.tls;
    let provided = match (&tls.secret_name, &tls.cert_manager) {
        (Some(secret_name), _) => Some((
            format!("Secret {secret_name}"),
            "UserProvided",
            "renewed outside the operator",
        )),
        (None, Some(_)) => Some((
            format!(
                "Secret {}-tls",
                broker.metadata.name.as_deref().unwrap_or_default()
            ),
            "IssuedByCertManager",
            "renewed by cert-manager",
        )),
        (None, None) => None,
    };
    if let Some((secret, reason, renewal)) = provided {
        let pending = seen
            .certificate_object
            .and_then(|certificate| ready_condition(&serde_json::to_value(certificate).ok()?))
            .filter(|(ready, _)| !ready)
            .map(|(_, message)| message);
        return match (seen.user_certificate, pending) {
            (Some(UserCertificate::Valid(info)), _) if info.not_after <= now => (
                Verdict::no(
                    "Expired",
                    &format!("the certificate in {secret} expired at {}", info.not_after),
                ),
                expiry(info.not_after),
            ),
            (Some(UserCertificate::Valid(info)), _) => (
                Verdict::yes(
                    reason,
                    &format!(
                        "the certificate in {secret} is valid until {}; it is {renewal}",
                        info.not_after
                    ),
                ),
                expiry(info.not_after),
            ),
            (Some(_), Some(message)) => (
                Verdict::no(
                    "CertificatePending",
                    &format!("cert-manager has not issued the certificate yet: {message}"),
                ),
                None,
            ),
            (Some(UserCertificate::Unreadable(why)), None) => (
                Verdict::no("InvalidCertificate", &format!("{secret}: {why}")),
                None,
            ),
            (Some(UserCertificate::Missing), None) => (
                Verdict::no("SecretNotFound", &format!("{secret} does not exist")),
                None,
            ),
            (None, _) => (
                Verdict::unknown("NotChecked", "the certificate was not read"),
                None,
            ),
        };
    }
    match outcome {
        Outcome::Applied {
            certificate: Some(plan),
            ..
        } => {
            let rotation = match plan.ca_rotation_completes_at {
                Some(at) => format!(
                    "; the CA is being replaced: both CAs are trusted, and the new one signs \
                     from {at}"
                ),
                None => String::new(),
            };
            (
                Verdict::yes(
                    "Issued",
                    &format!(
                        "the server certificate is valid until {}; it is renewed automatically{rotation}",
                        plan.not_after
                    ),
                ),
                Some(CertificateStatus {
                    not_after: Time(plan.not_after),
                    ca_not_after: Some(Time(plan.ca_not_after)),
                    next_ca_not_after: plan.next_ca_not_after.map(Time),
                    ca_rotation_completes_at: plan.ca_rotation_completes_at.map(Time),
                }),
            )
        }
        Outcome::Invalid {
            reason: reason @ ("CertificateError" | "CaSecretInvalid"),
            message,
        } => (Verdict::no(reason, message), previous.certificate.clone()),
        // Nothing about the certificate is known: keep what was said.
        _ => {
            let verdict = previous
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_CERTIFICATES_READY)
                .map(|c| Verdict {
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .unwrap_or_else(|| {
                    Verdict::unknown("NotIssued", "no certificate has been issued yet")
                });
            (verdict, previous.certificate.clone())
        }
    }
}

/// A condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    status: String,
    reason: String,
    message: String,
}

impl Verdict {
    fn new(status: &str, reason: &str, message: &str) -> Verdict {
        Verdict {
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        }
    }

    pub(super) fn yes(reason: &str, message: &str) -> Verdict {
        Verdict::new("True", reason, message)
    }

    pub(super) fn no(reason: &str, message: &str) -> Verdict {
        Verdict::new("False", reason, message)
    }

    fn unknown(reason: &str, message: &str) -> Verdict {
        Verdict::new("Unknown", reason, message)
    }

    /// The condition of type `type_`; its transition time is kept from
    /// `previous` when the status did not change.
    pub(super) fn condition(
        self,
        type_: &str,
        previous: &[Condition],
        generation: Option<i64>,
        now: Timestamp,
    ) -> Condition {
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == self.status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_owned(),
            status: self.status,
            reason: self.reason,
            message: self.message,
            last_transition_time,
            observed_generation: generation,
        }
    }
}

/// Sets condition `type_` in `conditions` (True or False), keeping its
/// transition time while its status stays; nothing changes when it is
/// already so.
pub(super) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let value = if ready { "True" } else { "False" };
    let previous = conditions.iter().find(|c| c.type_ == type_);
    if previous.is_some_and(|c| c.status == value && c.reason == reason && c.message == message) {
        return;
    }
    let since = match previous {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: generation,
    });
}

/// The broker pods, as the StatefulSet reports them.
struct Pods {
    desired: i32,
    replicas: i32,
    ready: i32,
    updated: i32,
    /// Every wanted pod runs the applied template and is ready, and no
    /// other pod is left.
    rolled_out: bool,
}

impl Pods {
    fn new(desired: i32, stateful_set: Option<&StatefulSet>) -> Pods {
        let desired = desired.max(0);
        let status = stateful_set.and_then(|s| s.status.as_ref());
        let replicas = status.map_or(0, |s| s.replicas);
        let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let generation_seen = match (
            stateful_set.and_then(|s| s.metadata.generation),
            status.and_then(|s| s.observed_generation),
        ) {
            (Some(generation), Some(observed)) => observed >= generation,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let revision_current = status
            .is_none_or(|s| s.update_revision.is_none() || s.current_revision == s.update_revision);
        Pods {
            desired,
            replicas,
            ready,
            updated,
            rolled_out: stateful_set.is_some()
                && generation_seen
                && revision_current
                && replicas == desired
                && updated >= desired
                && ready >= desired,
        }
    }

    fn ready_message(&self) -> String {
        format!("{} of {} broker pods are ready", self.ready, self.desired)
    }

    fn rollout_message(&self) -> String {
        format!(
            "{} of {} broker pods are updated, {} ready",
            self.updated.min(self.desired),
            self.desired,
            self.ready
        )
    }
}

#[cfg(test)]
mod tests;
