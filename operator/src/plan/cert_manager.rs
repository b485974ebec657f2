//! A server certificate issued by cert-manager (`spec.tls.certManager`).
//!
//! The operator creates a `cert-manager.io/v1` `Certificate` named
//! `<name>-tls` for the Secret `<name>-tls`, which the pods mount: the
//! same names the operator's own certificate would cover (or, with
//! `publicNamesOnly`, the extra SANs and the load balancer's address
//! only), the same validity and renewal window, an ECDSA P-256 key made
//! anew at each renewal. cert-manager writes the Secret and renews it; the
//! broker reloads it.
//!
//! The trust bundle is the `ca.crt` cert-manager writes into the Secret
//! (issuers that know their CA fill it in; ACME ones leave it empty, and
//! clients then trust the public roots). When that CA changes, the one it
//! replaces stays in the bundle for `ca.overlapDays`: the ConfigMap
//! remembers it, with the end of the overlap in an annotation.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::secrets::{text, with_newline};
use super::tls::{extra_sans, load_balancer_sans, Issuance, TlsObjects, TRUST_BUNDLE_KEY};
use super::{common_labels, Context, Observed, PlanError};
use crate::api::CertManagerSpec;
use crate::certs::{self, San};
use crate::plan::configmap::CA_BUNDLE_KEY;

/// The API version of cert-manager's `Certificate`.
pub const CERTIFICATE_API_VERSION: &str = "cert-manager.io/v1";
/// Annotation on the ConfigMap: until when the CAs that left cert-manager's
/// `ca.crt` stay in the trust bundle.
pub const RETIRING_CA_UNTIL_ANNOTATION: &str = "kubemqtt.io/retiring-ca-until";

/// The Certificate and the trust bundle.
pub(super) fn tls(
    ctx: &Context<'_>,
    observed: &Observed,
    spec: &CertManagerSpec,
    issuance: &Issuance<'_>,
    now: Timestamp,
) -> Result<TlsObjects, PlanError> {
    let names = if spec.public_names_only {
        let mut names = extra_sans(issuance.extra_sans)?;
        names.extend(load_balancer_sans(observed)?);
        names
    } else {
        issuance.sans.clone()
    };
    let dns_names: Vec<String> = names
        .iter()
        .filter_map(|san| match san {
            San::Dns(name) => Some(name.clone()),
            San::Ip(_) => None,
        })
        .collect();
    let ip_addresses: Vec<String> = names
        .iter()
        .filter_map(|san| match san {
            San::Ip(ip) => Some(ip.to_string()),
            San::Dns(_) => None,
        })
        .collect();
    if dns_names.is_empty() && ip_addresses.is_empty() {
        return Err(PlanError::invalid(
            "tls.certManager.publicNamesOnly",
            "the certificate would cover no name: list the public names in \
             tls.generated.extraSANs",
        ));
    }
    let mut metadata = serde_json::to_value(ctx.metadata(&ctx.names.server_secret))
        .map_err(|e| PlanError::BrokerConfig(format!("cannot serialize: {e}")))?;
    if let Some(object) = metadata.as_object_mut() {
        object.retain(|_, value| !value.is_null());
    }
    let mut certificate = json!({
        "apiVersion": CERTIFICATE_API_VERSION,
        "kind": "Certificate",
        "metadata": metadata,
        "spec": {
            "secretName": ctx.names.server_secret,
            // The Secret carries the broker's labels, so that the
            // operator's watch of its own Secrets sees cert-manager's
            // renewals.
            "secretTemplate": {"labels": common_labels(&ctx.names.broker)},
            "duration": hours(issuance.validity),
            "renewBefore": hours(issuance.renew_before),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature", "key encipherment"],
            "issuerRef": {
                "name": spec.issuer_ref.name,
                "kind": spec.issuer_ref.kind,
                "group": spec.issuer_ref.group,
            },
        },
    });
    if !dns_names.is_empty() {
        certificate["spec"]["dnsNames"] = json!(dns_names);
    }
    if !ip_addresses.is_empty() {
        certificate["spec"]["ipAddresses"] = json!(ip_addresses);
    }

    // The trust bundle: cert-manager's CA, and for the overlap the ones it
    // replaced.
    let current: Vec<String> = observed
        .server_secret
        .as_ref()
        .and_then(|secret| text(secret, TRUST_BUNDLE_KEY))
        .map(certs::pem_certificates)
        .unwrap_or_default();
    let config_map = observed.config_map.as_ref();
    let previous: Vec<String> = config_map
        .and_then(|cm| cm.data.as_ref())
        .and_then(|data| data.get(CA_BUNDLE_KEY))
        .map(|bundle| certs::pem_certificates(bundle))
        .unwrap_or_default();
    let retiring: Vec<String> = previous
        .into_iter()
        .filter(|old| !current.iter().any(|ca| certs::same_certificate(ca, old)))
        .filter(|old| certs::inspect(old).is_ok_and(|info| now < info.not_after))
        .collect();
    let stored_until = config_map
        .and_then(|cm| cm.metadata.annotations.as_ref())
        .and_then(|a| a.get(RETIRING_CA_UNTIL_ANNOTATION))
        .and_then(|at| at.parse::<Timestamp>().ok());
    let mut annotations = BTreeMap::new();
    let mut bundle: Vec<String> = current.iter().map(|pem| with_newline(pem)).collect();
    let mut recheck_at = None;
    if !retiring.is_empty() && !current.is_empty() {
        let until = stored_until.unwrap_or(now + issuance.overlap);
        if now < until {
            bundle.extend(retiring.iter().map(|pem| with_newline(pem)));
            annotations.insert(RETIRING_CA_UNTIL_ANNOTATION.to_owned(), until.to_string());
            recheck_at = Some(until);
        }
    }
    Ok(TlsObjects {
        ca_secret: None,
        server_secret: None,
        certificate_object: Some(certificate),
        ca_bundle: (!bundle.is_empty()).then(|| bundle.concat()),
        config_map_annotations: annotations,
        certificate: None,
        recheck_at,
    })
}

/// A duration as cert-manager writes it: whole hours.
fn hours(duration: k8s_openapi::jiff::SignedDuration) -> String {
    format!("{}h", duration.as_hours())
}

/// The `Ready` condition of a stored `Certificate`: its status and message.
pub fn ready_condition(certificate: &Value) -> Option<(bool, String)> {
    certificate["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == "Ready")
        .map(|condition| {
            (
                condition["status"] == "True",
                condition["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}
