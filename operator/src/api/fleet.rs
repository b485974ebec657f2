//! The `MqttDeviceFleet` custom resource: one product line of devices on
//! one broker, with one way to log in, an ACL template, per-device quotas
//! and a revocation list, and no Kubernetes object per device.
//!
//! The operator turns the fleets of a broker into one Secret,
//! `<broker>-fleets`, mounted in its pods at `/etc/kubemqtt/fleets` (the
//! broker's `auth.fleets_dir`); see `docs/fleets.md`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::user::{AclAction, BrokerReference, QuotasSpec, SecretKeyReference};

/// Condition type: the fleet's configuration is in its broker's fleets
/// Secret.
pub const CONDITION_FLEET_READY: &str = "Ready";

/// Devices of one product line, logging in to one broker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubemqtt.io",
    version = "v1alpha1",
    kind = "MqttDeviceFleet",
    namespaced,
    shortname = "mqfleet",
    category = "kubemqtt",
    doc = "A fleet of devices of a KubeMQTT broker: certificates, derived passwords, JWTs or an HTTP hook, with nothing stored per device.",
    status = "MqttDeviceFleetStatus",
    derive = "PartialEq",
    cel,
    printcolumn(
        name = "Broker",
        type_ = "string",
        description = "The MqttBroker the devices connect to",
        json_path = ".spec.brokerRef.name"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        description = "How the devices log in",
        json_path = ".spec.mode"
    ),
    printcolumn(
        name = "Online",
        type_ = "integer",
        description = "Devices connected, summed over the broker's pods",
        json_path = ".status.devicesOnline"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Whether the fleet is in force on the broker",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message(
        "metadata.name must be at most 63 characters: it names the fleet in the broker's \
         configuration and metrics"
    ),
    validation = Rule::new("self.spec.mode == 'certificate' || !has(self.spec.certificate)")
        .message("spec.certificate goes with mode certificate only"),
    validation = Rule::new("(self.spec.mode == 'jwt') == has(self.spec.jwt)")
        .message("mode jwt needs spec.jwt, and spec.jwt needs mode jwt"),
    validation = Rule::new("(self.spec.mode == 'hook') == has(self.spec.hook)")
        .message("mode hook needs spec.hook, and spec.hook needs mode hook"),
    validation = Rule::new("self.spec.mode == 'derived' || !has(self.spec.derived)")
        .message("spec.derived goes with mode derived only")
)]
#[serde(rename_all = "camelCase")]
pub struct MqttDeviceFleetSpec {
    /// The broker (an MqttBroker in the same namespace) the devices
    /// connect to. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "brokerRef cannot be changed: delete the fleet and create it again for another broker"
    ))]
    pub broker_ref: BrokerReference,

    /// How devices prove who they are: `certificate` (client certificates
    /// signed by the fleet's CA; the device id is the CN or a SAN),
    /// `derived` (a password signed with a secret derived from the fleet's
    /// secret and the device id, with a timestamp), `jwt` (a JSON Web Token
    /// as the password) or `hook` (the team's device registry answers over
    /// HTTP).
    pub mode: FleetModeSpec,

    /// Which MQTT user names are this fleet's devices: `%d` stands for the
    /// device id, e.g. `%d@sensors`. Default: `%d@<fleet name>`. Not used
    /// by certificate fleets (the certificate names the device). A JWT or
    /// hook fleet may use one literal user name for all its devices (the
    /// token or the registry then names the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub username_template: Option<String>,

    /// Topic rules of every device (an ACL template): `%d` is the device
    /// id, `%u` the user name, `%c` the client id. Whatever no rule grants
    /// is refused; without any rule a device may use every topic (but
    /// `$SYS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<FleetAclRule>,

    /// Limits per device; `connections` counts per device id.
    #[serde(default, skip_serializing_if = "QuotasSpec::is_empty")]
    pub quotas: QuotasSpec,

    /// Revoked devices: refused at login, and disconnected within seconds
    /// of the broker seeing the change.
    #[serde(default, skip_serializing_if = "RevocationsSpec::is_empty")]
    pub revocations: RevocationsSpec,

    /// Settings of `certificate` fleets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateFleetSpec>,

    /// Settings of `derived` fleets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived: Option<DerivedFleetSpec>,

    /// Settings of `jwt` fleets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtFleetSpec>,

    /// Settings of `hook` fleets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookFleetSpec>,
}

/// How a fleet's devices log in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FleetModeSpec {
    /// Client certificates of the fleet's CA.
    Certificate,
    /// Passwords signed with a per-device secret derived from the fleet's.
    Derived,
    /// A JSON Web Token as the password.
    Jwt,
    /// The team's device registry answers over HTTP.
    Hook,
}

/// One rule of a fleet's ACL template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct FleetAclRule {
    /// `publish`, `subscribe` (subscribing and receiving) or `all`.
    pub action: AclAction,
    /// A topic filter: `+` and `#` wildcards; `%d` device id, `%u` user
    /// name, `%c` client id (e.g. `sensors/%d/#`).
    #[schemars(length(min = 1, max = 65535))]
    pub topic: String,
    /// `true` (default) grants the action, `false` denies it.
    #[serde(default = "default_true")]
    pub allow: bool,
}

fn default_true() -> bool {
    true
}

/// Revoked devices and certificates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationsSpec {
    /// Revoked device ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Revoked certificate serial numbers, hex (colons allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<String>,
    /// A ConfigMap key with more: one entry per line, `device <id>` (or
    /// the id alone) or `serial <hex>`; `#` starts a comment. For long
    /// lists kept by the team's own tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyReference>,
}

impl RevocationsSpec {
    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        *self == RevocationsSpec::default()
    }
}

/// A key of a ConfigMap in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ConfigMapKeyReference {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A certificate fleet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateFleetSpec {
    /// Where the device id is in a certificate: `cn` (subject common name,
    /// default) or `san` (first DNS, e-mail or URI subject alternative
    /// name).
    #[serde(default)]
    pub device_id_from: DeviceIdFromSpec,
    /// The fleet's CA. Default: the operator makes one (Secret
    /// `<fleet>-fleet-ca`, whose `tls.crt` and `tls.key` sign device
    /// certificates with `kubemqtt-operator fleet sign`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<FleetCaSpec>,
    /// Validity of the CA the operator makes, in days. Default: 3650.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub ca_validity_days: Option<u32>,
}

/// Where a device certificate's id is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceIdFromSpec {
    /// The subject common name.
    #[default]
    Cn,
    /// The first DNS, e-mail or URI subject alternative name.
    San,
}

/// A CA the team brings: its own Secret, or the one cert-manager keeps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetCaSpec {
    /// A Secret with the CA certificate in `ca.crt` or `tls.crt` (a
    /// cert-manager CA Certificate's Secret works as it is). Several CA
    /// certificates in one key are all trusted: put the old and the new
    /// CA there while devices move from one to the other.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A derived-password fleet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DerivedFleetSpec {
    /// The fleet secret (at least 32 bytes). Default: the operator makes
    /// one (Secret `<fleet>-fleet-secret`, key `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyReference>,
    /// The fleet secret being rotated out: devices whose secret was
    /// derived from it still log in until this is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_key_ref: Option<SecretKeyReference>,
    /// How old (or how far ahead) a signed login may be, in seconds.
    /// Default: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub replay_window_seconds: Option<u32>,
}

/// A JWT fleet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keysSecretKeyRef) != has(self.jwksUrl)")
    .message("set one of keysSecretKeyRef and jwksUrl"))]
pub struct JwtFleetSpec {
    /// A Secret key holding the verification keys: a JWKS document or PEM
    /// public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_secret_key_ref: Option<SecretKeyReference>,
    /// A JWKS URL the broker fetches and caches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub jwks_url: Option<String>,
    /// A Secret key with the CA bundle (PEM) an `https` JWKS URL's
    /// certificate chains to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_secret_key_ref: Option<SecretKeyReference>,
    /// How long fetched keys are used, in seconds. Default: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub jwks_refresh_seconds: Option<u32>,
    /// The claim with the device id. Default: `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub device_id_claim: Option<String>,
    /// A claim with the device's own topic rules, `{"publish": [...],
    /// "subscribe": [...]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_claim: Option<String>,
    /// The required issuer (`iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The required audience (`aud`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed, in seconds. Default: 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_seconds: Option<u32>,
    /// Disconnect a device when its token expires. Default: false.
    #[serde(default)]
    pub disconnect_at_expiry: bool,
}

/// A hook fleet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookFleetSpec {
    /// Where logins are checked (POST, JSON; see docs/fleets.md).
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// Where each publish and subscribe topic is checked; without it only
    /// the ACL template applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub acl_url: Option<String>,
    /// A Secret key with the bearer token sent to the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_key_ref: Option<SecretKeyReference>,
    /// A Secret key with the CA bundle (PEM) an `https` registry's
    /// certificate chains to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_key_ref: Option<SecretKeyReference>,
    /// How long the registry may take, in milliseconds. Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub timeout_ms: Option<u32>,
    /// How long an answer is reused, in seconds. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_seconds: Option<u32>,
    /// How many answers are kept. Default: 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub cache_size: Option<u32>,
    /// When the registry does not answer: `deny` (default; logins get
    /// CONNACK 0x88) or `allowCached` (what it last allowed stays
    /// allowed).
    #[serde(default)]
    pub when_down: WhenDownSpec,
}

/// The answer while the registry is down.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WhenDownSpec {
    /// Refuse.
    #[default]
    Deny,
    /// Allow what the registry last allowed.
    AllowCached,
}

/// What the operator reports about a fleet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttDeviceFleetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready: the fleet is in its broker's fleets Secret, and every broker
    /// pod confirmed that revision (`Propagating` until then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,
    /// Devices connected, summed over the broker's pods (when they could
    /// be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_online: Option<i64>,
    /// Entries on the revocation list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<i64>,
    /// The revision of the broker's fleets Secret (`<broker>-fleets`) that
    /// holds this fleet as its spec now says, revocation list included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Broker pods that confirmed that revision: the operator pushed its
    /// revocation lists to their admin API, so a revocation is in force on
    /// them at once. The others read it when the kubelet refreshes the
    /// Secret (about a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_confirmed: Option<i32>,
    /// The Secret holding the operator's CA (certificate fleets) or fleet
    /// secret (derived fleets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::schema_checks::undocumented;
    use kube::CustomResourceExt;

    #[test]
    fn every_field_is_documented_and_the_columns_are_there() {
        let crd = serde_json::to_value(MqttDeviceFleet::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        let schema = &version["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        undocumented(&schema["properties"]["spec"], "spec", &mut missing);
        undocumented(&schema["properties"]["status"], "status", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Broker", "Mode", "Online", "Ready", "Age"]);
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "mqfleet");
    }

    #[test]
    fn a_minimal_fleet_parses() {
        let fleet: MqttDeviceFleetSpec = serde_json::from_value(serde_json::json!({
            "brokerRef": {"name": "b"},
            "mode": "derived",
        }))
        .unwrap();
        assert_eq!(fleet.mode, FleetModeSpec::Derived);
        assert!(fleet.revocations.is_empty());
    }
}
