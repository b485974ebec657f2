//! Our credentials file (TOML): users with password hashes, each optionally
//! valid only until a time (`not_after`, for password rotation),
//! optional per-user quotas and optional per-user topic rules. The format is
//! documented for operators in `docs/auth.md`; keep the two in step.
//!
//! ```toml
//! revision = 7        # optional; raised by the writer with every change
//!
//! [[users]]
//! username = "dev-1"
//! [[users.passwords]]
//! hash = "$7$101$...$..."
//! [[users.passwords]]
//! hash = "$7$101$...$..."
//! not_after = "2026-11-25T12:00:00Z"
//! [users.quotas]
//! connections = 2
//! [[users.acl]]
//! action = "publish"
//! topic = "devices/%u/#"
//! allow = true
//! ```

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toml::Spanned;

use super::acl::{Rule, READ, WRITE};
use super::hash::PasswordHash;
use super::AuthFileError;
use crate::config::SlowSubscriberAction;
use crate::topic;

/// Per-user limits (`[users.quotas]`). An absent field sets no per-user
/// limit; the broker-wide `[limits]` still apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuotas {
    /// Connections this user may hold open at once.
    pub connections: Option<NonZeroU32>,
    /// PUBLISH packets per second each connection of this user may send.
    pub publish_rate: Option<NonZeroU32>,
    /// Largest packet, in bytes, this user's connections may send; the
    /// smaller of this and `limits.max_packet_size` applies.
    pub max_packet_size: Option<NonZeroU32>,
    /// Subscriptions one session of this user may hold.
    pub max_subscriptions: Option<NonZeroU32>,
    /// How long this user's subscribers may take no message while above
    /// their high-water mark (`limits.slow_subscriber_timeout_ms`), in
    /// milliseconds.
    pub slow_subscriber_timeout_ms: Option<NonZeroU32>,
    /// What happens to this user's subscribers past that time
    /// (`limits.slow_subscriber_action`): `disconnect` or `drop`.
    pub slow_subscriber_action: Option<SlowSubscriberAction>,
}

/// A stored password: a hash, valid until `not_after` (inclusive) if set.
#[derive(Debug, Clone)]
pub(crate) struct StoredPassword {
    pub(crate) hash: PasswordHash,
    pub(crate) not_after: Option<SystemTime>,
}

impl StoredPassword {
    /// Whether the password may be used at `now`.
    pub(crate) fn valid_at(&self, now: SystemTime) -> bool {
        match self.not_after {
            Some(limit) => now <= limit,
            None => true,
        }
    }
}

/// One user of the credentials file, validated.
#[derive(Debug, Clone)]
pub(crate) struct CredentialsUser {
    pub(crate) username: String,
    /// 1-based line of `username`, for error messages.
    pub(crate) line: usize,
    pub(crate) passwords: Vec<StoredPassword>,
    pub(crate) quotas: Option<UserQuotas>,
    pub(crate) rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    /// Raised by the writer with every change; read by [`revision`].
    #[serde(default, rename = "revision")]
    _revision: Option<u64>,
    #[serde(default)]
    users: Vec<UserSchema>,
}

/// Only the `revision` of a credentials file.
#[derive(Deserialize)]
struct RevisionSchema {
    revision: Option<u64>,
}

/// The file's `revision`, if it has one (any other error in the file is
/// reported when it is parsed in full).
pub(crate) fn revision(text: &str, origin: &str) -> Result<Option<u64>, AuthFileError> {
    let schema: RevisionSchema = toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| line_at(text, span.start));
        AuthFileError::invalid(origin, line, one_line(error.message()))
    })?;
    Ok(schema.revision)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSchema {
    username: Spanned<String>,
    #[serde(default)]
    passwords: Vec<PasswordSchema>,
    quotas: Option<UserQuotas>,
    #[serde(default)]
    acl: Vec<RuleSchema>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordSchema {
    hash: Spanned<String>,
    /// An RFC 3339 string or a TOML offset date-time.
    not_after: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSchema {
    action: Action,
    topic: Spanned<String>,
    allow: bool,
}

/// What a rule of the credentials file is about.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    /// Publishing (mosquitto `write`).
    Publish,
    /// Subscribing and receiving (mosquitto `read`).
    Subscribe,
    /// Both (mosquitto `readwrite`).
    All,
}

/// Parses and validates the text of a credentials file; `origin` names it
/// in errors.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Vec<CredentialsUser>, AuthFileError> {
    let schema: FileSchema = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let line = inner.span().map(|span| line_at(text, span.start));
            let message = one_line(inner.message());
            let message = if path == "." {
                message
            } else {
                format!("key `{path}`: {message}")
            };
            AuthFileError::invalid(origin, line, message)
        })?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    schema
        .users
        .into_iter()
        .map(|user| {
            let line = line_at(text, user.username.span().start);
            let username = user.username.into_inner();
            let invalid =
                |line, message: String| AuthFileError::invalid(origin, Some(line), message);
            if username.is_empty() {
                return Err(invalid(line, "empty user name".to_owned()));
            }
            if let Some(first) = seen.insert(username.clone(), line) {
                return Err(invalid(
                    line,
                    format!("user `{username}` is already defined on line {first}"),
                ));
            }
            let passwords = user
                .passwords
                .into_iter()
                .map(|entry| {
                    let hash_line = line_at(text, entry.hash.span().start);
                    let hash = PasswordHash::parse(entry.hash.get_ref())
                        .map_err(|message| invalid(hash_line, message))?;
                    let not_after = entry
                        .not_after
                        .map(|value| {
                            parse_time(value.get_ref()).ok_or_else(|| {
                                invalid(
                                    line_at(text, value.span().start),
                                    "`not_after` must be an RFC 3339 time with an offset, \
                                         e.g. \"2026-11-25T12:00:00Z\""
                                        .to_owned(),
                                )
                            })
                        })
                        .transpose()?;
                    Ok(StoredPassword { hash, not_after })
                })
                .collect::<Result<_, _>>()?;
            let rules = user
                .acl
                .into_iter()
                .map(|rule| {
                    let filter = rule.topic.get_ref();
                    if !topic::valid_topic_filter(filter) {
                        return Err(invalid(
                            line_at(text, rule.topic.span().start),
                            format!("invalid topic filter `{filter}`"),
                        ));
                    }
                    Ok(Rule {
                        filter: filter.clone(),
                        access: match rule.action {
                            Action::Publish => WRITE,
                            Action::Subscribe => READ,
                            Action::All => READ | WRITE,
                        },
                        allow: rule.allow,
                        substitute: filter.contains("%u") || filter.contains("%c"),
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(CredentialsUser {
                username,
                line,
                passwords,
                quotas: user.quotas,
                rules,
            })
        })
        .collect()
}

/// An RFC 3339 time with an offset, as a string or a TOML date-time.
fn parse_time(value: &toml::Value) -> Option<SystemTime> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        _ => return None,
    };
    OffsetDateTime::parse(&text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// The 1-based line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// Joins a multi-line parser message into one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `mosquitto_passwd` output for password `secret`.
    const SECRET: &str = "$7$101$3NDA+kAO1XIb5Xyt$ouCKhpv4UgjzW+NFhXraoZkKbSGjFy5OxgyhoLSEh\
                          MY0e4lNCSRdA+SJTmJwTEzVYv1CA5vc5v0BwBthdiVuRQ==";

    fn error(text: &str) -> String {
        parse(text, "creds.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_full_example() {
        let text = format!(
            r#"
[[users]]
username = "dev-1"
[[users.passwords]]
hash = "{SECRET}"
[[users.passwords]]
hash = "{SECRET}"
not_after = "2026-11-25T12:00:00Z"
[[users.passwords]]
hash = "{SECRET}"
not_after = 2026-11-25T13:00:00+01:00
[users.quotas]
connections = 2
publish_rate = 50
[[users.acl]]
action = "publish"
topic = "devices/%u/#"
allow = true
[[users.acl]]
action = "subscribe"
topic = "config/#"
allow = false

[[users]]
username = "dev-2"
passwords = [{{ hash = "{SECRET}" }}]
"#
        );
        let users = parse(&text, "creds.toml").unwrap();
        assert_eq!(users.len(), 2);
        let dev1 = &users[0];
        assert_eq!(dev1.username, "dev-1");
        assert_eq!(dev1.line, 3);
        assert_eq!(dev1.passwords.len(), 3);
        assert!(dev1.passwords[0].not_after.is_none());
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_608_000);
        assert_eq!(dev1.passwords[1].not_after, Some(expected));
        assert_eq!(dev1.passwords[2].not_after, Some(expected), "same instant");
        assert!(dev1.passwords[0].hash.verify(b"secret"));
        let quotas = dev1.quotas.unwrap();
        assert_eq!(quotas.connections, NonZeroU32::new(2));
        assert_eq!(quotas.publish_rate, NonZeroU32::new(50));
        assert_eq!(quotas.max_packet_size, None);
        assert_eq!(
            dev1.rules,
            [
                Rule {
                    filter: "devices/%u/#".to_owned(),
                    access: WRITE,
                    allow: true,
                    substitute: true,
                },
                Rule {
                    filter: "config/#".to_owned(),
                    access: READ,
                    allow: false,
                    substitute: false,
                },
            ]
        );
        assert!(users[1].quotas.is_none());
        assert!(users[1].rules.is_empty());
    }

    #[test]
    fn empty_file_has_no_users() {
        assert!(parse("# nobody yet\n", "creds.toml").unwrap().is_empty());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let user = |body: &str| format!("[[users]]\nusername = \"u\"\n{body}");
        let with_password =
            |body: &str| user(&format!("[[users.passwords]]\nhash = \"{SECRET}\"\n{body}"));

        assert!(parse(&user(""), "c").unwrap()[0].passwords.is_empty());
        assert_eq!(
            error(&user("[[users.passwords]]\nhash = \"plain\"\n")),
            "creds.toml:4: unsupported hash type: expected a $7$ (PBKDF2-SHA512) or $6$ \
             (SHA-512) hash as written by mosquitto_passwd"
        );
        assert_eq!(
            error(&with_password("not_after = \"tomorrow\"\n")),
            "creds.toml:5: `not_after` must be an RFC 3339 time with an offset, \
             e.g. \"2026-11-25T12:00:00Z\""
        );
        assert!(error(&with_password("not_after = 2026-11-25T12:00:00\n"))
            .starts_with("creds.toml:5: `not_after`"));
        assert_eq!(
            error(&with_password(
                "[[users.acl]]\naction = \"all\"\ntopic = \"a/#/b\"\nallow = true\n"
            )),
            "creds.toml:7: invalid topic filter `a/#/b`"
        );
        let unknown_action = error(&with_password(
            "[[users.acl]]\naction = \"read\"\ntopic = \"a\"\nallow = true\n",
        ));
        assert_eq!(
            unknown_action,
            "creds.toml:6: key `users[0].acl[0].action`: unknown variant `read`, expected one \
             of `publish`, `subscribe`, `all`"
        );
        let zero_quota = error(&with_password("[users.quotas]\nconnections = 0\n"));
        assert!(
            zero_quota.starts_with("creds.toml:6: key `users[0].quotas.connections`"),
            "{zero_quota}"
        );
        let typo = error(&with_password("[users.quotas]\nconections = 1\n"));
        assert!(typo.contains("unknown field `conections`"), "{typo}");
        assert_eq!(
            error(&format!("{}{}", with_password(""), with_password(""))),
            "creds.toml:6: user `u` is already defined on line 2"
        );
        assert_eq!(
            error("[[users]]\nusername = \"\"\n"),
            "creds.toml:2: empty user name"
        );
        assert!(error("[[users]\n").starts_with("creds.toml:1: "));
    }
}
