//! The credentials Secret of an `MqttUser` (`<name>-mqtt-credentials`):
//! everything an application needs to connect, and the password's
//! lifecycle.
//!
//! Keys: `username`, `password` (or `tls.crt` and `tls.key` for a
//! certificate user), `ca.crt` (the CA that signed the broker's
//! certificate), `host` (in-cluster), `external-host` (the load balancer's
//! address, once known), `port`, `tls-port` and `uri`.
//!
//! The password's state lives in annotations of the same Secret, so the
//! Secret alone tells the broker controller what to accept:
//! the current password's hash, the previous one's hash with the end of its
//! grace window, when the password was set and which value of the
//! `kubemqtt.io/rotate` annotation was last acted on.
//!
//! A new password is made when there is none, when `kubemqtt.io/rotate`
//! has a new value, when `rotation.intervalDays` have passed, or (for a
//! password read from the user's Secret) when that value changed. The
//! previous one stays valid for `rotation.graceMinutes`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};

use super::users::{self, Refusal};
use super::{resolve_listeners, ListenerKind, Settings, MANAGED_BY_LABEL, MANAGER};
use crate::api::{AuthenticationType, MqttBroker, MqttUser, ROTATE_ANNOTATION};
use crate::certs::{self, CertError, CertifiedKeyPem, RenewalReason};

/// Annotation: the hash of the current password.
pub const PASSWORD_HASH_ANNOTATION: &str = "kubemqtt.io/password-hash";
/// Annotation: the hash of the previous password, during its grace window.
pub const PREVIOUS_PASSWORD_HASH_ANNOTATION: &str = "kubemqtt.io/previous-password-hash";
/// Annotation: the end of the previous password's grace window (RFC 3339).
pub const PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION: &str =
    "kubemqtt.io/previous-password-valid-until";
/// Annotation: when the current password was set (RFC 3339).
pub const PASSWORD_ROTATED_AT_ANNOTATION: &str = "kubemqtt.io/password-rotated-at";
/// Label on a user's credentials Secret: the broker's name.
pub const BROKER_LABEL: &str = "kubemqtt.io/broker";
/// Label on a user's credentials Secret: the `MqttUser`'s name.
pub const USER_LABEL: &str = "kubemqtt.io/user";

/// Secret key: the MQTT user name.
pub const USERNAME_KEY: &str = "username";
/// Secret key: the password.
pub const PASSWORD_KEY: &str = "password";
/// Secret key: the client certificate.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Secret key: the client certificate's private key.
pub const TLS_KEY_KEY: &str = "tls.key";
/// Secret key: the CA bundle to verify the broker with.
pub const CA_KEY: &str = "ca.crt";
/// Secret key: the broker's in-cluster host name.
pub const HOST_KEY: &str = "host";
/// Secret key: the broker's address outside the cluster.
pub const EXTERNAL_HOST_KEY: &str = "external-host";
/// Secret key: the plain MQTT port.
pub const PORT_KEY: &str = "port";
/// Secret key: the MQTT over TLS port.
pub const TLS_PORT_KEY: &str = "tls-port";
/// Secret key: a URI of the broker (`mqtts://host:port`, no credentials).
pub const URI_KEY: &str = "uri";

/// The shortest password accepted from a user's Secret.
pub const MIN_PASSWORD_LENGTH: usize = 8;

/// The name of the credentials Secret of the user called `name`.
pub fn secret_name(name: &str) -> String {
    format!("{name}-mqtt-credentials")
}

/// What the user controller saw, for [`plan_user`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UserObserved<'a> {
    /// The broker named by `spec.brokerRef`, if it exists.
    pub broker: Option<&'a MqttBroker>,
    /// Every `MqttUser` of the same broker (for user name conflicts).
    pub siblings: &'a [MqttUser],
    /// The user's credentials Secret, if it exists.
    pub secret: Option<&'a Secret>,
    /// The Secret named by `spec.authentication.password.valueFrom`.
    pub password_source: Option<&'a Secret>,
    /// The CA bundle clients verify the broker with (the broker's
    /// ConfigMap `ca.crt`), once it exists.
    pub trust_bundle: Option<&'a str>,
    /// The broker's clients CA (certificate and key), for `tls` users.
    pub clients_ca: Option<&'a CertifiedKeyPem>,
}

/// The planned credentials of one user.
#[derive(Debug, Clone)]
pub struct UserPlan {
    /// The credentials Secret, to apply.
    pub secret: Secret,
    /// The MQTT user name.
    pub username: String,
    /// When the current password was set (password users).
    pub password_rotated_at: Option<Timestamp>,
    /// The end of the previous password's grace window, while it is open.
    pub previous_password_valid_until: Option<Timestamp>,
    /// When the client certificate expires (`tls` users).
    pub certificate_not_after: Option<Timestamp>,
    /// What this plan changes in the credentials, for an Event.
    pub change: Option<CredentialChange>,
    /// When the plan will next differ because of time alone.
    pub recheck_at: Option<Timestamp>,
}

/// A change of a user's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialChange {
    /// The first password was set.
    PasswordCreated,
    /// The password was replaced.
    PasswordRotated(RotationCause),
    /// The previous password's grace window closed.
    GraceEnded,
    /// A client certificate was (re-)issued.
    CertificateIssued(RenewalReason),
}

/// Why a password was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationCause {
    /// The `kubemqtt.io/rotate` annotation has a new value.
    Annotation,
    /// `rotation.intervalDays` passed.
    Schedule,
    /// The password in the user's own Secret changed.
    SourceChanged,
}

impl RotationCause {
    /// A short description for Events.
    pub fn describe(self) -> &'static str {
        match self {
            RotationCause::Annotation => "the kubemqtt.io/rotate annotation changed",
            RotationCause::Schedule => "rotation.intervalDays passed",
            RotationCause::SourceChanged => "the password in the referenced Secret changed",
        }
    }
}

/// Why a user's credentials cannot be planned. Nothing is applied.
#[derive(Debug, thiserror::Error)]
pub enum UserPlanError {
    /// `spec.brokerRef` names no broker in the namespace.
    #[error("MqttBroker `{0}` does not exist in this namespace")]
    BrokerNotFound(String),
    /// The broker does not take this user (name, conflict, rules).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The password Secret is missing or unusable.
    #[error("spec.authentication.password.valueFrom: {0}")]
    PasswordSource(String),
    /// The broker is not ready for this user yet (its clients CA, its
    /// TLS listener); the plan is tried again shortly.
    #[error("waiting for the broker: {0}")]
    WaitingForBroker(String),
    /// The broker's spec is invalid (reported on the broker).
    #[error("the broker's spec is invalid: {0}")]
    InvalidBroker(String),
    /// The object has no namespace.
    #[error("the MqttUser has no namespace")]
    MissingNamespace,
    /// A certificate could not be issued.
    #[error("certificate: {0}")]
    Certificate(#[from] CertError),
    /// Hashing or randomness failed.
    #[error("cannot generate a password: {0}")]
    Random(String),
}

impl UserPlanError {
    /// A CamelCase reason for the `Ready` condition and the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            UserPlanError::BrokerNotFound(_) => "BrokerNotFound",
            UserPlanError::Refused(refusal) => refusal.reason(),
            UserPlanError::PasswordSource(_) => "PasswordSecretInvalid",
            UserPlanError::WaitingForBroker(_) => "WaitingForBroker",
            UserPlanError::InvalidBroker(_) => "BrokerInvalid",
            UserPlanError::MissingNamespace => "InvalidSpec",
            UserPlanError::Certificate(_) => "CertificateError",
            UserPlanError::Random(_) => "InternalError",
        }
    }
}

/// Plans the credentials Secret of `user` at `now`.
pub fn plan_user(
    user: &MqttUser,
    observed: &UserObserved<'_>,
    settings: &Settings,
    now: Timestamp,
) -> Result<UserPlan, UserPlanError> {
    let namespace = user.namespace().ok_or(UserPlanError::MissingNamespace)?;
    let broker_name = &user.spec.broker_ref.name;
    let broker = observed
        .broker
        .ok_or_else(|| UserPlanError::BrokerNotFound(broker_name.clone()))?;
    users::admission(user, observed.siblings)?;
    let username = users::username(user);

    let mut data = connection_details(broker, &namespace, settings)?;
    data.insert(USERNAME_KEY, username.clone());
    if let Some(bundle) = observed.trust_bundle {
        data.insert(CA_KEY, bundle.to_owned());
    }
    let mut annotations = BTreeMap::new();
    let mut plan = UserPlan {
        secret: Secret::default(),
        username: username.clone(),
        password_rotated_at: None,
        previous_password_valid_until: None,
        certificate_not_after: None,
        change: None,
        recheck_at: None,
    };
    match user.spec.authentication.type_ {
        AuthenticationType::Password => {
            let password = password_state(user, observed, now)?;
            data.insert(PASSWORD_KEY, password.password);
            annotations.insert(PASSWORD_HASH_ANNOTATION, password.hash);
            annotations.insert(
                PASSWORD_ROTATED_AT_ANNOTATION,
                password.rotated_at.to_string(),
            );
            if let Some((hash, until)) = password.previous {
                annotations.insert(PREVIOUS_PASSWORD_HASH_ANNOTATION, hash);
                annotations.insert(PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION, until.to_string());
                plan.previous_password_valid_until = Some(until);
            }
            if let Some(value) = user.annotations().get(ROTATE_ANNOTATION) {
                annotations.insert(ROTATE_ANNOTATION, value.clone());
            }
            plan.password_rotated_at = Some(password.rotated_at);
            plan.change = password.change;
            let schedule =
                user.spec.rotation.interval_days.map(|days| {
                    password.rotated_at + SignedDuration::from_hours(24 * i64::from(days))
                });
            plan.recheck_at = [plan.previous_password_valid_until, schedule]
                .into_iter()
                .flatten()
                .min();
        }
        AuthenticationType::Tls => {
            if !broker_listens_on_tls(broker)? {
                return Err(UserPlanError::WaitingForBroker(
                    "tls authentication needs the broker's mqtts listener (client \
                     certificates are only asked for there)"
                        .to_owned(),
                ));
            }
            let ca = observed.clients_ca.ok_or_else(|| {
                UserPlanError::WaitingForBroker("its clients CA does not exist yet".to_owned())
            })?;
            let certificate = client_certificate(user, &username, observed.secret, ca, now)?;
            data.insert(TLS_CERT_KEY, certificate.pair.cert_pem);
            data.insert(TLS_KEY_KEY, certificate.pair.key_pem);
            plan.certificate_not_after = Some(certificate.not_after);
            plan.change = certificate.issued.map(CredentialChange::CertificateIssued);
            plan.recheck_at = Some(certificate.renew_at);
        }
    }

    let name = user.name_any();
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (BROKER_LABEL.to_owned(), broker_name.clone()),
        (USER_LABEL.to_owned(), name.clone()),
    ]);
    plan.secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(
                annotations
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            ),
            owner_references: user.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    Ok(plan)
}

/// `host`, `external-host`, `port`, `tls-port` and `uri` of `broker`.
fn connection_details(
    broker: &MqttBroker,
    namespace: &str,
    settings: &Settings,
) -> Result<BTreeMap<&'static str, String>, UserPlanError> {
    let listeners = resolve_listeners(&broker.spec.listeners)
        .map_err(|e| UserPlanError::InvalidBroker(e.to_string()))?;
    let port_of = |kind| {
        listeners
            .iter()
            .find(|listener| listener.kind == kind)
            .map(|listener| listener.port)
    };
    let host = format!(
        "{}.{namespace}.svc.{}",
        broker.name_any(),
        settings.cluster_domain
    );
    let mut data = BTreeMap::new();
    let external = public_host(broker);
    let uri = match (port_of(ListenerKind::Mqtts), port_of(ListenerKind::Mqtt)) {
        (Some(port), _) => Some(format!("mqtts://{host}:{port}")),
        (None, Some(port)) => Some(format!("mqtt://{host}:{port}")),
        (None, None) => None,
    };
    if let Some(port) = port_of(ListenerKind::Mqtt) {
        data.insert(PORT_KEY, port.to_string());
    }
    if let Some(port) = port_of(ListenerKind::Mqtts) {
        data.insert(TLS_PORT_KEY, port.to_string());
    }
    if let Some(uri) = uri {
        data.insert(URI_KEY, uri);
    }
    if let Some(external) = external {
        data.insert(EXTERNAL_HOST_KEY, external);
    }
    data.insert(HOST_KEY, host);
    Ok(data)
}

/// The broker's address outside the cluster: the first DNS name (not a
/// wildcard) of `spec.tls.generated.extraSANs`, which a team points at the
/// load balancer and which survives a new load balancer address; else the
/// load balancer's address, once it has one.
pub fn public_host(broker: &MqttBroker) -> Option<String> {
    let named = broker
        .spec
        .tls
        .generated
        .iter()
        .flat_map(|generated| &generated.extra_sans)
        .find_map(|name| match certs::San::parse(name) {
            Ok(certs::San::Dns(dns)) if !dns.starts_with("*.") => Some(dns),
            _ => None,
        });
    named.or_else(|| {
        broker
            .status
            .as_ref()
            .and_then(|status| status.endpoints.as_ref())
            .and_then(|endpoints| endpoints.external.clone())
    })
}

fn broker_listens_on_tls(broker: &MqttBroker) -> Result<bool, UserPlanError> {
    let listeners = resolve_listeners(&broker.spec.listeners)
        .map_err(|e| UserPlanError::InvalidBroker(e.to_string()))?;
    Ok(listeners.iter().any(|l| l.kind == ListenerKind::Mqtts))
}

/// A password user's password after this plan.
struct PasswordState {
    password: String,
    hash: String,
    rotated_at: Timestamp,
    previous: Option<(String, Timestamp)>,
    change: Option<CredentialChange>,
}

/// Decides the password: keeps the stored one, or makes a new one and
/// keeps the stored one as the previous password for the grace window.
fn password_state(
    user: &MqttUser,
    observed: &UserObserved<'_>,
    now: Timestamp,
) -> Result<PasswordState, UserPlanError> {
    let stored = observed.secret.and_then(StoredPassword::read);
    let spec = &user.spec;
    let source = match &spec.authentication.password.value_from {
        Some(from) => Some(read_source(
            observed.password_source,
            &from.secret_key_ref.name,
            &from.secret_key_ref.key,
        )?),
        None => None,
    };
    let rotate_value = user.annotations().get(ROTATE_ANNOTATION);

    let cause = match (&stored, &source) {
        (None, _) => None,
        (Some(stored), Some(source)) => {
            (stored.password != *source).then_some(RotationCause::SourceChanged)
        }
        (Some(stored), None) => {
            let interval = spec
                .rotation
                .interval_days
                .map(|days| SignedDuration::from_hours(24 * i64::from(days)));
            if rotate_value.is_some() && rotate_value != stored.rotated_for.as_ref() {
                Some(RotationCause::Annotation)
            } else if interval.is_some_and(|interval| stored.rotated_at + interval <= now) {
                Some(RotationCause::Schedule)
            } else {
                None
            }
        }
    };
    let grace = SignedDuration::from_mins(i64::from(spec.rotation.grace_minutes));
    match (stored, cause) {
        (Some(stored), None) => {
            let open = stored.previous.filter(|(_, until)| *until > now);
            let change =
                (open.is_none() && stored.had_previous).then_some(CredentialChange::GraceEnded);
            Ok(PasswordState {
                password: stored.password,
                hash: stored.hash,
                rotated_at: stored.rotated_at,
                previous: open,
                change,
            })
        }
        (stored, cause) => {
            let password = match source {
                Some(source) => source,
                None => generate_password(spec.authentication.password.length as usize)?,
            };
            let hash = kubemqtt_broker::auth::hash_password(&password)
                .map_err(|e| UserPlanError::Random(e.to_string()))?;
            let previous = stored
                .filter(|_| !grace.is_zero())
                .map(|stored| (stored.hash, now + grace));
            Ok(PasswordState {
                password,
                hash,
                rotated_at: now,
                previous,
                change: Some(match cause {
                    Some(cause) => CredentialChange::PasswordRotated(cause),
                    None => CredentialChange::PasswordCreated,
                }),
            })
        }
    }
}

/// The password state stored on a credentials Secret.
struct StoredPassword {
    password: String,
    hash: String,
    rotated_at: Timestamp,
    previous: Option<(String, Timestamp)>,
    /// Whether a previous password was recorded (open or not).
    had_previous: bool,
    rotated_for: Option<String>,
}

impl StoredPassword {
    /// Reads the stored password; `None` when it is missing or its hash
    /// does not match it (then a new one is made).
    fn read(secret: &Secret) -> Option<StoredPassword> {
        let password = secret
            .data
            .as_ref()?
            .get(PASSWORD_KEY)
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .filter(|password| !password.is_empty())?;
        let annotations = secret.metadata.annotations.as_ref()?;
        let hash = annotations.get(PASSWORD_HASH_ANNOTATION)?.clone();
        if !kubemqtt_broker::auth::verify_password(&hash, &password) {
            return None;
        }
        let rotated_at = annotations
            .get(PASSWORD_ROTATED_AT_ANNOTATION)
            .and_then(|at| at.parse().ok())?;
        let previous_hash = annotations.get(PREVIOUS_PASSWORD_HASH_ANNOTATION);
        let previous = previous_hash.cloned().zip(
            annotations
                .get(PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION)
                .and_then(|until| until.parse().ok()),
        );
        Some(StoredPassword {
            password,
            hash,
            rotated_at,
            had_previous: previous_hash.is_some(),
            previous,
            rotated_for: annotations.get(ROTATE_ANNOTATION).cloned(),
        })
    }
}

/// The password in key `key` of the user's Secret `name`.
fn read_source(secret: Option<&Secret>, name: &str, key: &str) -> Result<String, UserPlanError> {
    let secret = secret
        .ok_or_else(|| UserPlanError::PasswordSource(format!("Secret `{name}` does not exist")))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| {
            UserPlanError::PasswordSource(format!("Secret `{name}` has no key `{key}`"))
        })?;
    let password = String::from_utf8(value.0.clone()).map_err(|_| {
        UserPlanError::PasswordSource(format!("key `{key}` of Secret `{name}` is not UTF-8 text"))
    })?;
    if password.chars().count() < MIN_PASSWORD_LENGTH {
        return Err(UserPlanError::PasswordSource(format!(
            "the password in key `{key}` of Secret `{name}` is shorter than \
             {MIN_PASSWORD_LENGTH} characters"
        )));
    }
    Ok(password)
}

/// `length` random letters and digits (about 5.95 bits each).
fn generate_password(length: usize) -> Result<String, UserPlanError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut password = String::with_capacity(length);
    let mut buffer = [0u8; 64];
    while password.len() < length {
        getrandom::fill(&mut buffer).map_err(|e| UserPlanError::Random(e.to_string()))?;
        // 248 = 4 × 62: rejecting larger bytes keeps every character
        // equally likely.
        for byte in buffer.iter().filter(|&&b| b < 248) {
            if password.len() == length {
                break;
            }
            password.push(ALPHABET[usize::from(*byte) % ALPHABET.len()] as char);
        }
    }
    Ok(password)
}

/// A `tls` user's certificate after this plan.
struct ClientCertificate {
    pair: CertifiedKeyPem,
    not_after: Timestamp,
    renew_at: Timestamp,
    issued: Option<RenewalReason>,
}

/// Keeps the stored client certificate, or issues one when it is missing,
/// unreadable, signed by another CA, for another user name or due for
/// renewal.
fn client_certificate(
    user: &MqttUser,
    username: &str,
    secret: Option<&Secret>,
    ca: &CertifiedKeyPem,
    now: Timestamp,
) -> Result<ClientCertificate, UserPlanError> {
    let spec = &user.spec.authentication.tls;
    let validity = SignedDuration::from_hours(24 * i64::from(spec.validity_days));
    let renew_before = SignedDuration::from_hours(24 * i64::from(spec.renew_before_days));
    let text = |key: &str| {
        secret
            .and_then(|s| s.data.as_ref())
            .and_then(|data| data.get(key))
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
    };
    let reason = match (text(TLS_CERT_KEY), text(TLS_KEY_KEY)) {
        (Some(cert_pem), Some(key_pem)) => {
            let info = certs::inspect(&cert_pem).ok();
            let readable = info.is_some() && certs::key_matches(&cert_pem, &key_pem);
            let reason = match &info {
                None => Some(RenewalReason::Unreadable),
                Some(_) if !readable => Some(RenewalReason::Unreadable),
                Some(_) if !certs::is_signed_by(&cert_pem, &ca.cert_pem) => {
                    Some(RenewalReason::IssuerChanged)
                }
                Some(_) if certs::common_name(&cert_pem).as_deref() != Some(username) => {
                    Some(RenewalReason::NamesChanged)
                }
                Some(info) if now + renew_before >= info.not_after => Some(RenewalReason::Expiring),
                Some(_) => None,
            };
            match (reason, info) {
                (None, Some(info)) => {
                    return Ok(ClientCertificate {
                        pair: CertifiedKeyPem { cert_pem, key_pem },
                        not_after: info.not_after,
                        renew_at: info.not_after - renew_before,
                        issued: None,
                    });
                }
                (reason, _) => reason.unwrap_or(RenewalReason::Unreadable),
            }
        }
        _ => RenewalReason::Missing,
    };
    let pair = certs::issue_client_cert(ca, username, now, validity)?;
    let info = certs::inspect(&pair.cert_pem)?;
    Ok(ClientCertificate {
        pair,
        not_after: info.not_after,
        renew_at: info.not_after - renew_before,
        issued: Some(reason),
    })
}

#[cfg(test)]
mod tests;
