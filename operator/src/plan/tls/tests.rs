use k8s_openapi::api::core::v1::LoadBalancerIngress;

use k8s_openapi::ByteString;

use super::*;
use crate::api::MqttBroker;
use crate::plan::secrets::{data_text as data_of, ADMIN_USERNAME};
use crate::plan::testing::{broker, broker_yaml, now};
use crate::plan::CertificateKind;
use crate::plan::{plan, Plan, Settings};

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

fn plan_at(broker: &MqttBroker, observed: &Observed, at: Timestamp) -> Plan {
    plan(broker, observed, &Settings::default(), at).unwrap()
}

/// What the controller would observe after applying `plan`.
fn observed_after(plan: &Plan) -> Observed {
    Observed {
        config_map: Some(plan.config_map.clone()),
        ca_secret: plan.ca_secret.clone(),
        server_secret: plan.server_secret.clone(),
        auth_secret: Some(plan.auth_secret.clone()),
        clients_ca_secret: Some(plan.clients_ca_secret.clone()),
        ..Observed::default()
    }
}

fn data(secret: &Secret, key: &str) -> String {
    data_of(secret, key)
}

fn server_cert(plan: &Plan) -> String {
    data(plan.server_secret.as_ref().unwrap(), TLS_CERT_KEY)
}

fn ca_cert(plan: &Plan) -> String {
    data(plan.ca_secret.as_ref().unwrap(), CA_CERT_KEY)
}

fn renewals(plan: &Plan) -> Vec<(CertificateKind, RenewalReason)> {
    plan.certificate
        .as_ref()
        .unwrap()
        .renewals
        .iter()
        .map(|r| (r.certificate, r.reason))
        .collect()
}

fn sans(names: &[&str]) -> BTreeSet<San> {
    names.iter().map(|n| San::parse(n).unwrap()).collect()
}

const SERVICE_NAMES: &[&str] = &[
    "mq",
    "mq.iot",
    "mq.iot.svc",
    "mq.iot.svc.cluster.local",
    "mq-headless",
    "mq-headless.iot",
    "mq-headless.iot.svc",
    "mq-headless.iot.svc.cluster.local",
    "mq-external",
    "mq-external.iot",
    "mq-external.iot.svc",
    "mq-external.iot.svc.cluster.local",
    "*.mq-headless.iot.svc",
    "*.mq-headless.iot.svc.cluster.local",
];

fn bundle(plan: &Plan) -> Vec<String> {
    certs::pem_certificates(&plan.config_map.data.as_ref().unwrap()["ca.crt"])
}

#[test]
fn a_fresh_broker_gets_a_ca_and_a_server_certificate() {
    let plan = plan_at(&broker(Default::default()), &Observed::default(), now());
    let ca_secret = plan.ca_secret.as_ref().unwrap();
    assert_eq!(ca_secret.metadata.name.as_deref(), Some("mq-ca"));
    assert_eq!(ca_secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        ca_secret.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
        [CA_CERT_KEY, CA_PRIVATE_KEY_KEY]
    );
    let server_secret = plan.server_secret.as_ref().unwrap();
    assert_eq!(server_secret.metadata.name.as_deref(), Some("mq-tls"));
    assert_eq!(server_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        server_secret
            .data
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [
            TRUST_BUNDLE_KEY,
            ISSUER_CA_KEY,
            TLS_CERT_KEY,
            TLS_PRIVATE_KEY_KEY
        ]
    );
    assert_eq!(data(server_secret, TRUST_BUNDLE_KEY), ca_cert(&plan));
    assert_eq!(data(server_secret, ISSUER_CA_KEY), ca_cert(&plan));
    // The CA outlives the broker unless asked otherwise.
    assert!(ca_secret.metadata.owner_references.is_none());
    assert!(plan.clients_ca_secret.metadata.owner_references.is_none());
    assert!(server_secret.metadata.owner_references.is_some());

    let ca = certs::inspect(&ca_cert(&plan)).unwrap();
    assert_eq!(ca.not_after, now() + days(3650));
    let server = certs::inspect(&server_cert(&plan)).unwrap();
    assert_eq!(server.sans, sans(SERVICE_NAMES));
    assert_eq!(server.not_after, now() + days(365));
    assert!(certs::is_signed_by(&server_cert(&plan), &ca_cert(&plan)));

    let certificate = plan.certificate.as_ref().unwrap();
    assert_eq!(certificate.not_after, now() + days(365));
    assert_eq!(certificate.ca_not_after, now() + days(3650));
    assert_eq!(certificate.next_ca_not_after, None);
    assert_eq!(certificate.recheck_at, now() + days(335));
    assert_eq!(
        renewals(&plan),
        [
            (CertificateKind::Ca, RenewalReason::Missing),
            (CertificateKind::Server, RenewalReason::Missing)
        ]
    );
}

#[test]
fn stored_certificates_are_kept() {
    let broker = broker(Default::default());
    let first = plan_at(&broker, &Observed::default(), now());
    let second = plan_at(&broker, &observed_after(&first), now() + days(100));
    assert_eq!(second.ca_secret, first.ca_secret);
    assert_eq!(second.server_secret, first.server_secret);
    assert_eq!(second.config_map, first.config_map);
    assert_eq!(renewals(&second), []);
}

#[test]
fn the_load_balancer_address_is_added_when_it_appears() {
    let broker = broker(Default::default());
    let first = plan_at(&broker, &Observed::default(), now());
    let mut observed = observed_after(&first);
    observed.load_balancer_ingress = vec![
        LoadBalancerIngress {
            ip: Some("203.0.113.7".into()),
            ..Default::default()
        },
        LoadBalancerIngress {
            hostname: Some("abc.elb.example.com".into()),
            ..Default::default()
        },
    ];
    let second = plan_at(&broker, &observed, now());
    assert_eq!(
        renewals(&second),
        [(CertificateKind::Server, RenewalReason::NamesChanged)]
    );
    assert_eq!(ca_cert(&second), ca_cert(&first));
    let info = certs::inspect(&server_cert(&second)).unwrap();
    let mut expected = sans(SERVICE_NAMES);
    expected.extend(sans(&["203.0.113.7", "abc.elb.example.com"]));
    assert_eq!(info.sans, expected);
}

#[test]
fn extra_sans_and_cluster_domain_are_covered() {
    let broker = broker_yaml(
        "tls: {generated: {extraSANs: [mqtt.example.com, '*.devices.example.com', 192.0.2.1]}}",
    );
    let settings = Settings {
        cluster_domain: "corp.internal".into(),
        ..Settings::default()
    };
    let plan = plan(&broker, &Observed::default(), &settings, now()).unwrap();
    let info = certs::inspect(&server_cert(&plan)).unwrap();
    for name in [
        "mqtt.example.com",
        "*.devices.example.com",
        "192.0.2.1",
        "mq.iot.svc.corp.internal",
        "*.mq-headless.iot.svc.corp.internal",
    ] {
        assert!(info.sans.contains(&San::parse(name).unwrap()), "{name}");
    }
    assert!(!info
        .sans
        .contains(&San::parse("mq.iot.svc.cluster.local").unwrap()));
}

#[test]
fn an_invalid_extra_san_names_its_field() {
    let error = plan(
        &broker_yaml("tls: {generated: {extraSANs: [ok.example.com, 'not valid']}}"),
        &Observed::default(),
        &Settings::default(),
        now(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "spec.tls.generated.extraSANs[1]: `not valid` is neither an IP address nor a valid DNS name"
    );
}

#[test]
fn validity_and_renewal_window_follow_the_spec() {
    let broker = broker_yaml("tls: {generated: {validityDays: 90, renewBeforeDays: 10}}");
    let first = plan_at(&broker, &Observed::default(), now());
    assert_eq!(
        first.certificate.as_ref().unwrap().not_after,
        now() + days(90)
    );
    assert_eq!(
        first.certificate.as_ref().unwrap().recheck_at,
        now() + days(80)
    );
    let observed = observed_after(&first);
    // One second before the window: kept.
    let before = now() + days(80) - SignedDuration::from_secs(1);
    assert_eq!(renewals(&plan_at(&broker, &observed, before)), []);
    // In the window: re-issued by the same CA.
    let renewed = plan_at(&broker, &observed, now() + days(80));
    assert_eq!(
        renewals(&renewed),
        [(CertificateKind::Server, RenewalReason::Expiring)]
    );
    assert_eq!(ca_cert(&renewed), ca_cert(&first));
    let info = certs::inspect(&server_cert(&renewed)).unwrap();
    assert_eq!(info.not_after, now() + days(170));
}

#[test]
fn a_bad_renewal_window_is_rejected() {
    let error = plan(
        &broker_yaml("tls: {generated: {validityDays: 10, renewBeforeDays: 10}}"),
        &Observed::default(),
        &Settings::default(),
        now(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "spec.tls.generated.renewBeforeDays: must be at least 1 and less than validityDays"
    );
}

#[test]
fn force_renew_annotation_renews_once_per_value() {
    let mut broker = broker(Default::default());
    let first = plan_at(&broker, &Observed::default(), now());
    broker.metadata.annotations = Some(BTreeMap::from([(
        FORCE_RENEW_ANNOTATION.to_owned(),
        "2025-06-01".to_owned(),
    )]));
    let forced = plan_at(&broker, &observed_after(&first), now());
    assert_eq!(
        renewals(&forced),
        [(CertificateKind::Server, RenewalReason::Forced)]
    );
    assert_ne!(server_cert(&forced), server_cert(&first));
    let recorded = forced
        .server_secret
        .as_ref()
        .unwrap()
        .metadata
        .annotations
        .clone();
    assert_eq!(recorded.unwrap()[FORCE_RENEW_ANNOTATION], "2025-06-01");

    let again = plan_at(&broker, &observed_after(&forced), now());
    assert_eq!(renewals(&again), []);

    broker.metadata.annotations = Some(BTreeMap::from([(
        FORCE_RENEW_ANNOTATION.to_owned(),
        "2025-06-02".to_owned(),
    )]));
    let forced_again = plan_at(&broker, &observed_after(&again), now());
    assert_eq!(
        renewals(&forced_again),
        [(CertificateKind::Server, RenewalReason::Forced)]
    );
}

#[test]
fn a_ca_rotation_trusts_the_new_ca_first_and_signs_with_it_after_the_overlap() {
    let broker = broker(Default::default());
    let first = plan_at(&broker, &Observed::default(), now());
    let old_ca = ca_cert(&first);
    // The CA (10 × 365 days) starts rotating when it has less than
    // 365 + 30 days (a new certificate and its renewal window) plus
    // the 30 days of overlap left.
    let rotation_due = now() + days(3650 - 425);
    let mut observed = observed_after(&first);
    let fresh_server = plan_at(&broker, &observed, rotation_due - days(1));
    assert_eq!(
        renewals(&fresh_server),
        [(CertificateKind::Server, RenewalReason::Expiring)]
    );
    assert_eq!(
        fresh_server.certificate.as_ref().unwrap().recheck_at,
        rotation_due,
        "come back when the rotation is due"
    );
    observed = observed_after(&fresh_server);

    // Step 1: the new CA is trusted; the served certificate stays.
    let started = plan_at(&broker, &observed, rotation_due);
    assert_eq!(
        renewals(&started),
        [(CertificateKind::Ca, RenewalReason::Expiring)]
    );
    assert_eq!(server_cert(&started), server_cert(&fresh_server));
    assert_eq!(ca_cert(&started), old_ca);
    let ca_secret = started.ca_secret.as_ref().unwrap();
    let new_ca = data(ca_secret, NEXT_CA_CERT_KEY);
    assert_eq!(
        ca_secret.metadata.annotations.as_ref().unwrap()[CA_ROTATION_COMPLETES_AT_ANNOTATION],
        (rotation_due + days(30)).to_string()
    );
    let trusted = bundle(&started);
    assert_eq!(trusted.len(), 2);
    assert!(certs::same_certificate(&trusted[0], &old_ca));
    assert!(certs::same_certificate(&trusted[1], &new_ca));
    let certificate = started.certificate.as_ref().unwrap();
    assert_eq!(
        certificate.ca_rotation_completes_at,
        Some(rotation_due + days(30))
    );
    assert_eq!(certificate.recheck_at, rotation_due + days(30));
    assert!(certificate.next_ca_not_after.is_some());

    // Nothing more during the overlap.
    observed = observed_after(&started);
    let during = plan_at(&broker, &observed, rotation_due + days(29));
    assert_eq!(renewals(&during), []);
    assert_eq!(during.ca_secret, started.ca_secret);
    assert_eq!(during.config_map, started.config_map);

    // Step 2: the new CA signs, the old one leaves the bundle.
    let completed = plan_at(&broker, &observed, rotation_due + days(30));
    assert_eq!(
        renewals(&completed),
        [(CertificateKind::Server, RenewalReason::CaRotationCompleted)]
    );
    assert_eq!(ca_cert(&completed), new_ca);
    assert!(certs::is_signed_by(&server_cert(&completed), &new_ca));
    assert_eq!(bundle(&completed).len(), 1);
    let ca_secret = completed.ca_secret.as_ref().unwrap();
    assert!(text(ca_secret, NEXT_CA_CERT_KEY).is_none());
    assert!(ca_secret.metadata.annotations.is_none());
    assert_eq!(
        completed
            .certificate
            .as_ref()
            .unwrap()
            .ca_rotation_completes_at,
        None
    );
}

#[test]
fn rotate_ca_annotation_starts_a_rotation_once_per_value() {
    let mut broker = broker(Default::default());
    let first = plan_at(&broker, &Observed::default(), now());
    broker.metadata.annotations = Some(BTreeMap::from([(
        ROTATE_CA_ANNOTATION.to_owned(),
        "leaked".to_owned(),
    )]));
    let started = plan_at(&broker, &observed_after(&first), now());
    assert_eq!(
        renewals(&started),
        [(CertificateKind::Ca, RenewalReason::Forced)]
    );
    assert_eq!(bundle(&started).len(), 2);
    let recorded = started
        .ca_secret
        .as_ref()
        .unwrap()
        .metadata
        .annotations
        .clone();
    assert_eq!(recorded.unwrap()[ROTATE_CA_ANNOTATION], "leaked");
    // The same value again, after the rotation: nothing.
    let completed = plan_at(&broker, &observed_after(&started), now() + days(30));
    let after = plan_at(&broker, &observed_after(&completed), now() + days(31));
    assert_eq!(renewals(&after), []);
}

#[test]
fn without_overlap_the_new_ca_signs_at_once() {
    let mut broker = broker_yaml("tls: {ca: {overlapDays: 0}}");
    let first = plan_at(&broker, &Observed::default(), now());
    broker.metadata.annotations = Some(BTreeMap::from([(
        ROTATE_CA_ANNOTATION.to_owned(),
        "1".to_owned(),
    )]));
    let rotated = plan_at(&broker, &observed_after(&first), now());
    assert_eq!(
        renewals(&rotated),
        [
            (CertificateKind::Ca, RenewalReason::Forced),
            (CertificateKind::Server, RenewalReason::CaRotationCompleted)
        ]
    );
    assert_ne!(ca_cert(&rotated), ca_cert(&first));
    assert_eq!(bundle(&rotated).len(), 1);
}

#[test]
fn the_ca_is_deleted_with_the_broker_when_asked() {
    let plan = plan_at(
        &broker_yaml("tls: {ca: {deleteWithBroker: true}}"),
        &Observed::default(),
        now(),
    );
    assert!(plan.ca_secret.unwrap().metadata.owner_references.is_some());
    assert!(plan.clients_ca_secret.metadata.owner_references.is_some());
}

/// A Secret of a team's CA, as `tls.crt` and `tls.key`.
fn team_secret(ca: &CertifiedKeyPem) -> Secret {
    Secret {
        data: Some(
            [("tls.crt", &ca.cert_pem), ("tls.key", &ca.key_pem)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[test]
fn a_teams_ca_issues_the_certificate_and_rotates_with_an_overlap() {
    let broker = broker_yaml("tls: {ca: {secretName: team-ca, overlapDays: 10}}");
    let error = plan(&broker, &Observed::default(), &Settings::default(), now()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "spec.tls.ca.secretName: Secret team-ca: it does not exist"
    );
    assert_eq!(error.reason(), "CaSecretInvalid");
    let not_a_ca = certs::issue_server_cert(
        &certs::generate_ca("x", now(), days(10)).unwrap(),
        "x",
        &sans(&["x"]),
        now(),
        days(1),
    )
    .unwrap();
    let observed = Observed {
        ca_source: Some(team_secret(&not_a_ca)),
        ..Observed::default()
    };
    assert!(plan(&broker, &observed, &Settings::default(), now())
        .unwrap_err()
        .to_string()
        .contains("is not a CA"));

    let team = certs::generate_ca("Team CA", now(), days(3650)).unwrap();
    let observed = Observed {
        ca_source: Some(team_secret(&team)),
        ..Observed::default()
    };
    let first = plan_at(&broker, &observed, now());
    assert!(first.ca_secret.is_none(), "the team's CA is only read");
    assert!(certs::is_signed_by(&server_cert(&first), &team.cert_pem));
    assert_eq!(bundle(&first).len(), 1);

    // The team replaces its CA.
    let next = certs::generate_ca("Team CA 2", now(), days(3650)).unwrap();
    let mut observed = observed_after(&first);
    observed.ca_source = Some(team_secret(&next));
    let rotating = plan_at(&broker, &observed, now() + days(1));
    assert_eq!(renewals(&rotating), []);
    assert_eq!(server_cert(&rotating), server_cert(&first));
    let trusted = bundle(&rotating);
    assert!(certs::same_certificate(&trusted[0], &team.cert_pem));
    assert!(certs::same_certificate(&trusted[1], &next.cert_pem));
    let completes = now() + days(11);
    assert_eq!(
        rotating
            .certificate
            .as_ref()
            .unwrap()
            .ca_rotation_completes_at,
        Some(completes)
    );
    // Until the overlap ends, then the new CA issues it.
    observed.server_secret = rotating.server_secret.clone();
    let still = plan_at(&broker, &observed, completes - days(1));
    assert_eq!(server_cert(&still), server_cert(&first));
    let moved = plan_at(&broker, &observed, completes);
    assert_eq!(
        renewals(&moved),
        [(CertificateKind::Server, RenewalReason::CaRotationCompleted)]
    );
    assert!(certs::is_signed_by(&server_cert(&moved), &next.cert_pem));
    assert_eq!(bundle(&moved).len(), 1);
    // A certificate that needs re-issuing during the overlap is issued
    // by the new CA at once.
    let mut renamed = broker.clone();
    renamed.spec.tls.generated = Some(crate::api::GeneratedTlsSpec {
        extra_sans: vec!["mqtt.example.com".into()],
        ..Default::default()
    });
    let early = plan_at(&renamed, &observed, now() + days(2));
    assert!(certs::is_signed_by(&server_cert(&early), &next.cert_pem));
    assert_eq!(ADMIN_USERNAME, "kubemqtt-admin");
}

#[test]
fn unreadable_or_mismatched_material_is_replaced() {
    let broker = broker(Default::default());
    let first = plan_at(&broker, &Observed::default(), now());

    let mut observed = observed_after(&first);
    let mut server = observed.server_secret.take().unwrap();
    let other = plan_at(&broker, &Observed::default(), now());
    // The key of another certificate.
    server.data.as_mut().unwrap().insert(
        TLS_PRIVATE_KEY_KEY.into(),
        ByteString(data(other.server_secret.as_ref().unwrap(), TLS_PRIVATE_KEY_KEY).into_bytes()),
    );
    observed.server_secret = Some(server);
    let replaced = plan_at(&broker, &observed, now());
    assert_eq!(
        renewals(&replaced),
        [(CertificateKind::Server, RenewalReason::Unreadable)]
    );

    let mut observed = observed_after(&first);
    observed
        .ca_secret
        .as_mut()
        .unwrap()
        .data
        .as_mut()
        .unwrap()
        .insert(CA_CERT_KEY.into(), ByteString(b"garbage".to_vec()));
    let replaced = plan_at(&broker, &observed, now());
    assert_eq!(
        renewals(&replaced),
        [
            (CertificateKind::Ca, RenewalReason::Unreadable),
            (CertificateKind::Server, RenewalReason::IssuerChanged)
        ]
    );
    // An unreadable CA is nothing clients could trust: replaced at once.
    assert_eq!(bundle(&replaced).len(), 1);
}

#[test]
fn a_user_certificate_means_no_generated_secrets() {
    let plan = plan_at(
        &broker_yaml("tls: {secretName: my-cert}"),
        &Observed::default(),
        now(),
    );
    assert!(plan.ca_secret.is_none());
    assert!(plan.server_secret.is_none());
    assert!(plan.certificate.is_none());
}
