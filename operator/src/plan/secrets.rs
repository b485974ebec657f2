//! The broker's own Secrets besides the server certificate (see
//! [`tls`](super::tls)): the clients CA (`<name>-clients-ca`) and the
//! broker's credentials (`<name>-auth`).
//!
//! The auth Secret holds the broker's credentials file, with one
//! operator-owned user, `kubemqtt-admin` (its password is in the same
//! Secret for health tooling), and every admitted `MqttUser`; and the bearer
//! token of the broker's admin API. The broker re-reads both files when they
//! change, and the controller pushes the credentials file to the admin API
//! so that a change does not wait for the kubelet.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;

use super::tls::{retained_secret, CA_CERT_KEY, CA_PRIVATE_KEY_KEY};
use super::users::{self, BrokerUser};
use super::{Context, Observed, PlanError};
use crate::certs::{self, CertInfo, CertifiedKeyPem};

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

/// How long a clients CA is valid.
pub const CLIENTS_CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 3650);
/// A clients CA this close to expiry is replaced.
pub const CLIENTS_CA_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 365);

/// The auth Secret: the admin user and its password, the broker's
/// credentials file (the admin user and every admitted `MqttUser`, see
/// [`users`]), and the admin API token. Stored values are
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
    let secret = retained_secret(
        ctx,
        &ctx.names.clients_ca_secret,
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
pub(super) enum Stored {
    Missing,
    /// Present but not a readable certificate with its own key.
    Unreadable,
    Valid(CertifiedKeyPem, CertInfo),
}

impl Stored {
    pub(super) fn read(secret: Option<&Secret>, cert_key: &str, private_key_key: &str) -> Stored {
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

/// A Secret of the broker with string `data`.
pub(super) fn secret(
    ctx: &Context<'_>,
    name: &str,
    type_: &str,
    data: BTreeMap<&str, String>,
) -> Secret {
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
pub fn text<'s>(secret: &'s Secret, key: &str) -> Option<&'s str> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0).ok()
}

/// The text of `key` in a Secret (tests).
#[cfg(test)]
pub(crate) fn data_text(secret: &Secret, key: &str) -> String {
    text(secret, key).expect("key").to_owned()
}

/// `pem` ending in a newline.
pub(super) fn with_newline(pem: &str) -> String {
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
    use super::*;
    use crate::api::MqttBroker;
    use crate::plan::testing::{broker, now};
    use crate::plan::{plan, Plan, Settings};

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
            ..Observed::default()
        }
    }

    fn data(secret: &Secret, key: &str) -> String {
        data_text(secret, key)
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
