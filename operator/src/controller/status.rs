//! The `MqttBroker`'s status, built from what a reconcile did and what it
//! saw. Pure: no API calls, the time is a parameter.
//!
//! | condition | `True` when |
//! |---|---|
//! | `Ready` | nothing is degraded, the certificate is ready, and every wanted pod is ready |
//! | `Available` | at least one broker pod is ready |
//! | `Progressing` | the StatefulSet is still rolling out (or scaling to) the applied spec |
//! | `Degraded` | the spec cannot be applied (reason from the planner or the API server), or applying failed |
//! | `CertificatesReady` | the server certificate exists and has not expired |
//!
//! A condition keeps its `lastTransitionTime` while its status stays the
//! same, so writing the same status twice changes nothing.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::observe::{load_balancer_ingress, UserCertificate};
use crate::api::{
    CertificateStatus, EndpointsStatus, MqttBroker, MqttBrokerStatus, CONDITION_AVAILABLE,
    CONDITION_CERTIFICATES_READY, CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY,
    PAUSED_ANNOTATION,
};
use crate::plan::{selector_labels, CertificatePlan};

/// What the reconcile did.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Every object was applied. `certificate` describes the generated
    /// certificate (`None` when the user provides it).
    Applied {
        /// The generated certificate after the apply.
        certificate: Option<&'a CertificatePlan>,
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

/// What the reconcile saw of the broker's objects: after the apply when it
/// applied, before otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The StatefulSet.
    pub stateful_set: Option<&'a StatefulSet>,
    /// The client Service.
    pub client_service: Option<&'a Service>,
    /// The user's certificate, with `spec.tls.secretName`.
    pub user_certificate: Option<&'a UserCertificate>,
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
    let namespace = broker.metadata.namespace.as_deref().unwrap_or_default();
    let generation = broker.metadata.generation;
    let pods = Pods::new(broker.spec.replicas, seen.stateful_set);

    let internal = format!("{name}.{namespace}.svc");
    let external = load_balancer_ingress(seen.client_service)
        .into_iter()
        .find_map(|ingress| ingress.ip.or(ingress.hostname));

    let (certificate, certificate_status) = certificate(broker, outcome, seen, &previous, now);
    let degraded = match outcome {
        Outcome::Applied { .. } => None,
        Outcome::Invalid { reason, message } => Some((reason, message)),
        Outcome::ApplyFailed { message } => Some((REASON_APPLY_FAILED, message)),
    };

    let ready = match degraded {
        Some((reason, message)) => Verdict::no(reason, message),
        None if certificate.status == "False" => {
            Verdict::no("CertificateNotReady", &certificate.message)
        }
        None if pods.desired == 0 => Verdict::no("ScaledToZero", "spec.replicas is 0"),
        None if pods.ready < pods.desired => Verdict::no("PodsNotReady", &pods.ready_message()),
        None => Verdict::yes(
            "Ready",
            &format!(
                "the broker accepts connections at {}",
                external.as_deref().unwrap_or(&internal)
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

    let conditions = &previous.conditions;
    MqttBrokerStatus {
        observed_generation: generation,
        conditions: vec![
            ready.condition(CONDITION_READY, conditions, generation, now),
            available.condition(CONDITION_AVAILABLE, conditions, generation, now),
            progressing.condition(CONDITION_PROGRESSING, conditions, generation, now),
            degraded.condition(CONDITION_DEGRADED, conditions, generation, now),
            certificate.condition(CONDITION_CERTIFICATES_READY, conditions, generation, now),
        ],
        replicas: pods.replicas,
        ready_replicas: pods.ready,
        selector: Some(
            selector_labels(name)
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        endpoint: Some(external.clone().unwrap_or_else(|| internal.clone())),
        endpoints: Some(EndpointsStatus { internal, external }),
        certificate: certificate_status,
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
        })
    };
    if let Some(secret_name) = &broker.spec.tls.secret_name {
        return match seen.user_certificate {
            Some(UserCertificate::Valid(info)) if info.not_after <= now => (
                Verdict::no(
                    "Expired",
                    &format!(
                        "the certificate in Secret {secret_name} expired at {}",
                        info.not_after
                    ),
                ),
                expiry(info.not_after),
            ),
            Some(UserCertificate::Valid(info)) => (
                Verdict::yes(
                    "UserProvided",
                    &format!(
                        "the certificate in Secret {secret_name} is valid until {}; it is \
                         renewed outside the operator",
                        info.not_after
                    ),
                ),
                expiry(info.not_after),
            ),
            Some(UserCertificate::Unreadable(why)) => (
                Verdict::no(
                    "InvalidCertificate",
                    &format!("Secret {secret_name}: {why}"),
                ),
                None,
            ),
            Some(UserCertificate::Missing) => (
                Verdict::no(
                    "SecretNotFound",
                    &format!("Secret {secret_name} does not exist"),
                ),
                None,
            ),
            None => (
                Verdict::unknown("NotChecked", "the certificate was not read"),
                None,
            ),
        };
    }
    match outcome {
        Outcome::Applied {
            certificate: Some(plan),
        } => (
            Verdict::yes(
                "Issued",
                &format!(
                    "the server certificate is valid until {}; it is renewed automatically",
                    plan.not_after
                ),
            ),
            expiry(plan.not_after),
        ),
        Outcome::Invalid {
            reason: reason @ "CertificateError",
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
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::api::MqttBrokerSpec;
    use crate::certs::CertInfo;
    use crate::plan::testing::{broker, broker_yaml, now};

    fn sts(generation: i64, status: StatefulSetStatus) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(status),
        }
    }

    /// A StatefulSet whose `ready` of one pod is ready, fully rolled out.
    fn rolled_out(ready: i32) -> StatefulSet {
        sts(
            2,
            StatefulSetStatus {
                observed_generation: Some(2),
                replicas: 1,
                ready_replicas: Some(ready),
                updated_replicas: Some(1),
                current_revision: Some("mq-1".to_owned()),
                update_revision: Some("mq-1".to_owned()),
                ..StatefulSetStatus::default()
            },
        )
    }

    fn load_balancer(ip: &str) -> Service {
        Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some(ip.to_owned()),
                        ..LoadBalancerIngress::default()
                    }]),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    fn certificate_plan() -> CertificatePlan {
        CertificatePlan {
            not_after: now() + SignedDuration::from_hours(24 * 365),
            renewals: Vec::new(),
            recheck_at: now() + SignedDuration::from_hours(24 * 335),
        }
    }

    fn with_generation(mut broker: MqttBroker, generation: i64) -> MqttBroker {
        broker.metadata.generation = Some(generation);
        broker
    }

    /// `(type, status, reason)` of every condition, in order.
    fn summary(status: &MqttBrokerStatus) -> Vec<(String, String, String)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn expect(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        rows.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn a_ready_broker_behind_a_load_balancer() {
        let broker = with_generation(broker(MqttBrokerSpec::default()), 3);
        let plan = certificate_plan();
        let sts = rolled_out(1);
        let service = load_balancer("203.0.113.7");
        let status = status(
            &broker,
            Outcome::Applied {
                certificate: Some(&plan),
            },
            Seen {
                stateful_set: Some(&sts),
                client_service: Some(&service),
                user_certificate: None,
            },
            now(),
        );
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "True", "Ready"),
                ("Available", "True", "PodsReady"),
                ("Progressing", "False", "RolloutComplete"),
                ("Degraded", "False", "Reconciled"),
                ("CertificatesReady", "True", "Issued"),
            ])
        );
        assert_eq!(status.observed_generation, Some(3));
        assert!(status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3) && c.last_transition_time == Time(now())));
        assert_eq!(
            status.conditions[0].message,
            "the broker accepts connections at 203.0.113.7"
        );
        assert_eq!((status.replicas, status.ready_replicas), (1, 1));
        assert_eq!(status.endpoint.as_deref(), Some("203.0.113.7"));
        assert_eq!(
            status.endpoints,
            Some(EndpointsStatus {
                internal: "mq.iot.svc".to_owned(),
                external: Some("203.0.113.7".to_owned()),
            })
        );
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=mq,app.kubernetes.io/name=kubemqtt-broker")
        );
        assert_eq!(status.certificate.unwrap().not_after, Time(plan.not_after));
    }

    #[test]
    fn a_new_broker_is_progressing_until_its_pod_is_ready() {
        let broker = broker(MqttBrokerSpec::default());
        let plan = certificate_plan();
        let applied = Outcome::Applied {
            certificate: Some(&plan),
        };
        let fresh = sts(1, StatefulSetStatus::default());
        let status = status(
            &broker,
            applied,
            Seen {
                stateful_set: Some(&fresh),
                ..Seen::default()
            },
            now(),
        );
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "False", "PodsNotReady"),
                ("Available", "False", "NoPodsReady"),
                ("Progressing", "True", "RollingOut"),
                ("Degraded", "False", "Reconciled"),
                ("CertificatesReady", "True", "Issued"),
            ])
        );
        assert_eq!(status.endpoint.as_deref(), Some("mq.iot.svc"));
        assert_eq!(status.endpoints.unwrap().external, None);

        // A new template: the pod is still ready on the old revision.
        let mut rolling = rolled_out(1);
        if let Some(s) = rolling.status.as_mut() {
            s.update_revision = Some("mq-2".to_owned());
            s.updated_replicas = Some(0);
        }
        let status = super::status(
            &broker,
            applied,
            Seen {
                stateful_set: Some(&rolling),
                ..Seen::default()
            },
            now(),
        );
        assert_eq!(
            summary(&status)[..3],
            expect(&[
                ("Ready", "True", "Ready"),
                ("Available", "True", "PodsReady"),
                ("Progressing", "True", "RollingOut"),
            ])
        );
        assert_eq!(
            status.conditions[2].message,
            "0 of 1 broker pods are updated, 1 ready"
        );
    }

    #[test]
    fn an_invalid_spec_is_degraded_and_keeps_what_it_knew() {
        let plan = certificate_plan();
        let broker = broker(MqttBrokerSpec::default());
        let sts = rolled_out(1);
        let seen = Seen {
            stateful_set: Some(&sts),
            ..Seen::default()
        };
        let before = status(
            &broker,
            Outcome::Applied {
                certificate: Some(&plan),
            },
            seen,
            now(),
        );
        let mut broker = with_generation(broker, 2);
        broker.status = Some(before.clone());
        let later = now() + SignedDuration::from_mins(5);
        let message = "spec.listeners.mqtts.port: port 1883 is already used by listeners.mqtt";
        let after = status(
            &broker,
            Outcome::Invalid {
                reason: "InvalidSpec",
                message,
            },
            seen,
            later,
        );
        assert_eq!(
            summary(&after),
            expect(&[
                ("Ready", "False", "InvalidSpec"),
                ("Available", "True", "PodsReady"),
                ("Progressing", "False", "InvalidSpec"),
                ("Degraded", "True", "InvalidSpec"),
                ("CertificatesReady", "True", "Issued"),
            ])
        );
        assert_eq!(after.conditions[0].message, message);
        assert_eq!(after.conditions[3].message, message);
        // Changed conditions moved; unchanged ones kept their time.
        let times: Vec<Timestamp> = after
            .conditions
            .iter()
            .map(|c| c.last_transition_time.0)
            .collect();
        assert_eq!(times, [later, now(), now(), later, now()]);
        assert_eq!(after.observed_generation, Some(2));
        assert_eq!(after.certificate, before.certificate);
    }

    #[test]
    fn a_certificate_error_fails_the_certificate_condition() {
        let broker = broker(MqttBrokerSpec::default());
        let status = status(
            &broker,
            Outcome::Invalid {
                reason: "CertificateError",
                message: "certificate: cannot generate",
            },
            Seen::default(),
            now(),
        );
        assert_eq!(
            summary(&status)[4],
            expect(&[("CertificatesReady", "False", "CertificateError")])[0]
        );
        assert_eq!(status.certificate, None);
    }

    #[test]
    fn an_api_error_is_degraded_without_judging_the_certificate() {
        let broker = broker(MqttBrokerSpec::default());
        let status = status(
            &broker,
            Outcome::ApplyFailed {
                message: "cannot apply Secret mq-tls: 503",
            },
            Seen::default(),
            now(),
        );
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "False", "ApplyFailed"),
                ("Available", "False", "NoPodsReady"),
                ("Progressing", "True", "RollingOut"),
                ("Degraded", "True", "ApplyFailed"),
                ("CertificatesReady", "Unknown", "NotIssued"),
            ])
        );
    }

    #[test]
    fn user_certificates_are_judged_by_their_expiry() {
        let broker = broker_yaml("tls: {secretName: my-cert}\n");
        let sts = rolled_out(1);
        let judge = |certificate: UserCertificate| {
            let status = status(
                &broker,
                Outcome::Applied { certificate: None },
                Seen {
                    stateful_set: Some(&sts),
                    client_service: None,
                    user_certificate: Some(&certificate),
                },
                now(),
            );
            let condition = status.conditions[4].clone();
            (
                status.conditions[0].status.clone(),
                condition.status,
                condition.reason,
                status.certificate.map(|c| c.not_after.0),
            )
        };
        let info = |not_after| CertInfo {
            not_before: now() - SignedDuration::from_hours(24),
            not_after,
            sans: Default::default(),
        };
        let later = now() + SignedDuration::from_hours(48);
        assert_eq!(
            judge(UserCertificate::Valid(info(later))),
            (
                "True".into(),
                "True".into(),
                "UserProvided".into(),
                Some(later)
            )
        );
        assert_eq!(
            judge(UserCertificate::Valid(info(now()))),
            (
                "False".into(),
                "False".into(),
                "Expired".into(),
                Some(now())
            )
        );
        assert_eq!(
            judge(UserCertificate::Missing),
            (
                "False".into(),
                "False".into(),
                "SecretNotFound".into(),
                None
            )
        );
        assert_eq!(
            judge(UserCertificate::Unreadable("no tls.crt".into())),
            (
                "False".into(),
                "False".into(),
                "InvalidCertificate".into(),
                None
            )
        );
    }

    #[test]
    fn scaled_to_zero_is_neither_ready_nor_available() {
        let broker = broker_yaml("replicas: 0\n");
        let plan = certificate_plan();
        let stopped = sts(
            2,
            StatefulSetStatus {
                observed_generation: Some(2),
                replicas: 0,
                ..StatefulSetStatus::default()
            },
        );
        let status = status(
            &broker,
            Outcome::Applied {
                certificate: Some(&plan),
            },
            Seen {
                stateful_set: Some(&stopped),
                ..Seen::default()
            },
            now(),
        );
        assert_eq!(
            summary(&status)[..3],
            expect(&[
                ("Ready", "False", "ScaledToZero"),
                ("Available", "False", "ScaledToZero"),
                ("Progressing", "False", "RolloutComplete"),
            ])
        );
    }

    #[test]
    fn pausing_only_changes_progressing() {
        let plan = certificate_plan();
        let mut broker = broker(MqttBrokerSpec::default());
        let sts = rolled_out(1);
        let before = status(
            &broker,
            Outcome::Applied {
                certificate: Some(&plan),
            },
            Seen {
                stateful_set: Some(&sts),
                ..Seen::default()
            },
            now(),
        );
        broker.status = Some(before.clone());
        let after = paused(&broker, now() + SignedDuration::from_mins(1));
        assert_eq!(
            summary(&after),
            expect(&[
                ("Ready", "True", "Ready"),
                ("Available", "True", "PodsReady"),
                ("Progressing", "False", "Paused"),
                ("Degraded", "False", "Reconciled"),
                ("CertificatesReady", "True", "Issued"),
            ])
        );
        // Progressing was already False: its transition time stays.
        assert_eq!(after.conditions[2].last_transition_time, Time(now()));
        assert_eq!(
            MqttBrokerStatus {
                conditions: Vec::new(),
                ..after.clone()
            },
            MqttBrokerStatus {
                conditions: Vec::new(),
                ..before
            }
        );
        // A broker paused before its first reconcile gets one condition.
        let mut fresh = broker.clone();
        fresh.status = None;
        assert_eq!(
            summary(&paused(&fresh, now())),
            expect(&[("Progressing", "False", "Paused")])
        );
    }
}
