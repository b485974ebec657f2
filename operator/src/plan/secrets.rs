//! The Secrets: the CA (`<name>-ca`), the server certificate
//! (`<name>-tls`), the clients CA (`<name>-clients-ca`) and the broker's
//! credentials (`<name>-auth`).
//!
//! The auth Secret holds the broker's credentials file, with one
//! operator-owned user, `kubemqtt-admin` (its password is in the same
//! Secret for health tooling), and every admitted `MqttUser`; and the bearer
//! token of the broker's admin API. The broker re-reads both files when they
//! change, and the controller pushes the credentials file to the admin API
//! so that a change does not wait for the kubelet.
//!
//! Certificate lifecycle, decided afresh on every plan from what is stored:
//! - The CA is valid for ten times the server certificate's validity, and
//!   renewed once it could no longer outlive a new server certificate plus
//!   its renewal window.
//! - The server certificate covers every DNS name of the two Services, the
//!   load balancer's addresses and the extra SANs. It is re-issued when it
//!   is missing or unreadable, was signed by another CA, was asked for with
//!   the force-renew annotation, covers other names, or comes within
//!   `renewBeforeDays` of expiry.
//! - When the CA is renewed, the old CA stays in the trust bundle (as
//!   `previous-ca.crt` in the CA Secret) until the certificate it signed
//!   has been replaced and [`PREVIOUS_CA_GRACE`] has passed, long enough
//!   for the pods and clients to see the new files.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;

use super::users::{self, BrokerUser};
use super::{CertificateKind, CertificatePlan, Context, Observed, PlanError, Renewal};
use crate::api::{GeneratedTlsSpec, FORCE_RENEW_ANNOTATION};
use crate::certs::{self, CertInfo, CertifiedKeyPem, RenewalReason, San, BACKDATE};

/// The CA certificate, in the CA Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's private key, in the CA Secret.
pub const CA_PRIVATE_KEY_KEY: &str = "ca.key";
/// The CA replaced by the last CA renewal, while it is still trusted.
pub const PREVIOUS_CA_KEY: &str = "previous-ca.crt";
/// The server certificate, in the server Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The server's private key, in the server Secret.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";
/// The trust bundle (current CA, and the previous one while it is kept),
/// in the server Secret.
pub const TRUST_BUNDLE_KEY: &str = "ca.crt";
/// The admin user name, in the auth Secret.
pub const USERNAME_KEY: &str = "username";
/// The admin password, in the auth Secret.
pub const PASSWORD_KEY: &str = "password";
/// The broker's credentials file (TOML, see the broker's docs/auth.md), in
/// the auth Secret.
pub const CREDENTIALS_KEY: &str = "credentials.toml";
/// The bearer token of the broker's admin API, in the auth Secret.
pub const ADMIN_TOKEN_KEY: &str = "admin-token";

/// The user the operator and its health tooling log in as.
pub const ADMIN_USERNAME: &str = "kubemqtt-admin";

/// How long the previous CA stays trusted after the certificate it signed
/// was replaced.
pub const PREVIOUS_CA_GRACE: SignedDuration = SignedDuration::from_mins(10);

/// How long a clients CA is valid.
pub const CLIENTS_CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 3650);
/// A clients CA this close to expiry is replaced.
pub const CLIENTS_CA_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 365);

/// The CA lives this many times as long as a server certificate.
const CA_VALIDITY_FACTOR: i32 = 10;

/// The TLS part of a plan.
#[derive(Debug, Default)]
pub(super) struct TlsObjects {
    pub ca_secret: Option<Secret>,
    pub server_secret: Option<Secret>,
    /// The CA certificates clients should trust, PEM.
    pub ca_bundle: Option<String>,
    pub certificate: Option<CertificatePlan>,
}

/// Plans the CA and server certificate Secrets; nothing when the spec names
/// its own certificate Secret.
pub(super) fn tls(
    ctx: &Context<'_>,
    observed: &Observed,
    now: Timestamp,
) -> Result<TlsObjects, PlanError> {
    if ctx.spec.tls.secret_name.is_some() {
        return Ok(TlsObjects::default());
    }
    let generated = ctx.spec.tls.generated.clone().unwrap_or_default();
    let (validity, renew_before) = durations(&generated)?;
    let sans = server_sans(ctx, observed, &generated.extra_sans)?;
    let mut renewals = Vec::new();

    // The CA.
    let ca_window = validity + renew_before;
    let stored_ca = Stored::read(observed.ca_secret.as_ref(), CA_CERT_KEY, CA_PRIVATE_KEY_KEY);
    let ca_reason = match &stored_ca {
        Stored::Missing => Some(RenewalReason::Missing),
        Stored::Unreadable => Some(RenewalReason::Unreadable),
        Stored::Valid(_, info) => certs::needs_renewal(info, now, ca_window, &BTreeSet::new()),
    };
    let (ca, ca_info, previous_ca) = match (ca_reason, stored_ca) {
        (None, Stored::Valid(ca, info)) => {
            let previous = observed
                .ca_secret
                .as_ref()
                .and_then(|secret| text(secret, PREVIOUS_CA_KEY))
                .map(str::to_owned);
            (ca, info, previous)
        }
        (reason, stored) => {
            let common_name = format!("KubeMQTT CA {}/{}", ctx.namespace, ctx.names.broker);
            let ca = certs::generate_ca(&common_name, now, validity * CA_VALIDITY_FACTOR)?;
            let info = certs::inspect(&ca.cert_pem)?;
            renewals.push(Renewal {
                certificate: CertificateKind::Ca,
                reason: reason.unwrap_or(RenewalReason::Missing),
            });
            let previous = match stored {
                Stored::Valid(old, _) => Some(old.cert_pem),
                _ => None,
            };
            (ca, info, previous)
        }
    };

    // The server certificate.
    let requested_renewal = ctx
        .broker
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORCE_RENEW_ANNOTATION))
        .filter(|value| !value.is_empty());
    let handled_renewal = observed
        .server_secret
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(FORCE_RENEW_ANNOTATION));
    let stored_server = Stored::read(
        observed.server_secret.as_ref(),
        TLS_CERT_KEY,
        TLS_PRIVATE_KEY_KEY,
    );
    let server_reason = match &stored_server {
        Stored::Missing => Some(RenewalReason::Missing),
        Stored::Unreadable => Some(RenewalReason::Unreadable),
        Stored::Valid(server, _) if !certs::is_signed_by(&server.cert_pem, &ca.cert_pem) => {
            Some(RenewalReason::IssuerChanged)
        }
        Stored::Valid(..)
            if requested_renewal.is_some() && requested_renewal != handled_renewal =>
        {
            Some(RenewalReason::Forced)
        }
        Stored::Valid(_, info) => certs::needs_renewal(info, now, renew_before, &sans),
    };
    let (server, server_info) = match (server_reason, stored_server) {
        (None, Stored::Valid(server, info)) => (server, info),
        (reason, _) => {
            let common_name = format!("{}.{}.svc", ctx.names.broker, ctx.namespace);
            let server = certs::issue_server_cert(&ca, &common_name, &sans, now, validity)?;
            let info = certs::inspect(&server.cert_pem)?;
            renewals.push(Renewal {
                certificate: CertificateKind::Server,
                reason: reason.unwrap_or(RenewalReason::Missing),
            });
            (server, info)
        }
    };

    // The previous CA stays trusted for a grace period after the server
    // certificate was last issued, and never past its own expiry.
    let previous_until = server_info.not_before + BACKDATE + PREVIOUS_CA_GRACE;
    let previous_ca = previous_ca.filter(|pem| {
        now < previous_until && certs::inspect(pem).is_ok_and(|previous| now < previous.not_after)
    });
    let ca_bundle = match &previous_ca {
        Some(previous) => format!("{}{}", with_newline(&ca.cert_pem), with_newline(previous)),
        None => with_newline(&ca.cert_pem),
    };

    let mut recheck_at = (server_info.not_after - renew_before).min(ca_info.not_after - ca_window);
    if previous_ca.is_some() {
        recheck_at = recheck_at.min(previous_until);
    }

    let mut ca_data = BTreeMap::from([
        (CA_CERT_KEY, ca.cert_pem.clone()),
        (CA_PRIVATE_KEY_KEY, ca.key_pem.clone()),
    ]);
    if let Some(previous) = previous_ca {
        ca_data.insert(PREVIOUS_CA_KEY, previous);
    }
    let ca_secret = secret(ctx, &ctx.names.ca_secret, "Opaque", ca_data);

    let mut server_secret = secret(
        ctx,
        &ctx.names.server_secret,
        "kubernetes.io/tls",
        BTreeMap::from([
            (TLS_CERT_KEY, server.cert_pem),
            (TLS_PRIVATE_KEY_KEY, server.key_pem),
            (TRUST_BUNDLE_KEY, ca_bundle.clone()),
        ]),
    );
    if let Some(value) = requested_renewal {
        server_secret.metadata.annotations = Some(BTreeMap::from([(
            FORCE_RENEW_ANNOTATION.to_owned(),
            value.clone(),
        )]));
    }

    Ok(TlsObjects {
        ca_secret: Some(ca_secret),
        server_secret: Some(server_secret),
        ca_bundle: Some(ca_bundle),
        certificate: Some(CertificatePlan {
            not_after: server_info.not_after,
            renewals,
            recheck_at,
        }),
    })
}

/// Every name the server certificate covers: the client and headless
/// Services' DNS names (short and qualified), a wildcard for the pods, the
/// load balancer's addresses and the extra SANs.
pub(super) fn server_sans(
    ctx: &Context<'_>,
    observed: &Observed,
    extra: &[String],
) -> Result<BTreeSet<San>, PlanError> {
    let namespace = ctx.namespace;
    let domain = &ctx.settings.cluster_domain;
    let mut names = Vec::new();
    for service in [&ctx.names.broker, &ctx.names.headless_service] {
        names.extend([
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{domain}"),
        ]);
    }
    let headless = &ctx.names.headless_service;
    names.push(format!("*.{headless}.{namespace}.svc"));
    names.push(format!("*.{headless}.{namespace}.svc.{domain}"));
    for ingress in &observed.load_balancer_ingress {
        names.extend(ingress.ip.iter().chain(&ingress.hostname).cloned());
    }
    let mut sans = names
        .iter()
        .map(|name| San::parse(name))
        .collect::<Result<BTreeSet<_>, _>>()?;
    for (index, name) in extra.iter().enumerate() {
        let san = San::parse(name).map_err(|e| {
            PlanError::invalid(format!("tls.generated.extraSANs[{index}]"), e.to_string())
        })?;
        sans.insert(san);
    }
    Ok(sans)
}

/// The auth Secret: the admin user and its password, the broker's
/// credentials file (the admin user and every admitted `MqttUser`, see
/// [`users`](super::users)), and the admin API token. Stored values are
/// kept; missing ones are generated.
pub(super) fn auth_secret(
    ctx: &Context<'_>,
    observed: &Observed,
    now: Timestamp,
) -> Result<Secret, PlanError> {
    let stored = |key: &str| {
        observed
            .auth_secret
            .as_ref()
            .and_then(|secret| text(secret, key))
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let stored_credentials = stored(CREDENTIALS_KEY);
    let password = match stored(PASSWORD_KEY) {
        Some(password) => password,
        None => random_hex()?,
    };
    // Hashing anew on every plan would change the file every time.
    let admin_hash = stored_credentials
        .as_deref()
        .and_then(users::stored_admin_hash)
        .filter(|hash| kubemqtt_broker::auth::verify_password(hash, &password));
    let admin_hash = match admin_hash {
        Some(hash) => hash,
        None => kubemqtt_broker::auth::hash_password(&password)
            .map_err(|e| PlanError::Random(e.to_string()))?,
    };
    let broker_users: Vec<BrokerUser<'_>> = observed
        .users
        .iter()
        .map(|(user, secret)| BrokerUser {
            user,
            secret: secret.as_ref(),
        })
        .collect();
    let credentials = users::credentials_file(
        &admin_hash,
        &broker_users,
        stored_credentials.as_deref(),
        now,
    )?;
    let token = match stored(ADMIN_TOKEN_KEY) {
        Some(token) => token,
        None => random_hex()?,
    };
    Ok(secret(
        ctx,
        &ctx.names.auth_secret,
        "Opaque",
        BTreeMap::from([
            (USERNAME_KEY, ADMIN_USERNAME.to_owned()),
            (PASSWORD_KEY, password),
            (CREDENTIALS_KEY, credentials),
            (ADMIN_TOKEN_KEY, token),
        ]),
    ))
}

/// The clients CA (`<name>-clients-ca`), which signs the certificates of
/// `tls` users. It is kept while it is readable and more than
/// [`CLIENTS_CA_RENEW_BEFORE`] from expiry; a new one makes the user
/// controller re-issue every user's certificate.
pub(super) fn clients_ca(
    ctx: &Context<'_>,
    observed: &Observed,
    now: Timestamp,
) -> Result<(Secret, CertifiedKeyPem), PlanError> {
    let stored = Stored::read(
        observed.clients_ca_secret.as_ref(),
        CA_CERT_KEY,
        CA_PRIVATE_KEY_KEY,
    );
    let ca = match stored {
        Stored::Valid(ca, info) if now + CLIENTS_CA_RENEW_BEFORE < info.not_after => ca,
        _ => {
            let common_name = format!("KubeMQTT clients CA {}/{}", ctx.namespace, ctx.names.broker);
            certs::generate_ca(&common_name, now, CLIENTS_CA_VALIDITY)?
        }
    };
    let secret = secret(
        ctx,
        &ctx.names.clients_ca_secret,
        "Opaque",
        BTreeMap::from([
            (CA_CERT_KEY, ca.cert_pem.clone()),
            (CA_PRIVATE_KEY_KEY, ca.key_pem.clone()),
        ]),
    );
    Ok((secret, ca))
}

/// The clients CA from its Secret, when it is readable.
pub fn read_clients_ca(secret: Option<&Secret>) -> Option<CertifiedKeyPem> {
    match Stored::read(secret, CA_CERT_KEY, CA_PRIVATE_KEY_KEY) {
        Stored::Valid(ca, _) => Some(ca),
        _ => None,
    }
}

/// A stored certificate and key pair, as found in a Secret.
enum Stored {
    Missing,
    /// Present but not a readable certificate with its own key.
    Unreadable,
    Valid(CertifiedKeyPem, CertInfo),
}

impl Stored {
    fn read(secret: Option<&Secret>, cert_key: &str, private_key_key: &str) -> Stored {
        let Some(secret) = secret else {
            return Stored::Missing;
        };
        let (Some(cert_pem), Some(key_pem)) =
            (text(secret, cert_key), text(secret, private_key_key))
        else {
            return Stored::Unreadable;
        };
        match certs::inspect(cert_pem) {
            Ok(info) if certs::key_matches(cert_pem, key_pem) => Stored::Valid(
                CertifiedKeyPem {
                    cert_pem: cert_pem.to_owned(),
                    key_pem: key_pem.to_owned(),
                },
                info,
            ),
            _ => Stored::Unreadable,
        }
    }
}

/// The validity and renewal window of the server certificate.
fn durations(spec: &GeneratedTlsSpec) -> Result<(SignedDuration, SignedDuration), PlanError> {
    if spec.validity_days < 1 {
        return Err(PlanError::invalid(
            "tls.generated.validityDays",
            "must be at least 1",
        ));
    }
    if !(1..spec.validity_days).contains(&spec.renew_before_days) {
        return Err(PlanError::invalid(
            "tls.generated.renewBeforeDays",
            "must be at least 1 and less than validityDays",
        ));
    }
    let days = |n: i32| SignedDuration::from_hours(24 * i64::from(n));
    Ok((days(spec.validity_days), days(spec.renew_before_days)))
}

fn secret(ctx: &Context<'_>, name: &str, type_: &str, data: BTreeMap<&str, String>) -> Secret {
    Secret {
        metadata: ctx.metadata(name),
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The UTF-8 value of `key` in a Secret's data.
fn text<'s>(secret: &'s Secret, key: &str) -> Option<&'s str> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0).ok()
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}

/// 24 random bytes, hex: 192 bits.
fn random_hex() -> Result<String, PlanError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| PlanError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::LoadBalancerIngress;

    use super::*;
    use crate::api::MqttBroker;
    use crate::plan::testing::{broker, broker_yaml, now};
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
            ca_secret: plan.ca_secret.clone(),
            server_secret: plan.server_secret.clone(),
            auth_secret: Some(plan.auth_secret.clone()),
            clients_ca_secret: Some(plan.clients_ca_secret.clone()),
            load_balancer_ingress: Vec::new(),
            users: Vec::new(),
        }
    }

    fn data(secret: &Secret, key: &str) -> String {
        text(secret, key).unwrap().to_owned()
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
        "*.mq-headless.iot.svc",
        "*.mq-headless.iot.svc.cluster.local",
    ];

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
            [TRUST_BUNDLE_KEY, TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY]
        );
        assert_eq!(data(server_secret, TRUST_BUNDLE_KEY), ca_cert(&plan));

        let ca = certs::inspect(&ca_cert(&plan)).unwrap();
        assert_eq!(ca.not_after, now() + days(3650));
        let server = certs::inspect(&server_cert(&plan)).unwrap();
        assert_eq!(server.sans, sans(SERVICE_NAMES));
        assert_eq!(server.not_after, now() + days(365));
        assert!(certs::is_signed_by(&server_cert(&plan), &ca_cert(&plan)));

        let certificate = plan.certificate.as_ref().unwrap();
        assert_eq!(certificate.not_after, now() + days(365));
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
    fn ca_renewal_keeps_the_old_ca_trusted_for_the_grace_period() {
        let broker = broker(Default::default());
        let first = plan_at(&broker, &Observed::default(), now());
        let old_ca = ca_cert(&first);
        // The CA (10 × 365 days) is renewed when it has less than 365 + 30
        // days left; keep the server certificate fresh until then.
        let ca_due = now() + days(3650 - 395);
        assert_eq!(
            first.certificate.as_ref().unwrap().recheck_at,
            now() + days(335)
        );
        let mut observed = observed_after(&first);
        let fresh_server = plan_at(&broker, &observed, ca_due - days(1));
        assert_eq!(
            renewals(&fresh_server),
            [(CertificateKind::Server, RenewalReason::Expiring)]
        );
        observed = observed_after(&fresh_server);

        let rotated = plan_at(&broker, &observed, ca_due);
        assert_eq!(
            renewals(&rotated),
            [
                (CertificateKind::Ca, RenewalReason::Expiring),
                (CertificateKind::Server, RenewalReason::IssuerChanged)
            ]
        );
        let new_ca = ca_cert(&rotated);
        assert_ne!(new_ca, old_ca);
        assert!(certs::is_signed_by(&server_cert(&rotated), &new_ca));
        let ca_secret = rotated.ca_secret.as_ref().unwrap();
        assert_eq!(data(ca_secret, PREVIOUS_CA_KEY), old_ca);
        let bundle = format!("{new_ca}{old_ca}");
        assert_eq!(
            data(rotated.server_secret.as_ref().unwrap(), TRUST_BUNDLE_KEY),
            bundle
        );
        assert_eq!(rotated.config_map.data.as_ref().unwrap()["ca.crt"], bundle);
        assert_eq!(
            rotated.certificate.as_ref().unwrap().recheck_at,
            ca_due + PREVIOUS_CA_GRACE
        );

        // Still trusted just before the grace period ends...
        observed = observed_after(&rotated);
        let during = plan_at(
            &broker,
            &observed,
            ca_due + PREVIOUS_CA_GRACE - SignedDuration::from_secs(1),
        );
        assert_eq!(renewals(&during), []);
        assert_eq!(during.ca_secret, rotated.ca_secret);
        // ... and gone after it.
        let after = plan_at(&broker, &observed, ca_due + PREVIOUS_CA_GRACE);
        assert_eq!(renewals(&after), []);
        let ca_secret = after.ca_secret.as_ref().unwrap();
        assert!(text(ca_secret, PREVIOUS_CA_KEY).is_none());
        assert_eq!(
            data(after.server_secret.as_ref().unwrap(), TRUST_BUNDLE_KEY),
            new_ca
        );
        assert_eq!(server_cert(&after), server_cert(&rotated));
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
            ByteString(
                data(other.server_secret.as_ref().unwrap(), TLS_PRIVATE_KEY_KEY).into_bytes(),
            ),
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
        // An unreadable CA is not kept as "previous".
        assert!(text(replaced.ca_secret.as_ref().unwrap(), PREVIOUS_CA_KEY).is_none());
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

    #[test]
    fn auth_secret_has_the_admin_user_and_keeps_its_secrets() {
        let broker = broker(Default::default());
        let first = plan_at(&broker, &Observed::default(), now());
        let secret = &first.auth_secret;
        assert_eq!(secret.metadata.name.as_deref(), Some("mq-auth"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            secret.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
            [ADMIN_TOKEN_KEY, CREDENTIALS_KEY, PASSWORD_KEY, USERNAME_KEY]
        );
        assert_eq!(data(secret, USERNAME_KEY), ADMIN_USERNAME);
        let password = data(secret, PASSWORD_KEY);
        assert_eq!(password.len(), 48);
        assert!(password.bytes().all(|b| b.is_ascii_hexdigit()));
        let token = data(secret, ADMIN_TOKEN_KEY);
        assert_eq!(token.len(), 48);
        assert_ne!(token, password);

        let kept = plan_at(&broker, &observed_after(&first), now());
        assert_eq!(kept.auth_secret, first.auth_secret);

        let other = plan_at(&broker, &Observed::default(), now());
        assert_ne!(data(&other.auth_secret, PASSWORD_KEY), password);
        assert_ne!(data(&other.auth_secret, ADMIN_TOKEN_KEY), token);
    }

    #[test]
    fn the_broker_accepts_the_admin_password_from_the_credentials_file() {
        let plan = plan_at(&broker(Default::default()), &Observed::default(), now());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CREDENTIALS_KEY);
        std::fs::write(&path, data(&plan.auth_secret, CREDENTIALS_KEY)).unwrap();
        let authenticator = kubemqtt_broker::auth::Authenticator::load(None, Some(&path)).unwrap();
        let password = data(&plan.auth_secret, PASSWORD_KEY);
        let at = std::time::SystemTime::now();
        assert!(authenticator
            .authenticate(ADMIN_USERNAME, password.as_bytes(), at)
            .is_ok());
        assert!(authenticator
            .authenticate(ADMIN_USERNAME, b"wrong", at)
            .is_err());
    }

    #[test]
    fn a_stored_password_without_its_file_gets_a_new_file() {
        let broker = broker(Default::default());
        let first = plan_at(&broker, &Observed::default(), now());
        let mut observed = observed_after(&first);
        let auth = observed.auth_secret.as_mut().unwrap();
        auth.data.as_mut().unwrap().remove(CREDENTIALS_KEY);
        let second = plan_at(&broker, &observed, now());
        assert_eq!(
            data(&second.auth_secret, PASSWORD_KEY),
            data(&first.auth_secret, PASSWORD_KEY)
        );
        // A fresh salt: a new file for the same password.
        assert_ne!(
            data(&second.auth_secret, CREDENTIALS_KEY),
            data(&first.auth_secret, CREDENTIALS_KEY)
        );
    }
}
