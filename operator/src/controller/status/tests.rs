use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::api::{CredentialsStatus, MqttBrokerSpec};
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
        metadata: Default::default(),
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
        ca_not_after: now() + SignedDuration::from_hours(24 * 3650),
        next_ca_not_after: None,
        ca_rotation_completes_at: None,
        renewals: Vec::new(),
        recheck_at: now() + SignedDuration::from_hours(24 * 335),
    }
}

/// The credentials, in force on every pod.
fn pushed() -> Option<Propagation> {
    Some(Propagation {
        revision: 1,
        pods_confirmed: 1,
        everywhere: true,
    })
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
            credentials: pushed(),
        },
        Seen {
            stateful_set: Some(&sts),
            external_service: Some(&service),
            ..Seen::default()
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
        "the broker accepts connections at mqtts://203.0.113.7:8883"
    );
    assert_eq!((status.replicas, status.ready_replicas), (1, 1));
    assert_eq!(status.endpoint.as_deref(), Some("mqtts://203.0.113.7:8883"));
    assert_eq!(
        status.credentials,
        Some(CredentialsStatus {
            revision: 1,
            confirmed_revision: Some(1),
            pods_confirmed: 1,
        })
    );
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
        credentials: pushed(),
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
    assert_eq!(status.endpoint, None, "no load balancer address yet");
    assert_eq!(status.endpoints.unwrap().external, None);

    // A new template: the pod is still ready on the old revision.
    let service = load_balancer("203.0.113.7");
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
            external_service: Some(&service),
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
    let service = load_balancer("203.0.113.7");
    let seen = Seen {
        stateful_set: Some(&sts),
        external_service: Some(&service),
        ..Seen::default()
    };
    let before = status(
        &broker,
        Outcome::Applied {
            certificate: Some(&plan),
            credentials: pushed(),
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
    let service = load_balancer("203.0.113.7");
    let judge = |certificate: UserCertificate| {
        let status = status(
            &broker,
            Outcome::Applied {
                certificate: None,
                credentials: pushed(),
            },
            Seen {
                stateful_set: Some(&sts),
                external_service: Some(&service),
                user_certificate: Some(&certificate),
                certificate_object: None,
                cluster: ClusterSeen::default(),
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
            credentials: pushed(),
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
    let service = load_balancer("203.0.113.7");
    let before = status(
        &broker,
        Outcome::Applied {
            certificate: Some(&plan),
            credentials: pushed(),
        },
        Seen {
            stateful_set: Some(&sts),
            external_service: Some(&service),
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
