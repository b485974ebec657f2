//! The server certificate and the CA behind it.
//!
//! Four ways, by `spec.tls`:
//! - the operator's own CA (the default), kept in `<name>-ca`;
//! - a CA the team provides (`ca.secretName`), only read;
//! - cert-manager (`certManager`), see [`cert_manager`](super::cert_manager);
//! - a certificate the team manages (`secretName`): nothing here.
//!
//! In the first two, the operator issues the server certificate
//! (`<name>-tls`), decided afresh on every plan from what is stored: it is
//! re-issued when it is missing or unreadable, was signed by another CA,
//! was asked for with the force-renew annotation, covers other names, or
//! comes within `renewBeforeDays` of expiry.
//!
//! A CA is replaced in two steps, so that devices that pinned the old one
//! keep connecting while they fetch the new bundle:
//! 1. the new CA joins the trust bundle (the ConfigMap's `ca.crt`, copied
//!    into every user's Secret) while the served certificate stays the one
//!    the old CA issued;
//! 2. after `ca.overlapDays`, the server certificate is issued by the new
//!    CA and the old one leaves the bundle.
//!
//! The operator's CA is valid for ten times the server certificate's
//! validity and its rotation starts once it could no longer outlive the
//! overlap plus a new server certificate and its renewal window (or at
//! once, with the `kubemqtt.io/rotate-ca` annotation); the incoming CA
//! waits in `<name>-ca` as `next-ca.crt` and `next-ca.key`. A team's CA
//! rotates when the team replaces it in its Secret: the certificate the
//! old CA issued keeps being served for the overlap, unless it must be
//! re-issued sooner (then the new CA issues it at once).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::secrets::{secret, text, with_newline, Stored};
use super::{CertificateKind, CertificatePlan, Context, Observed, PlanError, Renewal};
use crate::api::{GeneratedTlsSpec, FORCE_RENEW_ANNOTATION, ROTATE_CA_ANNOTATION};
use crate::certs::{self, CertInfo, CertifiedKeyPem, RenewalReason, San};

/// The CA certificate, in the CA Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's private key, in the CA Secret.
pub const CA_PRIVATE_KEY_KEY: &str = "ca.key";
/// The incoming CA during a rotation, in the CA Secret.
pub const NEXT_CA_CERT_KEY: &str = "next-ca.crt";
/// The incoming CA's private key during a rotation, in the CA Secret.
pub const NEXT_CA_PRIVATE_KEY_KEY: &str = "next-ca.key";
/// The server certificate, in the server Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The server's private key, in the server Secret.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";
/// The trust bundle (every CA clients should trust now), in the server
/// Secret.
pub const TRUST_BUNDLE_KEY: &str = "ca.crt";
/// The CA that issued the served certificate, in the server Secret.
pub const ISSUER_CA_KEY: &str = "issuer-ca.crt";
/// Annotation on the CA Secret (operator CA) or the server Secret (a
/// team's CA): when the server certificate moves to the incoming CA.
pub const CA_ROTATION_COMPLETES_AT_ANNOTATION: &str = "kubemqtt.io/ca-rotation-completes-at";

/// The CA lives this many times as long as a server certificate.
const CA_VALIDITY_FACTOR: i32 = 10;

/// The TLS part of a plan.
#[derive(Debug, Default)]
pub(super) struct TlsObjects {
    /// The operator's CA Secret (`<name>-ca`).
    pub ca_secret: Option<Secret>,
    /// The server certificate Secret (`<name>-tls`), when the operator
    /// issues it.
    pub server_secret: Option<Secret>,
    /// The cert-manager `Certificate` (`<name>-tls`).
    pub certificate_object: Option<serde_json::Value>,
    /// The CA certificates clients should trust, PEM.
    pub ca_bundle: Option<String>,
    /// Annotations the ConfigMap carries for the trust bundle's state.
    pub config_map_annotations: BTreeMap<String, String>,
    /// The issued certificate's state.
    pub certificate: Option<CertificatePlan>,
    /// When the plan next changes because of time alone.
    pub recheck_at: Option<Timestamp>,
}

/// The server certificate's settings, resolved.
pub(super) struct Issuance<'a> {
    pub validity: SignedDuration,
    pub renew_before: SignedDuration,
    pub overlap: SignedDuration,
    pub sans: BTreeSet<San>,
    pub extra_sans: &'a [String],
}

/// Plans the TLS objects of `ctx`'s broker.
pub(super) fn tls(
    ctx: &Context<'_>,
    observed: &Observed,
    now: Timestamp,
) -> Result<TlsObjects, PlanError> {
    let spec = &ctx.spec.tls;
    if spec.secret_name.is_some() {
        return Ok(TlsObjects::default());
    }
    let generated = spec.generated.clone().unwrap_or_default();
    let (validity, renew_before) = durations(&generated)?;
    if !(0..=365).contains(&spec.ca.overlap_days) {
        return Err(PlanError::invalid(
            "tls.ca.overlapDays",
            "must be between 0 and 365",
        ));
    }
    let issuance = Issuance {
        validity,
        renew_before,
        overlap: days(spec.ca.overlap_days),
        sans: server_sans(ctx, observed, &generated.extra_sans)?,
        extra_sans: &generated.extra_sans,
    };
    if let Some(cert_manager) = &spec.cert_manager {
        return super::cert_manager::tls(ctx, observed, cert_manager, &issuance, now);
    }
    let ca = match &spec.ca.secret_name {
        Some(name) => own_ca(name, observed)?,
        None => operator_ca(ctx, observed, &issuance, now)?,
    };
    server_certificate(ctx, observed, ca, &issuance, now)
}

/// The CA side of a plan: who signs, and who will.
struct CaState {
    signing: CertifiedKeyPem,
    signing_info: CertInfo,
    /// The operator's incoming CA, already trusted.
    next: Option<(CertifiedKeyPem, CertInfo)>,
    completes_at: Option<Timestamp>,
    /// The CA was promoted by this plan: the server certificate moves to
    /// it.
    completed: bool,
    /// Whether the CA is a team's (the operator cannot keep the old one
    /// signing).
    own: bool,
    ca_secret: Option<Secret>,
    renewals: Vec<Renewal>,
    /// When the operator's CA rotation starts by itself.
    rotation_due: Option<Timestamp>,
}

/// The operator's CA: kept, rotated in two steps, or generated.
fn operator_ca(
    ctx: &Context<'_>,
    observed: &Observed,
    issuance: &Issuance<'_>,
    now: Timestamp,
) -> Result<CaState, PlanError> {
    let stored = observed.ca_secret.as_ref();
    let annotation = |key: &str| {
        stored
            .and_then(|secret| secret.metadata.annotations.as_ref())
            .and_then(|annotations| annotations.get(key))
            .cloned()
    };
    let requested = ctx
        .broker
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_CA_ANNOTATION))
        .filter(|value| !value.is_empty())
        .cloned();
    let handled = annotation(ROTATE_CA_ANNOTATION);
    // The rotation starts once the CA could not outlive the overlap plus a
    // new server certificate and its renewal window.
    let window = issuance.validity + issuance.renew_before + issuance.overlap;
    let generate = |now: Timestamp| -> Result<(CertifiedKeyPem, CertInfo), PlanError> {
        let name = format!("KubeMQTT CA {}/{}", ctx.namespace, ctx.names.broker);
        let ca = certs::generate_ca(&name, now, issuance.validity * CA_VALIDITY_FACTOR)?;
        let info = certs::inspect(&ca.cert_pem)?;
        Ok((ca, info))
    };

    let mut renewals = Vec::new();
    let mut completed = false;
    let (mut signing, mut signing_info, mut next, mut completes_at) =
        match Stored::read(stored, CA_CERT_KEY, CA_PRIVATE_KEY_KEY) {
            Stored::Valid(ca, info) => {
                let next = match Stored::read(stored, NEXT_CA_CERT_KEY, NEXT_CA_PRIVATE_KEY_KEY) {
                    Stored::Valid(next, next_info) => Some((next, next_info)),
                    _ => None,
                };
                let completes_at = annotation(CA_ROTATION_COMPLETES_AT_ANNOTATION)
                    .and_then(|at| at.parse::<Timestamp>().ok());
                match (next, completes_at) {
                    (Some(next), Some(at)) => (ca, info, Some(next), Some(at)),
                    _ => (ca, info, None, None),
                }
            }
            reading => {
                // Nothing stored that clients could trust: a new CA, at once.
                let reason = match reading {
                    Stored::Missing => RenewalReason::Missing,
                    _ => RenewalReason::Unreadable,
                };
                let (ca, info) = generate(now)?;
                renewals.push(Renewal {
                    certificate: CertificateKind::Ca,
                    reason,
                });
                (ca, info, None, None)
            }
        };

    // Step 2: the overlap is over, the incoming CA signs from now on.
    if let (Some(at), Some(_)) = (completes_at, &next) {
        if now >= at {
            if let Some((ca, info)) = next.take() {
                signing = ca;
                signing_info = info;
            }
            completes_at = None;
            completed = true;
        }
    }

    // Step 1: a new CA joins the bundle.
    let forced = requested.is_some() && requested != handled;
    if next.is_none() && renewals.is_empty() {
        let reason = if forced {
            Some(RenewalReason::Forced)
        } else {
            certs::needs_renewal(&signing_info, now, window, &BTreeSet::new())
        };
        if let Some(reason) = reason {
            let (ca, info) = generate(now)?;
            renewals.push(Renewal {
                certificate: CertificateKind::Ca,
                reason,
            });
            if issuance.overlap.is_zero() {
                signing = ca;
                signing_info = info;
                completed = true;
            } else {
                next = Some((ca, info));
                completes_at = Some(now + issuance.overlap);
            }
        }
    }

    let mut data = BTreeMap::from([
        (CA_CERT_KEY, signing.cert_pem.clone()),
        (CA_PRIVATE_KEY_KEY, signing.key_pem.clone()),
    ]);
    let mut annotations = BTreeMap::new();
    if let (Some((ca, _)), Some(at)) = (&next, completes_at) {
        data.insert(NEXT_CA_CERT_KEY, ca.cert_pem.clone());
        data.insert(NEXT_CA_PRIVATE_KEY_KEY, ca.key_pem.clone());
        annotations.insert(
            CA_ROTATION_COMPLETES_AT_ANNOTATION.to_owned(),
            at.to_string(),
        );
    }
    // Recorded once acted on (a rotation already under way absorbs it), so
    // that the same value does not rotate again.
    if let Some(value) = requested {
        annotations.insert(ROTATE_CA_ANNOTATION.to_owned(), value);
    }
    let mut ca_secret = retained_secret(ctx, &ctx.names.ca_secret, data);
    ca_secret.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let rotation_due = next.is_none().then(|| signing_info.not_after - window);
    Ok(CaState {
        signing,
        signing_info,
        next,
        completes_at,
        completed,
        own: false,
        ca_secret: Some(ca_secret),
        renewals,
        rotation_due,
    })
}

/// A team's CA, from its Secret (`tls.crt`/`tls.key` or `ca.crt`/`ca.key`).
fn own_ca(name: &str, observed: &Observed) -> Result<CaState, PlanError> {
    let invalid = |message: String| PlanError::CaSecret {
        secret: name.to_owned(),
        message,
    };
    let secret = observed
        .ca_source
        .as_ref()
        .ok_or_else(|| invalid("it does not exist".to_owned()))?;
    let (ca, info) = [
        (TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY),
        (CA_CERT_KEY, CA_PRIVATE_KEY_KEY),
    ]
    .into_iter()
    .find_map(|(cert, key)| match Stored::read(Some(secret), cert, key) {
        Stored::Valid(ca, info) => Some((ca, info)),
        _ => None,
    })
    .ok_or_else(|| {
        invalid(
            "it needs a readable certificate and its private key, as tls.crt and tls.key \
             or as ca.crt and ca.key"
                .to_owned(),
        )
    })?;
    if !certs::is_ca(&ca.cert_pem) {
        return Err(invalid(
            "its certificate is not a CA (basic constraints CA:TRUE)".to_owned(),
        ));
    }
    Ok(CaState {
        signing: ca,
        signing_info: info,
        next: None,
        completes_at: None,
        completed: false,
        own: true,
        ca_secret: None,
        renewals: Vec::new(),
        rotation_due: None,
    })
}

/// The server certificate, issued by `ca.signing`, and the trust bundle.
fn server_certificate(
    ctx: &Context<'_>,
    observed: &Observed,
    mut ca: CaState,
    issuance: &Issuance<'_>,
    now: Timestamp,
) -> Result<TlsObjects, PlanError> {
    let stored_secret = observed.server_secret.as_ref();
    let requested_renewal = ctx
        .broker
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORCE_RENEW_ANNOTATION))
        .filter(|value| !value.is_empty());
    let handled_renewal = stored_secret
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(FORCE_RENEW_ANNOTATION));
    let forced = requested_renewal.is_some() && requested_renewal != handled_renewal;
    let stored = Stored::read(stored_secret, TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY);

    // A team's CA was replaced: the certificate its predecessor issued may
    // be served until the overlap ends.
    let mut outgoing: Option<String> = None;
    if let (true, Stored::Valid(server, info)) = (ca.own, &stored) {
        let issuer = stored_secret
            .and_then(|secret| text(secret, ISSUER_CA_KEY))
            .filter(|issuer| certs::is_signed_by(&server.cert_pem, issuer))
            .filter(|issuer| certs::inspect(issuer).is_ok_and(|i| now < i.not_after));
        let replaced = !certs::is_signed_by(&server.cert_pem, &ca.signing.cert_pem);
        if let (true, Some(issuer)) = (replaced, issuer) {
            let completes_at = stored_secret
                .and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get(CA_ROTATION_COMPLETES_AT_ANNOTATION))
                .and_then(|at| at.parse::<Timestamp>().ok())
                .unwrap_or(now + issuance.overlap);
            let fresh = !forced
                && certs::needs_renewal(info, now, issuance.renew_before, &issuance.sans).is_none();
            if now < completes_at && fresh {
                outgoing = Some(issuer.to_owned());
                ca.completes_at = Some(completes_at);
            } else if now >= completes_at {
                ca.completed = true;
            }
        }
    }

    let reason = match &stored {
        Stored::Missing => Some(RenewalReason::Missing),
        Stored::Unreadable => Some(RenewalReason::Unreadable),
        Stored::Valid(..) if outgoing.is_some() => None,
        Stored::Valid(server, _)
            if !certs::is_signed_by(&server.cert_pem, &ca.signing.cert_pem) =>
        {
            Some(if ca.completed {
                RenewalReason::CaRotationCompleted
            } else {
                RenewalReason::IssuerChanged
            })
        }
        Stored::Valid(..) if forced => Some(RenewalReason::Forced),
        Stored::Valid(_, info) => {
            certs::needs_renewal(info, now, issuance.renew_before, &issuance.sans)
        }
    };
    let (server, server_info, issuer_pem) = match (reason, stored) {
        (None, Stored::Valid(server, info)) => {
            let issuer = outgoing
                .clone()
                .unwrap_or_else(|| ca.signing.cert_pem.clone());
            (server, info, issuer)
        }
        (reason, _) => {
            let common_name = format!("{}.{}.svc", ctx.names.broker, ctx.namespace);
            let server = certs::issue_server_cert(
                &ca.signing,
                &common_name,
                &issuance.sans,
                now,
                issuance.validity,
            )?;
            let info = certs::inspect(&server.cert_pem)?;
            ca.renewals.push(Renewal {
                certificate: CertificateKind::Server,
                reason: reason.unwrap_or(RenewalReason::Missing),
            });
            (server, info, ca.signing.cert_pem.clone())
        }
    };
    if outgoing.is_none() && ca.own {
        ca.completes_at = None;
    }

    // The bundle: the CA that issued the served certificate first, then
    // the other one of a rotation.
    let mut bundle = vec![with_newline(&issuer_pem)];
    let other = match (&ca.next, &outgoing) {
        (Some((next, _)), _) => Some(next.cert_pem.clone()),
        (None, Some(_)) => Some(ca.signing.cert_pem.clone()),
        (None, None) => None,
    };
    bundle.extend(other.map(|pem| with_newline(&pem)));
    let ca_bundle = bundle.concat();

    let mut annotations = BTreeMap::new();
    if let Some(value) = requested_renewal {
        annotations.insert(FORCE_RENEW_ANNOTATION.to_owned(), value.clone());
    }
    if let (true, Some(at)) = (ca.own, ca.completes_at) {
        annotations.insert(
            CA_ROTATION_COMPLETES_AT_ANNOTATION.to_owned(),
            at.to_string(),
        );
    }
    let mut server_secret = secret(
        ctx,
        &ctx.names.server_secret,
        "kubernetes.io/tls",
        BTreeMap::from([
            (TLS_CERT_KEY, server.cert_pem),
            (TLS_PRIVATE_KEY_KEY, server.key_pem),
            (TRUST_BUNDLE_KEY, ca_bundle.clone()),
            (ISSUER_CA_KEY, with_newline(&issuer_pem)),
        ]),
    );
    server_secret.metadata.annotations = (!annotations.is_empty()).then_some(annotations);

    let issuer_info = match &outgoing {
        Some(pem) => certs::inspect(pem)?,
        None => ca.signing_info.clone(),
    };
    let next_ca_not_after = match (&ca.next, &outgoing) {
        (Some((_, info)), _) => Some(info.not_after),
        (None, Some(_)) => Some(ca.signing_info.not_after),
        (None, None) => None,
    };
    let recheck_at = [
        Some(server_info.not_after - issuance.renew_before),
        ca.completes_at,
        ca.rotation_due,
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(TlsObjects {
        ca_secret: ca.ca_secret,
        server_secret: Some(server_secret),
        certificate_object: None,
        ca_bundle: Some(ca_bundle),
        config_map_annotations: BTreeMap::new(),
        certificate: Some(CertificatePlan {
            not_after: server_info.not_after,
            ca_not_after: issuer_info.not_after,
            next_ca_not_after,
            ca_rotation_completes_at: ca.completes_at,
            renewals: ca.renewals,
            recheck_at: recheck_at.unwrap_or(server_info.not_after),
        }),
        recheck_at,
    })
}

/// Every name the server certificate covers: the Services' DNS names
/// (short and qualified), a wildcard for the pods, the load balancer's
/// addresses and the extra SANs.
pub(super) fn server_sans(
    ctx: &Context<'_>,
    observed: &Observed,
    extra: &[String],
) -> Result<BTreeSet<San>, PlanError> {
    let namespace = ctx.namespace;
    let domain = &ctx.settings.cluster_domain;
    let mut names = Vec::new();
    for service in [
        &ctx.names.broker,
        &ctx.names.headless_service,
        &ctx.names.external_service,
    ] {
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
    let mut sans = names
        .iter()
        .map(|name| San::parse(name))
        .collect::<Result<BTreeSet<_>, _>>()?;
    sans.extend(load_balancer_sans(observed)?);
    sans.extend(extra_sans(extra)?);
    Ok(sans)
}

/// The load balancer's addresses, as names a certificate covers.
pub(super) fn load_balancer_sans(observed: &Observed) -> Result<BTreeSet<San>, PlanError> {
    let mut sans = BTreeSet::new();
    for ingress in &observed.load_balancer_ingress {
        for name in ingress.ip.iter().chain(&ingress.hostname) {
            sans.insert(San::parse(name)?);
        }
    }
    Ok(sans)
}

/// `tls.generated.extraSANs`, checked.
pub(super) fn extra_sans(extra: &[String]) -> Result<BTreeSet<San>, PlanError> {
    extra
        .iter()
        .enumerate()
        .map(|(index, name)| {
            San::parse(name).map_err(|e| {
                PlanError::invalid(format!("tls.generated.extraSANs[{index}]"), e.to_string())
            })
        })
        .collect()
}

/// The validity and renewal window of the server certificate.
pub(super) fn durations(
    spec: &GeneratedTlsSpec,
) -> Result<(SignedDuration, SignedDuration), PlanError> {
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
    Ok((days(spec.validity_days), days(spec.renew_before_days)))
}

fn days(n: i32) -> SignedDuration {
    SignedDuration::from_hours(24 * i64::from(n))
}

/// A Secret of the operator's CA kind: owned by the broker (deleted with
/// it) only with `spec.tls.ca.deleteWithBroker`.
pub(super) fn retained_secret(
    ctx: &Context<'_>,
    name: &str,
    data: BTreeMap<&str, String>,
) -> Secret {
    let mut secret = secret(ctx, name, "Opaque", data);
    if !ctx.spec.tls.ca.delete_with_broker {
        secret.metadata.owner_references = None;
    }
    secret
}

#[cfg(test)]
mod tests {
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
}
