//! `spec.tls`: the broker's certificate and the CA clients trust.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_default;

/// The broker's TLS certificate, and the CA clients trust.
///
/// By default the operator keeps its own CA (`<name>-ca`) and issues the
/// server certificate from it. `ca.secretName` makes it issue from a CA
/// you provide instead, `certManager` has cert-manager issue it, and
/// `secretName` serves a certificate you manage yourself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.generated) && has(self.secretName))")
    .message("set either tls.generated or tls.secretName, not both"))]
#[x_kube(validation = Rule::new("!(has(self.certManager) && has(self.secretName))")
    .message("set either tls.certManager or tls.secretName, not both"))]
#[x_kube(validation = Rule::new(
    "!has(self.ca) || !has(self.ca.secretName) || !(has(self.secretName) || has(self.certManager))"
).message("tls.ca.secretName issues the server certificate: it cannot go with tls.secretName or tls.certManager"))]
pub struct TlsSpec {
    /// Settings of the server certificate the operator has issued (by its
    /// own CA, by `ca.secretName`, or by cert-manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedTlsSpec>,
    /// Name of a `kubernetes.io/tls` Secret in the broker's namespace that
    /// holds the certificate (`tls.crt`, `tls.key` and, optionally, the
    /// CA bundle in `ca.crt`). You renew it; the broker reloads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The CA that issues the server certificate, and how long a replaced
    /// CA stays trusted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ca: CaSpec,
    /// Have cert-manager issue the server certificate: the operator
    /// creates a cert-manager `Certificate` (`<name>-tls`) and the pods
    /// serve the Secret cert-manager writes. Needs cert-manager in the
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
}

/// The CA behind the server certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CaSpec {
    /// A Secret of yours holding the CA that issues the server
    /// certificate: `tls.crt` and `tls.key` (as cert-manager writes a CA),
    /// or `ca.crt` and `ca.key`. The operator only reads it. Replace its
    /// content to rotate the CA: the certificate it issued keeps being
    /// served for `overlapDays` (or until it needs renewing), while the
    /// trust bundle holds both CAs. Default: the operator's own CA, in
    /// `<name>-ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// How long, in days, both the outgoing and the incoming CA are in the
    /// trust bundle (`ca.crt` of the ConfigMap and of every user's Secret)
    /// when the CA changes, before the server certificate moves to the new
    /// CA. Devices that fetch their CA bundle within that time keep
    /// connecting. Default: 30.
    #[schemars(range(min = 0, max = 365))]
    pub overlap_days: i32,
    /// Whether the CA Secrets the operator generates (`<name>-ca` and
    /// `<name>-clients-ca`) are deleted with the MqttBroker. By default
    /// they stay, so that a broker created again with the same name adopts
    /// them and devices that pinned its CA keep connecting; delete them
    /// with `kubectl delete secret <name>-ca <name>-clients-ca`.
    pub delete_with_broker: bool,
}

impl Default for CaSpec {
    fn default() -> Self {
        CaSpec {
            secret_name: None,
            overlap_days: default_overlap_days(),
            delete_with_broker: false,
        }
    }
}

/// A server certificate issued by cert-manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    /// The cert-manager Issuer or ClusterIssuer that signs the
    /// certificate.
    pub issuer_ref: IssuerReference,
    /// Whether the certificate names only `generated.extraSANs` and the
    /// load balancer's address, leaving out the Services' in-cluster DNS
    /// names: for issuers that refuse names they cannot verify, such as
    /// ACME (Let's Encrypt). In-cluster clients then connect by one of the
    /// public names. Default: false.
    #[serde(default)]
    pub public_names_only: bool,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerReference {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the broker's namespace) or `ClusterIssuer`. Default:
    /// Issuer.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// The issuer's API group. Default: cert-manager.io.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// A certificate the operator has issued and renews.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.renewBeforeDays < self.validityDays")
    .message("renewBeforeDays must be less than validityDays"))]
pub struct GeneratedTlsSpec {
    /// How long a server certificate is valid, in days. Default: 365.
    #[schemars(range(min = 1, max = 3650))]
    #[serde(default = "default_validity_days")]
    pub validity_days: i32,
    /// How many days before expiry the certificate is renewed. Default: 30.
    #[schemars(range(min = 1))]
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: i32,
    /// Extra names (DNS names, `*.` wildcards or IP addresses) the
    /// certificate covers, besides the Services' DNS names and the load
    /// balancer's address, which it always covers. The first DNS name
    /// without a wildcard is what users' Secrets give as `external-host`:
    /// point it at the load balancer.
    #[serde(default, rename = "extraSANs", skip_serializing_if = "Vec::is_empty")]
    pub extra_sans: Vec<String>,
}

impl Default for GeneratedTlsSpec {
    fn default() -> Self {
        GeneratedTlsSpec {
            validity_days: default_validity_days(),
            renew_before_days: default_renew_before_days(),
            extra_sans: Vec::new(),
        }
    }
}

fn default_overlap_days() -> i32 {
    30
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

fn default_validity_days() -> i32 {
    365
}

fn default_renew_before_days() -> i32 {
    30
}
