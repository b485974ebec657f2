//! Kubernetes Events on an `MqttBroker`: what the operator created,
//! changed, renewed, or failed on (`kubectl describe mqttbroker` shows
//! them).
//!
//! The builders here are pure; [`Events::publish`] sends one through
//! kube's [`Recorder`].

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use super::apply::FIELD_MANAGER;
use super::ObjectKey;
use crate::api::PAUSED_ANNOTATION;
use crate::certs::RenewalReason;
use crate::plan::{CertificateKind, CertificatePlan, ExposureWarning};

/// The API server refuses Event notes longer than this (bytes).
const MAX_NOTE: usize = 1024;

/// One Event to publish on a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEvent {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason, e.g. `Created` or `InvalidSpec`.
    pub reason: String,
    /// What the operator was doing, e.g. `Apply`.
    pub action: &'static str,
    /// The human-readable detail.
    pub note: String,
}

impl BrokerEvent {
    /// A Normal Event.
    pub fn normal(reason: &str, action: &'static str, note: String) -> BrokerEvent {
        BrokerEvent {
            warning: false,
            reason: reason.to_owned(),
            action,
            note,
        }
    }

    /// A Warning Event.
    pub fn warning(reason: &str, action: &'static str, note: String) -> BrokerEvent {
        BrokerEvent {
            warning: true,
            ..BrokerEvent::normal(reason, action, note)
        }
    }
}

/// The Events after applying: one `Created` listing the objects that did
/// not exist, one `Updated` listing those whose content changed. Nothing
/// when nothing changed.
pub fn changes(created: &[ObjectKey], updated: &[ObjectKey]) -> Vec<BrokerEvent> {
    let list = |keys: &[ObjectKey]| {
        keys.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut events = Vec::new();
    if !created.is_empty() {
        events.push(BrokerEvent::normal(
            "Created",
            "Apply",
            format!("created {}", list(created)),
        ));
    }
    if !updated.is_empty() {
        events.push(BrokerEvent::normal(
            "Updated",
            "Apply",
            format!("updated {}", list(updated)),
        ));
    }
    events
}

/// The Event when the StatefulSet was replaced for new volume claims.
pub fn replaced_stateful_set() -> BrokerEvent {
    BrokerEvent::normal(
        "StatefulSetReplaced",
        "Apply",
        "replaced the StatefulSet for its new volume claims (spec.persistence); its pods kept \
         running and roll onto the new template"
            .to_owned(),
    )
}

/// The Event when an object the spec no longer asks for was deleted.
pub fn deleted(object: &ObjectKey) -> BrokerEvent {
    let why = match object.kind.as_str() {
        "PodDisruptionBudget" if !object.name.ends_with("-nats") => {
            "spec.replicas is 1 or less: a single pod has no disruption budget"
        }
        "HorizontalPodAutoscaler" | "ScaledObject" => {
            "spec.autoscaling no longer asks for it; spec.replicas stays where the autoscaler left it"
        }
        _ => "spec.cluster.nats.managed is gone; the NATS volumes are kept",
    };
    BrokerEvent::normal("Deleted", "Delete", format!("deleted {object}: {why}"))
}

/// One Event per certificate a plan issued: `CertificateIssued` for a
/// first certificate, `CaRotationStarted` and `CaRotationCompleted` for the
/// two steps of a CA rotation, `CertificateRenewed` with the reason
/// otherwise.
pub fn renewals(certificate: &CertificatePlan) -> Vec<BrokerEvent> {
    certificate
        .renewals
        .iter()
        .map(|renewal| {
            let which = match renewal.certificate {
                CertificateKind::Ca => "the CA certificate",
                CertificateKind::Server => "the server certificate",
            };
            let why = renewal.reason.describe();
            match (
                renewal.certificate,
                renewal.reason,
                certificate.ca_rotation_completes_at,
            ) {
                (_, RenewalReason::Missing, _) => BrokerEvent::normal(
                    "CertificateIssued",
                    "IssueCertificate",
                    format!("issued {which}: {why}"),
                ),
                (CertificateKind::Ca, _, Some(at)) => BrokerEvent::normal(
                    "CaRotationStarted",
                    "IssueCertificate",
                    format!(
                        "issued a new CA ({why}): clients trust it from now on (ca.crt of the \
                         ConfigMap and of every user's Secret holds both CAs), and it signs \
                         the server certificate from {at}"
                    ),
                ),
                (CertificateKind::Server, RenewalReason::CaRotationCompleted, _) => {
                    BrokerEvent::normal(
                        "CaRotationCompleted",
                        "IssueCertificate",
                        format!("issued {which}: {why}; the old CA left the trust bundle"),
                    )
                }
                _ => BrokerEvent::normal(
                    "CertificateRenewed",
                    "IssueCertificate",
                    format!("issued {which}: {why}"),
                ),
            }
        })
        .collect()
}

/// The Warning about an exposure choice.
pub fn exposure(warning: &ExposureWarning) -> BrokerEvent {
    BrokerEvent::warning(warning.reason(), "Expose", warning.message())
}

/// The Warning for a spec that cannot be applied (`reason` from the
/// planner, or `Rejected` by the API server).
pub fn invalid(reason: &str, message: &str) -> BrokerEvent {
    BrokerEvent::warning(reason, "Plan", format!("nothing was applied: {message}"))
}

/// The Warning for an API error while applying.
pub fn apply_failed(message: &str) -> BrokerEvent {
    BrokerEvent::warning(
        super::status::REASON_APPLY_FAILED,
        "Apply",
        format!("{message}; retrying"),
    )
}

/// The Event when a broker becomes paused.
pub fn paused() -> BrokerEvent {
    BrokerEvent::normal(
        super::status::REASON_PAUSED,
        "Pause",
        format!("{PAUSED_ANNOTATION} is \"true\": the operator stops changing this broker"),
    )
}

/// Publishes Events on brokers.
///
/// Each Event is created anew: kube's [`Recorder`] folds Events with the
/// same reason into a series that keeps the first note, which would hide
/// a changed message. A Warning that repeats (a spec still invalid, an API
/// still failing) is instead published once per [`REPEAT_WARNINGS_AFTER`].
pub struct Events {
    client: Client,
    reporter: Reporter,
    /// When each recent Warning (broker, reason, note) was published.
    warned: Mutex<HashMap<(String, String, String), Instant>>,
}

/// How long an identical Warning on a broker is not published again (the
/// API server keeps Events for an hour by default).
pub const REPEAT_WARNINGS_AFTER: Duration = Duration::from_secs(3600);

impl Events {
    /// A publisher reporting as the operator; `instance` names this replica
    /// (its pod name).
    pub fn new(client: Client, instance: Option<String>) -> Events {
        Events {
            client,
            reporter: Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance,
            },
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `event` on `object` (an `MqttBroker` or `MqttUser`),
    /// unless it is a Warning published in the last
    /// [`REPEAT_WARNINGS_AFTER`]. Events are informational: a failure is
    /// logged, not returned.
    pub async fn publish<K>(&self, object: &K, event: BrokerEvent)
    where
        K: Resource<DynamicType = ()>,
    {
        let key = (
            format!(
                "{}/{}/{}",
                K::kind(&()),
                object.namespace().unwrap_or_default(),
                object.name_any()
            ),
            event.reason.clone(),
            event.note.clone(),
        );
        if event.warning && !self.first_warning(&key) {
            tracing::debug!(reason = %event.reason, "not repeating a recent Warning");
            return;
        }
        let kube_event = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.clone(),
            note: Some(truncate(&event.note, MAX_NOTE)),
            action: event.action.to_owned(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(error) = recorder.publish(&kube_event, &object.object_ref(&())).await {
            tracing::warn!(%error, reason = %event.reason, "cannot publish an Event");
            self.lock_warned().remove(&key);
        }
    }

    /// Records the Warning `key`; whether it was not published recently.
    fn first_warning(&self, key: &(String, String, String)) -> bool {
        let mut warned = self.lock_warned();
        warned.retain(|_, at| at.elapsed() < REPEAT_WARNINGS_AFTER);
        warned.insert(key.clone(), Instant::now()).is_none()
    }

    fn lock_warned(&self) -> MutexGuard<'_, HashMap<(String, String, String), Instant>> {
        self.warned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::plan::{ListenerKind, Renewal};

    #[test]
    fn created_and_updated_objects_are_listed() {
        let key = ObjectKey::new;
        assert_eq!(
            changes(
                &[key("Service", "mq"), key("StatefulSet", "mq")],
                &[key("ConfigMap", "mq-config")]
            ),
            [
                BrokerEvent::normal(
                    "Created",
                    "Apply",
                    "created Service mq, StatefulSet mq".into()
                ),
                BrokerEvent::normal("Updated", "Apply", "updated ConfigMap mq-config".into()),
            ]
        );
        assert_eq!(changes(&[], &[]), []);
    }

    fn plan(
        renewals: &[(CertificateKind, RenewalReason)],
        completes: Option<Timestamp>,
    ) -> CertificatePlan {
        let at: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        CertificatePlan {
            not_after: at,
            ca_not_after: at,
            next_ca_not_after: None,
            ca_rotation_completes_at: completes,
            renewals: renewals
                .iter()
                .map(|(certificate, reason)| Renewal {
                    certificate: *certificate,
                    reason: *reason,
                })
                .collect(),
            recheck_at: at,
        }
    }

    #[test]
    fn renewals_say_which_certificate_and_why() {
        let events = renewals(&plan(
            &[
                (CertificateKind::Ca, RenewalReason::Missing),
                (CertificateKind::Server, RenewalReason::NamesChanged),
            ],
            None,
        ));
        assert_eq!(
            events,
            [
                BrokerEvent::normal(
                    "CertificateIssued",
                    "IssueCertificate",
                    "issued the CA certificate: no certificate existed".into()
                ),
                BrokerEvent::normal(
                    "CertificateRenewed",
                    "IssueCertificate",
                    "issued the server certificate: the names to cover changed".into()
                ),
            ]
        );
    }

    #[test]
    fn the_two_steps_of_a_ca_rotation_are_told() {
        let completes: Timestamp = "2025-07-01T12:00:00Z".parse().unwrap();
        let started = renewals(&plan(
            &[(CertificateKind::Ca, RenewalReason::Forced)],
            Some(completes),
        ));
        assert_eq!(started[0].reason, "CaRotationStarted");
        assert!(
            started[0]
                .note
                .contains("signs the server certificate from 2025-07-01T12:00:00Z"),
            "{}",
            started[0].note
        );
        let completed = renewals(&plan(
            &[(CertificateKind::Server, RenewalReason::CaRotationCompleted)],
            None,
        ));
        assert_eq!(completed[0].reason, "CaRotationCompleted");
    }

    #[test]
    fn failures_and_exposure_are_warnings() {
        let event = invalid("InvalidSpec", "spec.labels: bad");
        assert!(event.warning);
        assert_eq!(event.reason, "InvalidSpec");
        assert_eq!(event.note, "nothing was applied: spec.labels: bad");
        assert!(apply_failed("cannot apply Secret mq-tls").warning);
        assert!(!paused().warning);
        let exposed = exposure(&ExposureWarning::PlainTextOpenToTheWorld {
            listener: ListenerKind::Mqtt,
        });
        assert!(exposed.warning);
        assert_eq!(exposed.reason, "PlainTextExposed");
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        // 'é' is two bytes: cutting at 2 would split it.
        assert_eq!(truncate("aéb", 2), "a");
    }
}
