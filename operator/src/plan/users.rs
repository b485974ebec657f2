//! A broker's users: which `MqttUser`s are admitted, and the broker's
//! credentials file built from them.
//!
//! Both controllers use [`admission`]: the user controller to report why a
//! user is refused, the broker controller to leave refused users out of
//! the credentials file. One user's mistake never affects the others.
//!
//! The credentials file carries a `revision`, raised whenever its content
//! changes, so that the broker can order the file (which the kubelet
//! refreshes slowly) and the same text pushed through its admin API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::secrets::ADMIN_USERNAME;
use super::user_secret::{
    PASSWORD_HASH_ANNOTATION, PREVIOUS_PASSWORD_HASH_ANNOTATION,
    PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION,
};
use super::PlanError;
use crate::api::{AclAction, AclRuleSpec, AuthenticationType, MqttUser};

/// An `MqttUser` of a broker and its credentials Secret, if it exists.
#[derive(Debug, Clone, Copy)]
pub struct BrokerUser<'a> {
    /// The resource.
    pub user: &'a MqttUser,
    /// Its `<name>-mqtt-credentials` Secret.
    pub secret: Option<&'a Secret>,
}

/// Why a user is left out of its broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The user name is the operator's own.
    #[error("the user name `{0}` is reserved for the operator")]
    ReservedUsername(String),
    /// The user name is not one the broker can take.
    #[error("the user name `{0}` may only have letters, digits and `.`, `_`, `@`, `-`")]
    InvalidUsername(String),
    /// An older `MqttUser` of the same broker has the user name.
    #[error("the user name `{username}` is already taken by MqttUser `{holder}` of this broker")]
    UsernameConflict {
        /// The contested name.
        username: String,
        /// The resource that holds it.
        holder: String,
    },
    /// A topic rule's filter is not a valid MQTT topic filter.
    #[error("spec.acl[{index}].topic `{topic}` is not a valid topic filter")]
    InvalidAcl {
        /// Index of the rule.
        index: usize,
        /// Its topic.
        topic: String,
    },
}

impl Refusal {
    /// A CamelCase reason for the condition and the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ReservedUsername(_) => "ReservedUsername",
            Refusal::InvalidUsername(_) => "InvalidUsername",
            Refusal::UsernameConflict { .. } => "UsernameConflict",
            Refusal::InvalidAcl { .. } => "InvalidAcl",
        }
    }
}

/// The MQTT user name of `user`: `spec.username`, else its name.
pub fn username(user: &MqttUser) -> String {
    user.spec
        .username
        .clone()
        .unwrap_or_else(|| user.name_any())
}

/// Whether `user` may be in its broker's credentials file. `siblings` are
/// the `MqttUser`s of the same broker (`user` among them or not): when two
/// valid users claim one user name, the older resource (then the smaller
/// name) keeps it.
pub fn admission(user: &MqttUser, siblings: &[MqttUser]) -> Result<(), Refusal> {
    validate(user)?;
    let name = username(user);
    let holder = siblings
        .iter()
        .filter(|other| username(other) == name && validate(other).is_ok())
        .min_by_key(|other| (other.creation_timestamp(), other.name_any()));
    match holder {
        Some(holder) if holder.name_any() != user.name_any() => Err(Refusal::UsernameConflict {
            username: name,
            holder: holder.name_any(),
        }),
        _ => Ok(()),
    }
}

/// The checks that concern `user` alone.
fn validate(user: &MqttUser) -> Result<(), Refusal> {
    let name = username(user);
    if name == ADMIN_USERNAME {
        return Err(Refusal::ReservedUsername(name));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || !name.chars().all(allowed) {
        return Err(Refusal::InvalidUsername(name));
    }
    for (index, rule) in user.spec.acl.iter().enumerate() {
        if !kubemqtt_broker::topic::valid_topic_filter(&rule.topic) {
            return Err(Refusal::InvalidAcl {
                index,
                topic: rule.topic.clone(),
            });
        }
    }
    Ok(())
}

/// The broker's credentials file: the operator's admin user with
/// `admin_hash`, then every admitted user of `users` that has its
/// credentials (sorted by user name). Passwords of a previous rotation are
/// listed with their `not_after` until it has passed at `now`. The
/// `revision` is the one of `stored` (the file now in the auth Secret)
/// when nothing else changed, else one more.
pub fn credentials_file(
    admin_hash: &str,
    users: &[BrokerUser<'_>],
    stored: Option<&str>,
    now: Timestamp,
) -> Result<String, PlanError> {
    let mut entries = BTreeMap::new();
    for user in admitted(users) {
        if let Some(entry) = user_entry(user, now) {
            entries.insert(username(user.user), entry);
        }
    }
    let mut list = vec![admin_entry(admin_hash)];
    list.extend(entries.into_values());
    let mut body = toml::Table::new();
    body.insert("users".into(), toml::Value::Array(list));
    let body = toml::to_string(&body)
        .map_err(|e| PlanError::BrokerConfig(format!("cannot write the credentials file: {e}")))?;

    let render = |revision: u64| {
        format!("# Managed by kubemqtt-operator: edit the MqttUser resources.\nrevision = {revision}\n\n{body}")
    };
    let stored_revision = stored
        .and_then(|text| {
            kubemqtt_broker::auth::credentials_revision(&kubemqtt_broker::auth::AuthText {
                text: text.to_owned(),
                origin: "stored credentials".to_owned(),
            })
            .ok()
        })
        .flatten()
        .unwrap_or(0);
    let same = render(stored_revision);
    Ok(if stored == Some(same.as_str()) {
        same
    } else {
        render(stored_revision + 1)
    })
}

/// Annotation on a user's credentials Secret, written by the broker
/// controller: the revision of the broker's credentials file that holds
/// the user's current entry.
pub const CREDENTIALS_REVISION_ANNOTATION: &str = "kubemqtt.io/credentials-revision";
/// Annotation on a user's credentials Secret, written with
/// [`CREDENTIALS_REVISION_ANNOTATION`]: the digest of that entry, so that
/// the user controller can tell it is the entry of the credentials it
/// holds now.
pub const CREDENTIALS_DIGEST_ANNOTATION: &str = "kubemqtt.io/credentials-digest";

/// A digest of the credentials-file entry of `user` at `now` (SHA-256 of
/// its TOML, hex, 16 bytes); `None` while it has none.
pub fn entry_digest(user: &BrokerUser<'_>, now: Timestamp) -> Option<String> {
    use sha2::{Digest, Sha256};
    let entry = user_entry(user, now)?;
    let text = toml::to_string(&entry).ok()?;
    Some(
        Sha256::digest(text.as_bytes())[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    )
}

/// The revision and digest the broker controller recorded on a user's
/// credentials Secret.
pub fn recorded_entry(secret: &Secret) -> Option<(i64, String)> {
    let annotations = secret.metadata.annotations.as_ref()?;
    let revision = annotations
        .get(CREDENTIALS_REVISION_ANNOTATION)?
        .parse()
        .ok()?;
    let digest = annotations.get(CREDENTIALS_DIGEST_ANNOTATION)?.clone();
    Some((revision, digest))
}

/// The admitted users of `users` whose entries are in the credentials
/// file, with their digests, by user name.
pub fn admitted_digests<'a>(
    users: &[BrokerUser<'a>],
    now: Timestamp,
) -> Vec<(BrokerUser<'a>, String)> {
    admitted(users)
        .into_iter()
        .filter_map(|user| Some((*user, entry_digest(user, now)?)))
        .collect()
}

/// The users of `users` that [`admission`] admits, decided for all of
/// them at once: each is validated once, and of those claiming one user
/// name the holder is the oldest (then the smallest name).
pub fn admitted<'u, 'a>(users: &'u [BrokerUser<'a>]) -> Vec<&'u BrokerUser<'a>> {
    let valid: Vec<&BrokerUser<'a>> = users.iter().filter(|u| validate(u.user).is_ok()).collect();
    let mut holders: BTreeMap<String, &BrokerUser<'a>> = BTreeMap::new();
    for user in &valid {
        let key = |u: &BrokerUser<'_>| (u.user.creation_timestamp(), u.user.name_any());
        holders
            .entry(username(user.user))
            .and_modify(|holder| {
                if key(user) < key(holder) {
                    *holder = user;
                }
            })
            .or_insert(user);
    }
    valid
        .into_iter()
        .filter(|user| {
            holders
                .get(&username(user.user))
                .is_some_and(|holder| holder.user.name_any() == user.user.name_any())
        })
        .collect()
}

/// The operator's own user: every topic, and `$SYS` to read, whatever
/// rules the other users have.
fn admin_entry(hash: &str) -> toml::Value {
    let mut user = toml::Table::new();
    user.insert("username".into(), ADMIN_USERNAME.into());
    user.insert("passwords".into(), vec![password(hash, None)].into());
    let rule = |action: &str, topic: &str| {
        let mut table = toml::Table::new();
        table.insert("action".into(), action.into());
        table.insert("topic".into(), topic.into());
        table.insert("allow".into(), true.into());
        toml::Value::from(table)
    };
    user.insert(
        "acl".into(),
        vec![rule("all", "#"), rule("subscribe", "$SYS/#")].into(),
    );
    user.into()
}

/// The credentials-file entry of one user; `None` while a password user
/// has no password yet.
fn user_entry(user: &BrokerUser<'_>, now: Timestamp) -> Option<toml::Value> {
    let spec = &user.user.spec;
    let mut entry = toml::Table::new();
    entry.insert("username".into(), username(user.user).into());
    if spec.authentication.type_ == AuthenticationType::Password {
        let annotations = user.secret?.metadata.annotations.as_ref()?;
        let current = annotations.get(PASSWORD_HASH_ANNOTATION)?;
        let mut passwords = vec![password(current, None)];
        let previous = annotations.get(PREVIOUS_PASSWORD_HASH_ANNOTATION);
        let until = annotations
            .get(PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION)
            .and_then(|until| until.parse::<Timestamp>().ok());
        if let (Some(previous), Some(until)) = (previous, until) {
            if until > now {
                passwords.push(password(previous, Some(until)));
            }
        }
        entry.insert("passwords".into(), passwords.into());
    }
    let quotas = &spec.quotas;
    let mut table = toml::Table::new();
    for (key, value) in [
        ("connections", quotas.connections),
        ("publish_rate", quotas.publish_rate),
        ("max_packet_size", quotas.max_packet_size),
        ("max_subscriptions", quotas.max_subscriptions),
    ] {
        if let Some(value) = value {
            table.insert(key.into(), i64::from(value).into());
        }
    }
    if !table.is_empty() {
        entry.insert("quotas".into(), table.into());
    }
    // The broker refuses what no rule grants as soon as any user has
    // rules; a user without rules keeps every topic.
    let everything = [AclRuleSpec {
        action: AclAction::All,
        topic: "#".to_owned(),
        allow: true,
    }];
    let acl = if spec.acl.is_empty() {
        &everything[..]
    } else {
        &spec.acl[..]
    };
    {
        let rules: Vec<toml::Value> = acl
            .iter()
            .map(|rule| {
                let mut table = toml::Table::new();
                let action = match rule.action {
                    AclAction::Publish => "publish",
                    AclAction::Subscribe => "subscribe",
                    AclAction::All => "all",
                };
                table.insert("action".into(), action.into());
                table.insert("topic".into(), rule.topic.clone().into());
                table.insert("allow".into(), rule.allow.into());
                table.into()
            })
            .collect();
        entry.insert("acl".into(), rules.into());
    }
    Some(entry.into())
}

fn password(hash: &str, not_after: Option<Timestamp>) -> toml::Value {
    let mut table = toml::Table::new();
    table.insert("hash".into(), hash.into());
    if let Some(until) = not_after {
        table.insert("not_after".into(), until.to_string().into());
    }
    table.into()
}

/// The admin user's hash in a stored credentials file, if it is there.
pub fn stored_admin_hash(stored: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(stored).ok()?;
    table
        .get("users")?
        .as_array()?
        .iter()
        .find(|user| user.get("username").and_then(toml::Value::as_str) == Some(ADMIN_USERNAME))?
        .get("passwords")?
        .as_array()?
        .first()?
        .get("hash")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
