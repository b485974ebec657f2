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
mod tests;
