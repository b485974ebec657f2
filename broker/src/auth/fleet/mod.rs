//! Device fleets: many devices, one configuration, nothing stored per
//! device (but revocations).
//!
//! A fleet (`[[auth.fleets]]`, [`FleetConfig`]) is a product line of
//! devices that log in one way:
//!
//! - [`certificate`]: client certificates of the fleet's CA; the device id is
//!   the CN or a subject alternative name;
//! - [`derived`]: a password signed with a secret derived from the fleet's
//!   secret and the device id, with a timestamp (replay window);
//! - [`jwt`]: a JSON Web Token as the password, keys from a file or a JWKS URL;
//! - [`hook`]: the team's device registry answers over HTTP.
//!
//! The fleet decides when a login is one of its devices' (a certificate of
//! its CA, or a user name of its template, see [`username`]); every other
//! login goes to the password, credentials and certificate users as before.
//! A device gets the fleet's ACL template (`%d` device id, `%u` user name,
//! `%c` client id), its quotas (per device id), and is refused or
//! disconnected when the revocation list names it ([`revocation`]).
//!
//! Refusals map to CONNACK reasons ([`Refused::reason_code`]) and are
//! counted per fleet and reason ([`FleetMetrics`]).

mod cache;
pub mod certificate;
pub mod config;
pub mod derived;
mod expiry;
pub mod hook;
pub mod jwt;
mod metrics;
pub mod pushed;
pub mod revocation;
pub mod trust;
mod username;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::acl::{Acl, ClientAcl, Rule, READ, WRITE};
use super::{AuthFileError, UserQuotas};
use crate::codec::ReasonCode;

pub use config::{FleetConfig, FleetMode};
pub use expiry::ExpiryWatch;
pub use metrics::{FleetMetrics, DISCONNECT_REASONS, LOGIN_RESULTS};
pub use revocation::Revocations;
pub use trust::{FleetClientVerifier, FleetTrust};

use certificate::{CertificateProblem, CertificateVerifier};
use derived::DerivedVerifier;
use hook::{Hook, HookLogin, HookTopic};
use jwt::JwtVerifier;
use username::{Matched, UsernameTemplate};

/// Why a fleet refused a login. Each has a CONNACK reason and a metrics
/// label; none carries a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The password or token is not in the fleet's format.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// No key of the fleet matches the token's `kid` / algorithm.
    UnknownKey,
    /// The token is outside its validity (`exp`, `nbf`).
    Expired,
    /// A derived login signed outside the replay window.
    Replayed,
    /// The device or its certificate is on the revocation list.
    Revoked,
    /// Valid, but not let in (the registry said no, wrong issuer or
    /// audience, a token of another device).
    Denied,
    /// The registry or the JWKS URL could not be asked.
    Unavailable,
}

impl Refused {
    /// The CONNACK reason the client gets.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Refused::Malformed
            | Refused::BadSignature
            | Refused::UnknownKey
            | Refused::Expired
            | Refused::Replayed => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            Refused::Revoked => ReasonCode::BANNED,
            Refused::Denied => ReasonCode::NOT_AUTHORIZED,
            Refused::Unavailable => ReasonCode::SERVER_UNAVAILABLE,
        }
    }

    /// The `result` label of `fleet_logins_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::BadSignature => "bad_signature",
            Refused::UnknownKey => "unknown_key",
            Refused::Expired => "expired",
            Refused::Replayed => "replayed",
            Refused::Revoked => "revoked",
            Refused::Denied => "denied",
            Refused::Unavailable => "registry_down",
        }
    }
}

/// Publish or subscribe, for topic checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAction {
    Publish,
    Subscribe,
}

impl TopicAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicAction::Publish => "publish",
            TopicAction::Subscribe => "subscribe",
        }
    }
}

/// A device that logged in, as its connection and the broker know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDevice {
    pub fleet: Arc<str>,
    pub device_id: Arc<str>,
    /// The client's user name: the CONNECT user name (password modes) or
    /// the device id (certificates).
    pub username: Arc<str>,
    /// The certificate's serial (certificate fleets), normalized.
    pub serial: Option<Box<str>>,
    /// When the device's token expires (JWT fleets).
    pub expires_at: Option<SystemTime>,
    /// Disconnect at `expires_at`.
    pub disconnect_at_expiry: bool,
    /// The device's own topic rules (a JWT claim), before the template.
    pub(crate) own_rules: Vec<Rule>,
    /// Logged in with a certificate.
    pub by_certificate: bool,
}

/// What a fleet refused, for the log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRefused {
    pub fleet: Arc<str>,
    pub reason: Refused,
    /// What went wrong, for the log (no secret).
    pub detail: String,
}

/// The outcome of [`Fleets::login`].
#[derive(Debug)]
pub enum FleetLogin {
    /// Not a device of any fleet: authenticate it as before.
    NotAFleetDevice,
    Accepted(FleetDevice),
    Refused(LoginRefused),
}

/// What a CONNECT presents.
pub struct LoginRequest<'a> {
    /// The verified client certificate chain, leaf first.
    pub certificates: Option<&'a [CertificateDer<'static>]>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    pub peer: SocketAddr,
}

enum Verifier {
    Certificate(CertificateVerifier),
    Derived(DerivedVerifier),
    Jwt(Arc<JwtVerifier>),
    Hook(Arc<Hook>),
}

/// One fleet, loaded.
#[derive(Clone)]
pub struct Fleet {
    pub name: Arc<str>,
    config: FleetConfig,
    username: Option<UsernameTemplate>,
    /// Shared with the copies [`Fleets::with_revocations`] makes.
    verifier: Arc<Verifier>,
    rules: Vec<Rule>,
    quotas: UserQuotas,
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.name)
            .field("mode", &self.config.mode)
            .field("revoked", &self.revocations.len())
            .finish()
    }
}

/// Every configured fleet. Immutable: reloads build a new one.
#[derive(Debug, Default)]
pub struct Fleets {
    fleets: Vec<Arc<Fleet>>,
}

impl Fleets {
    /// Reads every file of every fleet. Caches of hook fleets and JWKS
    /// URLs whose settings did not change are taken over from `previous`.
    pub fn load(
        configs: &[FleetConfig],
        previous: Option<&Fleets>,
    ) -> Result<Fleets, AuthFileError> {
        let fleets = configs
            .iter()
            .map(|config| {
                let before = previous.and_then(|p| p.get(&config.name));
                Fleet::load(config, before.map(Arc::as_ref)).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        Ok(Fleets { fleets })
    }

    pub fn is_empty(&self) -> bool {
        self.fleets.is_empty()
    }

    /// Whether a fleet recognises its devices by their certificates.
    pub fn has_certificate_fleets(&self) -> bool {
        self.fleets
            .iter()
            .any(|f| matches!(*f.verifier, Verifier::Certificate(_)))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fleets.iter().map(|f| f.name.as_ref())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Fleet>> {
        self.fleets.iter().find(|f| &*f.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Fleet>> {
        self.fleets.iter()
    }

    /// Decides whether the CONNECT is a device's and, if so, whether it
    /// is let in. A certificate of a fleet's CA makes a certificate login
    /// (whatever the user name); otherwise the user name template decides.
    pub async fn login(&self, request: &LoginRequest<'_>) -> FleetLogin {
        if self.fleets.is_empty() {
            return FleetLogin::NotAFleetDevice;
        }
        let now = SystemTime::now();
        if let Some(chain) = request.certificates.filter(|c| !c.is_empty()) {
            for fleet in &self.fleets {
                if let Verifier::Certificate(verifier) = fleet.verifier.as_ref() {
                    if let Some(identity) = verifier.identify(chain, now) {
                        return fleet.certificate_login(identity);
                    }
                }
            }
        }
        let Some(username) = request.username else {
            return FleetLogin::NotAFleetDevice;
        };
        for fleet in &self.fleets {
            if let Some(matched) = fleet.username.as_ref().and_then(|t| t.matches(username)) {
                let outcome = fleet.password_login(request, username, matched, now).await;
                return match outcome {
                    Ok(device) => FleetLogin::Accepted(device),
                    Err((reason, detail)) => FleetLogin::Refused(LoginRefused {
                        fleet: fleet.name.clone(),
                        reason,
                        detail,
                    }),
                };
            }
        }
        FleetLogin::NotAFleetDevice
    }

    /// Whether a certificate fleet's CA signed the chain (leaf first).
    pub fn trusts(&self, chain: &[CertificateDer<'static>], now: SystemTime) -> bool {
        self.fleets
            .iter()
            .any(|fleet| match fleet.verifier.as_ref() {
                Verifier::Certificate(verifier) => verifier.identify(chain, now).is_some(),
                _ => false,
            })
    }

    /// Why a connected device may no longer stay: its fleet is gone, or
    /// the revocation list now names it.
    pub fn check_connected(&self, device: &FleetDevice) -> Result<(), &'static str> {
        let fleet = self.get(&device.fleet).ok_or("fleet_removed")?;
        match fleet
            .revocations
            .check(&device.device_id, device.serial.as_deref())
        {
            Some(_) => Err("revoked"),
            None => Ok(()),
        }
    }

    /// The topic rules of a device. A device of a fleet that is gone gets
    /// none (it is being disconnected).
    pub fn client_acl(&self, device: &FleetDevice, client_id: &str) -> Arc<ClientAcl> {
        match self.get(&device.fleet) {
            Some(fleet) => Acl::fleet_client(
                [&device.own_rules, &fleet.rules],
                &device.username,
                client_id,
                &device.device_id,
            ),
            None => Acl::deny_all(),
        }
    }

    /// The per-device quotas of a device's fleet.
    pub fn quotas(&self, device: &FleetDevice) -> UserQuotas {
        self.get(&device.fleet)
            .map(|f| f.quotas)
            .unwrap_or_default()
    }

    /// Asks a hook fleet's registry about a topic (true for other fleets).
    pub async fn allows(
        &self,
        device: &FleetDevice,
        client_id: &str,
        action: TopicAction,
        topic: &str,
    ) -> bool {
        let Some(fleet) = self.get(&device.fleet) else {
            return false;
        };
        let Verifier::Hook(hook) = fleet.verifier.as_ref() else {
            return true;
        };
        let hook = hook.clone();
        hook.authorize(&HookTopic {
            fleet: &fleet.name,
            device_id: &device.device_id,
            username: &device.username,
            client_id,
            action,
            topic,
        })
        .await
    }

    /// The same fleets with the revocation lists of `lists` (by fleet
    /// name) in place of theirs; fleets `lists` does not name keep theirs,
    /// and names of fleets that are not here are ignored. Nothing is read
    /// again: verifiers and caches are shared.
    pub fn with_revocations(&self, lists: &BTreeMap<String, Arc<Revocations>>) -> Fleets {
        let fleets = self
            .fleets
            .iter()
            .map(|fleet| match lists.get(&*fleet.name) {
                Some(list) => Arc::new(Fleet {
                    revocations: list.clone(),
                    ..Fleet::clone(fleet)
                }),
                None => fleet.clone(),
            })
            .collect();
        Fleets { fleets }
    }

    /// Bytes the revocation lists hold.
    pub fn revocation_bytes(&self) -> usize {
        self.fleets.iter().map(|f| f.revocations.heap_bytes()).sum()
    }
}

impl Fleet {
    fn load(config: &FleetConfig, previous: Option<&Fleet>) -> Result<Fleet, AuthFileError> {
        let verifier = match config.mode {
            FleetMode::Certificate => {
                let settings = config.certificate.as_ref().ok_or_else(|| missing(config))?;
                Verifier::Certificate(CertificateVerifier::load(
                    &settings.ca_file,
                    settings.device_id_from,
                )?)
            }
            FleetMode::Derived => {
                let settings = config.derived.as_ref().ok_or_else(|| missing(config))?;
                let mut secrets = vec![read_secret(&settings.secret_file)?];
                if let Some(path) = &settings.previous_secret_file {
                    secrets.push(read_secret(path)?);
                }
                Verifier::Derived(DerivedVerifier::new(secrets, settings.replay_window_secs))
            }
            FleetMode::Jwt => {
                let settings = config.jwt.as_ref().ok_or_else(|| missing(config))?;
                let before = previous.and_then(|p| match p.verifier.as_ref() {
                    Verifier::Jwt(jwt) => Some(jwt.as_ref()),
                    _ => None,
                });
                Verifier::Jwt(Arc::new(JwtVerifier::load(settings, before)?))
            }
            FleetMode::Hook => {
                let settings = config.hook.as_ref().ok_or_else(|| missing(config))?;
                let kept = previous.and_then(|p| match p.verifier.as_ref() {
                    Verifier::Hook(hook) if hook.same_as(settings) => Some(hook.clone()),
                    _ => None,
                });
                Verifier::Hook(match kept {
                    Some(hook) => hook,
                    None => Arc::new(Hook::load(settings)?),
                })
            }
        };
        let revocations = match &config.revocation_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
                    path: path.clone(),
                    source,
                })?;
                Revocations::parse(&text, &path.display().to_string())?
            }
            None => Revocations::default(),
        };
        let rules = config
            .acl
            .iter()
            .map(|rule| Rule {
                filter: rule.topic.clone(),
                access: match rule.action {
                    config::RuleAction::Publish => WRITE,
                    config::RuleAction::Subscribe => READ,
                    config::RuleAction::All => READ | WRITE,
                },
                allow: rule.allow,
                substitute: rule.topic.contains('%'),
            })
            .collect();
        Ok(Fleet {
            name: Arc::from(config.name.as_str()),
            username: config.username_template(),
            verifier: Arc::new(verifier),
            rules,
            quotas: config.quotas.unwrap_or_default(),
            revocations: Arc::new(revocations),
            config: config.clone(),
        })
    }

    pub fn mode(&self) -> FleetMode {
        self.config.mode
    }

    /// Entries on the revocation list.
    pub fn revoked(&self) -> usize {
        self.revocations.len()
    }

    fn refuse(&self, reason: Refused, detail: impl Into<String>) -> FleetLogin {
        FleetLogin::Refused(LoginRefused {
            fleet: self.name.clone(),
            reason,
            detail: detail.into(),
        })
    }

    fn certificate_login(
        &self,
        identity: Result<certificate::CertificateIdentity, CertificateProblem>,
    ) -> FleetLogin {
        let identity = match identity {
            Ok(identity) => identity,
            Err(CertificateProblem::NoDeviceId) => {
                return self.refuse(
                    Refused::Malformed,
                    "the certificate carries no device id where the fleet looks for it",
                )
            }
        };
        if let Some(why) = self
            .revocations
            .check(&identity.device_id, Some(&identity.serial))
        {
            return self.refuse(
                Refused::Revoked,
                format!(
                    "device {} (serial {}) is revoked by {:?}",
                    identity.device_id, identity.serial, why
                ),
            );
        }
        let device_id: Arc<str> = Arc::from(identity.device_id);
        FleetLogin::Accepted(FleetDevice {
            fleet: self.name.clone(),
            username: device_id.clone(),
            device_id,
            serial: Some(identity.serial.into_boxed_str()),
            expires_at: None,
            disconnect_at_expiry: false,
            own_rules: Vec::new(),
            by_certificate: true,
        })
    }

    async fn password_login(
        &self,
        request: &LoginRequest<'_>,
        username: &str,
        matched: Matched<'_>,
        now: SystemTime,
    ) -> Result<FleetDevice, (Refused, String)> {
        let password = request.password.unwrap_or_default();
        let from_name = match matched {
            Matched::Device(id) => Some(id),
            Matched::Literal => None,
        };
        let mut device = FleetDevice {
            fleet: self.name.clone(),
            device_id: Arc::from(from_name.unwrap_or(username)),
            username: Arc::from(username),
            serial: None,
            expires_at: None,
            disconnect_at_expiry: false,
            own_rules: Vec::new(),
            by_certificate: false,
        };
        match self.verifier.as_ref() {
            Verifier::Certificate(_) => {
                return Err((
                    Refused::Malformed,
                    "certificate fleets take no password".into(),
                ))
            }
            Verifier::Derived(verifier) => {
                verifier
                    .verify(&device.device_id, request.client_id, password, now)
                    .map_err(|reason| {
                        (
                            reason,
                            format!("derived login of device {}", device.device_id),
                        )
                    })?;
            }
            Verifier::Jwt(verifier) => {
                let token = verifier.verify(password, now).await?;
                if from_name.is_some_and(|id| id != token.device_id) {
                    return Err((
                        Refused::Denied,
                        format!(
                            "the token is device {}'s, the user name says {}",
                            token.device_id, device.device_id
                        ),
                    ));
                }
                device.device_id = Arc::from(token.device_id);
                device.expires_at = Some(token.expires_at);
                device.disconnect_at_expiry = verifier.disconnect_at_expiry();
                device.own_rules = token.rules;
            }
            Verifier::Hook(hook) => {
                device.device_id = hook
                    .login(&HookLogin {
                        fleet: &self.name,
                        username,
                        client_id: request.client_id,
                        password,
                        device_id: from_name,
                        peer: request.peer,
                    })
                    .await?;
            }
        }
        if let Some(why) = self.revocations.check(&device.device_id, None) {
            return Err((
                Refused::Revoked,
                format!("device {} is revoked ({why:?})", device.device_id),
            ));
        }
        Ok(device)
    }
}

fn missing(config: &FleetConfig) -> AuthFileError {
    AuthFileError::Invalid {
        file: "broker.toml".to_owned(),
        line: None,
        message: format!(
            "fleet `{}`: mode {} without its settings",
            config.name,
            config.mode.as_str()
        ),
    }
}

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, AuthFileError> {
    let text = std::fs::read(path).map_err(|source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = derived::secret_from_file_text(&text);
    if secret.len() < derived::MIN_SECRET_LEN {
        return Err(AuthFileError::Invalid {
            file: path.display().to_string(),
            line: None,
            message: format!(
                "a fleet secret needs at least {} bytes (this one has {})",
                derived::MIN_SECRET_LEN,
                secret.len()
            ),
        });
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests;
