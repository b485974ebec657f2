//! Planning the device fleets of a broker (`MqttDeviceFleet`).
//!
//! Each fleet becomes a few keys of one Secret per broker,
//! `<broker>-fleets`, which the broker's pods mount at [`FLEETS_DIR`] (the
//! broker's `auth.fleets_dir`): `<fleet>.toml` (the fleet's table of the
//! broker's configuration, its paths relative to the directory) and the
//! files it names (`<fleet>.ca.crt`, `<fleet>.secret`, `<fleet>.revoked`,
//! ...). Fleets come and go, and revocation lists change, without a pod
//! restart: the broker re-reads the directory when it changes.
//!
//! The Secret also holds its `revision` ([`REVISION_KEY`]), one more at
//! each change. The controller pushes the revocation lists of a revision
//! to the broker pods' admin API once the Secret holds it
//! ([`BrokerFleets::revocation_push`]), so that a revocation is in force
//! within a second instead of when the kubelet refreshes the volume.
//!
//! Every fleet entry is checked with the broker's own parser and
//! validation before it is written, one fleet at a time: a fleet that
//! cannot be used (a short secret, a bad revocation list, a user name
//! template another fleet claims) is left out and reported on that fleet;
//! the broker keeps the others.
//!
//! The operator's own material is one Secret per fleet: the fleet CA
//! (`<fleet>-fleet-ca`, certificate fleets without a CA of their own) or
//! the fleet secret (`<fleet>-fleet-secret`, derived fleets without one of
//! their own); generated once, then kept.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use kubemqtt_broker::auth::fleet::config::{
    self as broker_fleet, CertificateSettings, DerivedSettings, DeviceIdFrom, FleetConfig,
    FleetMode, FleetRule, HookSettings, JwtSettings, RuleAction, WhenDown,
};
use kubemqtt_broker::auth::fleet::pushed::REVISION_FILE;
use kubemqtt_broker::auth::fleet::Revocations;
use kubemqtt_broker::auth::UserQuotas;

use super::secrets::text;
use super::{common_labels, MANAGED_BY_LABEL, MANAGER};
use crate::api::fleet::{DeviceIdFromSpec, FleetModeSpec, WhenDownSpec};
use crate::api::{AclAction, MqttBroker, MqttDeviceFleet, SecretKeyReference};
use crate::certs::{self, CertifiedKeyPem};

/// Where the broker's pods see the fleets Secret.
pub const FLEETS_DIR: &str = "/etc/kubemqtt/fleets";
/// Label on a fleet's own Secret: the fleet's name.
pub const FLEET_LABEL: &str = "kubemqtt.io/fleet";
/// Key of the fleet secret in `<fleet>-fleet-secret`.
pub const FLEET_SECRET_KEY: &str = "secret";
/// Keys of the CA in `<fleet>-fleet-ca`.
pub const CA_CERT_KEY: &str = "tls.crt";
pub const CA_KEY_KEY: &str = "tls.key";
/// Bytes of a generated fleet secret (hex encoded: twice as many
/// characters).
const GENERATED_SECRET_BYTES: usize = 32;
/// Validity of a CA the operator makes, unless the spec says otherwise.
const DEFAULT_CA_DAYS: u32 = 3650;

/// The key of the fleets Secret with its revision (the broker reads it as
/// `revision` in its fleets directory).
pub const REVISION_KEY: &str = REVISION_FILE;

/// The revision a fleets Secret holds (0 when it holds none).
pub fn secret_revision(secret: &Secret) -> u64 {
    text(secret, REVISION_KEY)
        .and_then(|revision| revision.trim().parse().ok())
        .unwrap_or(0)
}

/// The Secret with a broker's fleets: `<broker>-fleets`.
pub fn fleets_secret_name(broker: &str) -> String {
    format!("{broker}-fleets")
}

/// The operator's Secret of a fleet (its CA, or its fleet secret), when it
/// keeps one.
pub fn own_secret_name(fleet: &MqttDeviceFleet) -> Option<String> {
    let name = fleet.name_any();
    match fleet.spec.mode {
        FleetModeSpec::Certificate
            if fleet
                .spec
                .certificate
                .as_ref()
                .is_none_or(|c| c.ca.is_none()) =>
        {
            Some(format!("{name}-fleet-ca"))
        }
        FleetModeSpec::Derived
            if fleet
                .spec
                .derived
                .as_ref()
                .is_none_or(|d| d.secret_key_ref.is_none()) =>
        {
            Some(format!("{name}-fleet-secret"))
        }
        _ => None,
    }
}

/// Why a fleet is left out of its broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetPlanError {
    /// A Secret or ConfigMap the spec names does not exist (yet), or lacks
    /// the key.
    #[error("{kind} {name} (key {key}) is missing")]
    Missing {
        kind: &'static str,
        name: String,
        key: String,
    },
    /// Something the broker would refuse.
    #[error("{0}")]
    Invalid(String),
}

impl FleetPlanError {
    /// The `reason` of the `Ready=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            FleetPlanError::Missing { .. } => "MissingReference",
            FleetPlanError::Invalid(_) => "InvalidFleet",
        }
    }
}

/// The operator's Secret of a fleet: the existing one when it holds what
/// it should, else new material. `None` when the operator keeps none for
/// this fleet.
pub fn plan_own_secret(
    fleet: &MqttDeviceFleet,
    existing: Option<&Secret>,
    now: Timestamp,
) -> Result<Option<Secret>, FleetPlanError> {
    let Some(name) = own_secret_name(fleet) else {
        return Ok(None);
    };
    let data = match fleet.spec.mode {
        FleetModeSpec::Certificate => {
            let kept = existing.and_then(|s| Some((text(s, CA_CERT_KEY)?, text(s, CA_KEY_KEY)?)));
            let ca = match kept.filter(|(cert, key)| certs::key_matches(cert, key)) {
                Some((cert, key)) => CertifiedKeyPem {
                    cert_pem: cert.to_owned(),
                    key_pem: key.to_owned(),
                },
                None => {
                    let days = fleet
                        .spec
                        .certificate
                        .as_ref()
                        .and_then(|c| c.ca_validity_days)
                        .unwrap_or(DEFAULT_CA_DAYS);
                    certs::generate_ca(
                        &format!("{} fleet CA", fleet.name_any()),
                        now,
                        SignedDuration::from_hours(24 * i64::from(days)),
                    )
                    .map_err(|e| FleetPlanError::Invalid(format!("cannot make the CA: {e}")))?
                }
            };
            BTreeMap::from([
                (CA_CERT_KEY.to_owned(), ca.cert_pem.clone()),
                (CA_KEY_KEY.to_owned(), ca.key_pem),
                ("ca.crt".to_owned(), ca.cert_pem),
            ])
        }
        _ => {
            let kept = existing
                .and_then(|s| text(s, FLEET_SECRET_KEY))
                .filter(|secret| secret.len() >= 32);
            let secret = match kept {
                Some(secret) => secret.to_owned(),
                None => generate_secret()?,
            };
            BTreeMap::from([(FLEET_SECRET_KEY.to_owned(), secret)])
        }
    };
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (FLEET_LABEL.to_owned(), fleet.name_any()),
    ]);
    labels.insert(
        "app.kubernetes.io/name".to_owned(),
        "kubemqtt-fleet".to_owned(),
    );
    Ok(Some(Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: fleet.namespace(),
            labels: Some(labels),
            owner_references: fleet.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }))
}

fn generate_secret() -> Result<String, FleetPlanError> {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| FleetPlanError::Invalid(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What one fleet's entry is made of: the fleet, its own Secret, and the
/// Secrets and ConfigMaps its spec names (by name), as the controller read
/// them.
pub struct FleetSources<'a> {
    pub fleet: &'a MqttDeviceFleet,
    pub own_secret: Option<&'a Secret>,
    pub secrets: &'a BTreeMap<String, Secret>,
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
}

impl FleetSources<'_> {
    fn secret_key(&self, reference: &SecretKeyReference) -> Result<String, FleetPlanError> {
        self.secrets
            .get(&reference.name)
            .and_then(|s| text(s, &reference.key))
            .map(str::to_owned)
            .ok_or_else(|| FleetPlanError::Missing {
                kind: "Secret",
                name: reference.name.clone(),
                key: reference.key.clone(),
            })
    }
}

/// One fleet's files in the broker's fleets Secret, and its table of the
/// broker's configuration, checked as the broker would.
pub fn fleet_files(
    sources: &FleetSources<'_>,
) -> Result<(FleetConfig, BTreeMap<String, String>), FleetPlanError> {
    let fleet = sources.fleet;
    let spec = &fleet.spec;
    let name = fleet.name_any();
    let mut files = BTreeMap::new();
    let file = |suffix: &str| format!("{name}.{suffix}");
    let mut config = FleetConfig {
        name: name.clone(),
        mode: match spec.mode {
            FleetModeSpec::Certificate => FleetMode::Certificate,
            FleetModeSpec::Derived => FleetMode::Derived,
            FleetModeSpec::Jwt => FleetMode::Jwt,
            FleetModeSpec::Hook => FleetMode::Hook,
        },
        username: match spec.mode {
            FleetModeSpec::Certificate => None,
            _ => Some(
                spec.username_template
                    .clone()
                    .unwrap_or_else(|| format!("%d@{name}")),
            ),
        },
        revocation_file: None,
        quotas: (!spec.quotas.is_empty()).then(|| quotas(&spec.quotas)),
        acl: spec
            .acl
            .iter()
            .map(|rule| FleetRule {
                action: match rule.action {
                    AclAction::Publish => RuleAction::Publish,
                    AclAction::Subscribe => RuleAction::Subscribe,
                    AclAction::All => RuleAction::All,
                },
                topic: rule.topic.clone(),
                allow: rule.allow,
            })
            .collect(),
        certificate: None,
        derived: None,
        jwt: None,
        hook: None,
    };

    let revoked = revocation_list(sources)?;
    if !revoked.is_empty() {
        Revocations::parse(&revoked, &format!("the revocations of fleet {name}"))
            .map_err(|e| FleetPlanError::Invalid(e.to_string()))?;
        files.insert(file("revoked"), revoked);
        config.revocation_file = Some(file("revoked").into());
    }

    match spec.mode {
        FleetModeSpec::Certificate => {
            let settings = spec.certificate.clone().unwrap_or_default();
            let bundle =
                match &settings.ca {
                    Some(ca) => {
                        let secret = sources.secrets.get(&ca.secret_name).ok_or(
                            FleetPlanError::Missing {
                                kind: "Secret",
                                name: ca.secret_name.clone(),
                                key: "ca.crt".to_owned(),
                            },
                        )?;
                        text(secret, "ca.crt")
                            .or_else(|| text(secret, "tls.crt"))
                            .map(str::to_owned)
                            .ok_or(FleetPlanError::Missing {
                                kind: "Secret",
                                name: ca.secret_name.clone(),
                                key: "ca.crt".to_owned(),
                            })?
                    }
                    None => sources
                        .own_secret
                        .and_then(|s| text(s, CA_CERT_KEY))
                        .map(str::to_owned)
                        .ok_or_else(|| FleetPlanError::Missing {
                            kind: "Secret",
                            name: own_secret_name(fleet).unwrap_or_default(),
                            key: CA_CERT_KEY.to_owned(),
                        })?,
                };
            let cas = certs::pem_certificates(&bundle);
            if cas.is_empty() || !cas.iter().all(|c| certs::is_ca(c)) {
                return Err(FleetPlanError::Invalid(
                    "the fleet CA bundle must hold CA certificates only".to_owned(),
                ));
            }
            files.insert(file("ca.crt"), bundle);
            config.certificate = Some(CertificateSettings {
                ca_file: file("ca.crt").into(),
                device_id_from: match settings.device_id_from {
                    DeviceIdFromSpec::Cn => DeviceIdFrom::Cn,
                    DeviceIdFromSpec::San => DeviceIdFrom::San,
                },
            });
        }
        FleetModeSpec::Derived => {
            let settings = spec.derived.clone().unwrap_or_default();
            let secret = match &settings.secret_key_ref {
                Some(reference) => sources.secret_key(reference)?,
                None => sources
                    .own_secret
                    .and_then(|s| text(s, FLEET_SECRET_KEY))
                    .map(str::to_owned)
                    .ok_or_else(|| FleetPlanError::Missing {
                        kind: "Secret",
                        name: own_secret_name(fleet).unwrap_or_default(),
                        key: FLEET_SECRET_KEY.to_owned(),
                    })?,
            };
            check_secret(&secret)?;
            files.insert(file("secret"), secret);
            let previous = match &settings.previous_secret_key_ref {
                Some(reference) => {
                    let previous = sources.secret_key(reference)?;
                    check_secret(&previous)?;
                    files.insert(file("previous-secret"), previous);
                    Some(file("previous-secret").into())
                }
                None => None,
            };
            config.derived = Some(DerivedSettings {
                secret_file: file("secret").into(),
                previous_secret_file: previous,
                replay_window_secs: settings.replay_window_seconds.map_or(300, u64::from),
            });
        }
        FleetModeSpec::Jwt => {
            let settings = spec.jwt.clone().unwrap_or_default();
            let keys_file = match &settings.keys_secret_key_ref {
                Some(reference) => {
                    let keys = sources.secret_key(reference)?;
                    kubemqtt_broker::auth::fleet::jwt::check_keys(&keys, &reference.name)
                        .map_err(|e| FleetPlanError::Invalid(e.to_string()))?;
                    files.insert(file("keys"), keys);
                    Some(file("keys").into())
                }
                None => None,
            };
            let jwks_ca_file = match &settings.jwks_ca_secret_key_ref {
                Some(reference) => {
                    files.insert(file("jwks-ca.crt"), sources.secret_key(reference)?);
                    Some(file("jwks-ca.crt").into())
                }
                None => None,
            };
            config.jwt = Some(JwtSettings {
                keys_file,
                jwks_url: settings.jwks_url.clone(),
                jwks_ca_file,
                jwks_refresh_secs: settings.jwks_refresh_seconds.map_or(300, u64::from),
                device_id_claim: settings
                    .device_id_claim
                    .clone()
                    .unwrap_or_else(|| "sub".to_owned()),
                rules_claim: settings.rules_claim.clone(),
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                leeway_secs: settings.leeway_seconds.map_or(30, u64::from),
                disconnect_at_expiry: settings.disconnect_at_expiry,
            });
        }
        FleetModeSpec::Hook => {
            let settings = spec.hook.clone().unwrap_or_default();
            let token_file = match &settings.token_secret_key_ref {
                Some(reference) => {
                    files.insert(file("token"), sources.secret_key(reference)?);
                    Some(file("token").into())
                }
                None => None,
            };
            let ca_file = match &settings.ca_secret_key_ref {
                Some(reference) => {
                    files.insert(file("hook-ca.crt"), sources.secret_key(reference)?);
                    Some(file("hook-ca.crt").into())
                }
                None => None,
            };
            config.hook = Some(HookSettings {
                url: settings.url.clone(),
                acl_url: settings.acl_url.clone(),
                token_file,
                ca_file,
                timeout_ms: settings.timeout_ms.map_or(1000, u64::from),
                cache_ttl_secs: settings.cache_ttl_seconds.map_or(60, u64::from),
                cache_size: settings.cache_size.map_or(100_000, |n| n as usize),
                when_down: match settings.when_down {
                    WhenDownSpec::Deny => WhenDown::Deny,
                    WhenDownSpec::AllowCached => WhenDown::AllowCached,
                },
            });
        }
    }
    broker_fleet::validate(std::slice::from_ref(&config))
        .map_err(|(key, message)| FleetPlanError::Invalid(format!("{key}: {message}")))?;
    let toml = toml::to_string(&config)
        .map_err(|e| FleetPlanError::Invalid(format!("cannot write the fleet's table: {e}")))?;
    files.insert(file("toml"), toml);
    Ok((config, files))
}

fn check_secret(secret: &str) -> Result<(), FleetPlanError> {
    let key = kubemqtt_broker::auth::fleet::derived::secret_from_file_text(secret.as_bytes());
    if key.len() < kubemqtt_broker::auth::fleet::derived::MIN_SECRET_LEN {
        return Err(FleetPlanError::Invalid(format!(
            "the fleet secret has {} bytes; it needs at least {}",
            key.len(),
            kubemqtt_broker::auth::fleet::derived::MIN_SECRET_LEN
        )));
    }
    Ok(())
}

fn quotas(spec: &crate::api::QuotasSpec) -> UserQuotas {
    use std::num::NonZeroU32;
    UserQuotas {
        connections: spec.connections.and_then(NonZeroU32::new),
        publish_rate: spec.publish_rate.and_then(NonZeroU32::new),
        max_packet_size: spec.max_packet_size.and_then(NonZeroU32::new),
        max_subscriptions: spec.max_subscriptions.and_then(NonZeroU32::new),
        ..UserQuotas::default()
    }
}

/// The revocation list: the spec's devices and serials, then the
/// referenced ConfigMap's key.
fn revocation_list(sources: &FleetSources<'_>) -> Result<String, FleetPlanError> {
    let revocations = &sources.fleet.spec.revocations;
    let mut text = String::new();
    for device in &revocations.devices {
        text.push_str(&format!("device {device}\n"));
    }
    for serial in &revocations.serials {
        text.push_str(&format!("serial {serial}\n"));
    }
    if let Some(reference) = &revocations.config_map_key_ref {
        let list = sources
            .config_maps
            .get(&reference.name)
            .and_then(|c| c.data.as_ref()?.get(&reference.key))
            .ok_or_else(|| FleetPlanError::Missing {
                kind: "ConfigMap",
                name: reference.name.clone(),
                key: reference.key.clone(),
            })?;
        text.push_str(list);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(text)
}

/// The fleets of one broker, put together: each fleet's files, in the
/// order given (oldest first), leaving out the fleets that cannot be used
/// alone or clash with one before them.
#[derive(Debug, Default)]
pub struct BrokerFleets {
    /// The Secret's keys and contents.
    pub files: BTreeMap<String, String>,
    /// The fleets in it.
    pub included: Vec<String>,
    /// The fleets left out, and why.
    pub refused: BTreeMap<String, FleetPlanError>,
    /// Revocation entries per included fleet.
    pub revoked: BTreeMap<String, usize>,
}

impl BrokerFleets {
    /// Puts the fleets together.
    pub fn build(fleets: &[FleetSources<'_>]) -> BrokerFleets {
        let mut out = BrokerFleets::default();
        let mut configs: Vec<FleetConfig> = Vec::new();
        for sources in fleets {
            let name = sources.fleet.name_any();
            let (config, files) = match fleet_files(sources) {
                Ok(planned) => planned,
                Err(error) => {
                    out.refused.insert(name, error);
                    continue;
                }
            };
            configs.push(config);
            if let Err((_, message)) = broker_fleet::validate(&configs) {
                configs.pop();
                out.refused.insert(name, FleetPlanError::Invalid(message));
                continue;
            }
            let revoked = files.get(&format!("{name}.revoked")).map_or(0, |list| {
                Revocations::parse(list, "").map_or(0, |r| r.len())
            });
            out.revoked.insert(name.clone(), revoked);
            out.files.extend(files);
            out.included.push(name);
        }
        out
    }

    /// The broker's fleets Secret with its revision: `current`'s when the
    /// fleets' files are the same; when they changed, the next one, and at
    /// least the Unix time `now` in seconds (so that a Secret deleted and
    /// made again does not start below a revision the pods were pushed).
    pub fn secret_after(
        &self,
        broker: &MqttBroker,
        current: Option<&Secret>,
        now: Timestamp,
    ) -> (Secret, u64) {
        let mut planned = self.secret(broker);
        let current_revision = current.map_or(0, secret_revision);
        let files_of = |secret: &Secret| {
            let mut data = secret.data.clone().unwrap_or_default();
            data.remove(REVISION_KEY);
            data
        };
        let unchanged = current.is_some_and(|c| files_of(c) == files_of(&planned));
        let revision = if unchanged && current_revision > 0 {
            current_revision
        } else {
            (current_revision + 1).max(u64::try_from(now.as_second()).unwrap_or(0))
        };
        planned.data.get_or_insert_with(BTreeMap::new).insert(
            REVISION_KEY.to_owned(),
            ByteString(revision.to_string().into_bytes()),
        );
        (planned, revision)
    }

    /// What the controller pushes to the broker pods at `revision`: the
    /// revocation list of every fleet in the Secret (empty when it has
    /// none), in the broker's format (`auth::fleet::pushed`).
    pub fn revocation_push(&self, revision: u64) -> String {
        #[derive(serde::Serialize)]
        struct Push<'a> {
            revision: u64,
            revocations: BTreeMap<&'a str, &'a str>,
        }
        let revocations = self
            .included
            .iter()
            .map(|name| {
                let list = self.files.get(&format!("{name}.revoked"));
                (name.as_str(), list.map_or("", String::as_str))
            })
            .collect();
        toml::to_string(&Push {
            revision,
            revocations,
        })
        .expect("a number and strings always make TOML")
    }

    /// The broker's fleets Secret (owned by the broker: it goes with it).
    pub fn secret(&self, broker: &MqttBroker) -> Secret {
        let name = broker.name_any();
        Secret {
            metadata: ObjectMeta {
                name: Some(fleets_secret_name(&name)),
                namespace: broker.namespace(),
                labels: Some(common_labels(&name)),
                owner_references: broker.controller_owner_ref(&()).map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            data: Some(
                self.files
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        }
    }
}

#[cfg(test)]
mod tests;
