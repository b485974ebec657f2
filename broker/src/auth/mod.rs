//! Authentication and topic authorization.
//!
//! - [`Authenticator`] checks user names and passwords against mosquitto's
//!   `password_file` and/or our credentials file.
//! - [`Acl`] decides which topics a client may publish, subscribe to and
//!   receive, from mosquitto's `acl_file` and/or the per-user rules of the
//!   credentials file.
//!
//! - [`fleet`]: device fleets (certificates, derived passwords, JWT, an
//!   HTTP hook), which decide the logins of their devices.
//!
//! Both are immutable: to reload, load new ones and swap them in. The file
//! formats are documented for operators in `docs/auth.md`.

mod acl;
mod credentials;
pub mod fleet;
mod hash;
mod passwd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use acl::{Acl, ClientAcl};
pub use credentials::UserQuotas;
pub use hash::{hash_password, verify_password, DEFAULT_ITERATIONS};

use credentials::StoredPassword;

/// A password, ACL or credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is invalid.
    #[error("{file}:{}{message}", line.map(|line| format!("{line}: ")).unwrap_or_else(|| " ".to_owned()))]
    Invalid {
        /// The file name.
        file: String,
        /// 1-based line of the mistake, when known.
        line: Option<usize>,
        /// What is wrong. Never contains a password or hash.
        message: String,
    },
}

impl AuthFileError {
    fn invalid(file: &str, line: Option<usize>, message: impl Into<String>) -> AuthFileError {
        AuthFileError::Invalid {
            file: file.to_owned(),
            line,
            message: message.into(),
        }
    }
}

/// Why a login was refused. Count and log it; it never carries the
/// password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// No such user.
    #[error("unknown user")]
    UnknownUser,
    /// The password matches none of the user's hashes.
    #[error("bad password")]
    BadPassword,
    /// The password matches only hashes whose `not_after` has passed.
    #[error("password expired")]
    Expired,
}

/// The known users and their password hashes.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    users: HashMap<String, User>,
}

#[derive(Debug, Clone)]
struct User {
    passwords: Vec<StoredPassword>,
    quotas: Option<UserQuotas>,
}

/// A file's text and the name to use in errors.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Authenticator {
    /// Loads users from a mosquitto password file and/or our credentials
    /// file. A user name may appear in only one of them. With neither file
    /// there are no users.
    pub fn load(
        password_file: Option<&Path>,
        credentials_file: Option<&Path>,
    ) -> Result<Authenticator, AuthFileError> {
        let passwd = password_file.map(read).transpose()?;
        let creds = credentials_file.map(read).transpose()?;
        Authenticator::from_sources(
            passwd.as_ref().map(AuthText::source),
            creds.as_ref().map(AuthText::source),
        )
    }

    fn from_sources(
        passwd: Option<Source>,
        creds: Option<Source>,
    ) -> Result<Authenticator, AuthFileError> {
        let mut users = HashMap::new();
        if let Some(source) = &passwd {
            for entry in passwd::parse(source.text, source.origin)? {
                let password = StoredPassword {
                    hash: entry.hash,
                    not_after: None,
                };
                users.insert(
                    entry.username,
                    User {
                        passwords: vec![password],
                        quotas: None,
                    },
                );
            }
        }
        if let Some(source) = &creds {
            for user in credentials::parse(source.text, source.origin)? {
                if let Some(passwd) = passwd
                    .as_ref()
                    .filter(|_| users.contains_key(&user.username))
                {
                    return Err(AuthFileError::invalid(
                        source.origin,
                        Some(user.line),
                        format!(
                            "user `{}` is also defined in {}",
                            user.username, passwd.origin
                        ),
                    ));
                }
                users.insert(
                    user.username,
                    User {
                        passwords: user.passwords,
                        quotas: user.quotas,
                    },
                );
            }
        }
        Ok(Authenticator { users })
    }

    /// Checks a login at time `now`. Succeeds when `password` matches one of
    /// the user's hashes that is not past its `not_after`. Digests are
    /// compared in constant time. A user without passwords (one that only
    /// logs in with a client certificate) always gets
    /// [`LoginError::BadPassword`].
    pub fn authenticate(
        &self,
        username: &str,
        password: &[u8],
        now: SystemTime,
    ) -> Result<(), LoginError> {
        let user = self.users.get(username).ok_or(LoginError::UnknownUser)?;
        let mut expired = false;
        for stored in &user.passwords {
            if stored.hash.verify(password) {
                if stored.valid_at(now) {
                    return Ok(());
                }
                expired = true;
            }
        }
        Err(if expired {
            LoginError::Expired
        } else {
            LoginError::BadPassword
        })
    }

    /// Whether `username` is a known user (after a reload, connected
    /// clients of removed users should be disconnected).
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The quotas of `username`, if the credentials file sets any.
    pub fn quotas(&self, username: &str) -> Option<&UserQuotas> {
        self.users.get(username)?.quotas.as_ref()
    }
}

impl Acl {
    /// Loads topic rules from a mosquitto `acl_file` and/or the per-user
    /// rules of our credentials file. With no `acl_file` and no rules in the
    /// credentials file, everything is allowed ([`Acl::allow_all`]);
    /// otherwise whatever the rules do not grant is refused.
    pub fn load(
        acl_file: Option<&Path>,
        credentials_file: Option<&Path>,
    ) -> Result<Acl, AuthFileError> {
        let acl = acl_file.map(read).transpose()?;
        let creds = credentials_file.map(read).transpose()?;
        Acl::from_sources(
            acl.as_ref().map(AuthText::source),
            creds.as_ref().map(AuthText::source),
        )
    }

    fn from_sources(acl: Option<Source>, creds: Option<Source>) -> Result<Acl, AuthFileError> {
        let mut rules = match &acl {
            Some(source) => acl::parse_acl_file(source.text, source.origin)?,
            None => acl::RuleSet::default(),
        };
        let mut any_credential_rules = false;
        if let Some(source) = &creds {
            for user in credentials::parse(source.text, source.origin)? {
                if !user.rules.is_empty() {
                    any_credential_rules = true;
                    rules
                        .users
                        .entry(user.username)
                        .or_default()
                        .extend(user.rules);
                }
            }
        }
        Ok(if acl.is_none() && !any_credential_rules {
            Acl::allow_all()
        } else {
            Acl::from_rules(rules)
        })
    }
}

/// The text of an auth file (or of credentials pushed through the admin
/// API) and the name its errors use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthText {
    /// The content.
    pub text: String,
    /// Where it came from: a path, or a description.
    pub origin: String,
}

impl AuthText {
    /// Reads a file; its path names it in errors.
    pub fn read(path: &Path) -> Result<AuthText, AuthFileError> {
        read(path)
    }

    fn source(&self) -> Source<'_> {
        Source {
            text: &self.text,
            origin: &self.origin,
        }
    }
}

fn read(path: &Path) -> Result<AuthText, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(AuthText {
        text,
        origin: path.display().to_string(),
    })
}

/// Builds the authenticator and the ACL from the texts of a password
/// file, a credentials file and an ACL file (each optional).
pub fn build(
    passwd: Option<&AuthText>,
    creds: Option<&AuthText>,
    acl: Option<&AuthText>,
) -> Result<(Authenticator, Acl), AuthFileError> {
    let authenticator =
        Authenticator::from_sources(passwd.map(AuthText::source), creds.map(AuthText::source))?;
    let acl = Acl::from_sources(acl.map(AuthText::source), creds.map(AuthText::source))?;
    Ok((authenticator, acl))
}

/// The `revision` of a credentials file, if it has one. Writers that
/// replace the file (the operator) raise it with every change, so the
/// broker can tell the newer of two versions apart.
pub fn credentials_revision(creds: &AuthText) -> Result<Option<u64>, AuthFileError> {
    credentials::revision(&creds.text, &creds.origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    /// Written by Debian's `mosquitto_passwd` 2.0.11 (see `passwd.rs`).
    const FIXTURE: &str = include_str!("../../tests/fixtures/mosquitto.passwd");

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn source<'a>(text: &'a str, origin: &'a str) -> Option<Source<'a>> {
        Some(Source { text, origin })
    }

    #[test]
    fn mosquitto_password_file_logins() {
        let auth = Authenticator::from_sources(source(FIXTURE, "pw"), None).unwrap();
        let now = SystemTime::now();
        assert_eq!(auth.authenticate("alice", b"alice-pw", now), Ok(()));
        assert_eq!(auth.authenticate("bob", b"bob pw", now), Ok(()));
        assert_eq!(
            auth.authenticate("carol", "çarol-ünïcode".as_bytes(), now),
            Ok(())
        );
        assert_eq!(
            auth.authenticate("alice", b"bob pw", now),
            Err(LoginError::BadPassword)
        );
        assert_eq!(
            auth.authenticate("mallory", b"alice-pw", now),
            Err(LoginError::UnknownUser)
        );
        assert!(auth.has_user("bob"));
        assert!(!auth.has_user("Bob"));
        assert_eq!(auth.quotas("alice"), None);
    }

    /// Runs the real `mosquitto_passwd` when it is installed.
    #[test]
    fn live_mosquitto_passwd_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let run = |args: &[&str]| Command::new("mosquitto_passwd").args(args).status();
        let path = file.to_str().unwrap();
        match run(&["-c", "-b", path, "new", "n3w p@ss"]) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("mosquitto_passwd not installed; covered by the fixture tests");
                return;
            }
            status => assert!(status.unwrap().success()),
        }
        assert!(run(&["-H", "sha512", "-b", path, "old", "0ld"])
            .unwrap()
            .success());
        let auth = Authenticator::load(Some(&file), None).unwrap();
        let now = SystemTime::now();
        assert_eq!(auth.authenticate("new", b"n3w p@ss", now), Ok(()));
        assert_eq!(auth.authenticate("old", b"0ld", now), Ok(()));
        assert_eq!(
            auth.authenticate("new", b"0ld", now),
            Err(LoginError::BadPassword)
        );
    }

    #[test]
    fn rotation_with_not_after() {
        let old = hash_password("old").unwrap();
        let new = hash_password("new").unwrap();
        let creds = format!(
            "[[users]]\nusername = \"dev-1\"\n\
             [[users.passwords]]\nhash = \"{new}\"\n\
             [[users.passwords]]\nhash = \"{old}\"\nnot_after = \"2026-11-25T12:00:00Z\"\n\
             [users.quotas]\nmax_subscriptions = 10\n"
        );
        let auth = Authenticator::from_sources(None, source(&creds, "creds")).unwrap();
        let deadline = 1_795_608_000;
        for now in [at(deadline - 3600), at(deadline)] {
            assert_eq!(auth.authenticate("dev-1", b"old", now), Ok(()));
            assert_eq!(auth.authenticate("dev-1", b"new", now), Ok(()));
        }
        let later = at(deadline + 1);
        assert_eq!(
            auth.authenticate("dev-1", b"old", later),
            Err(LoginError::Expired)
        );
        assert_eq!(auth.authenticate("dev-1", b"new", later), Ok(()));
        assert_eq!(
            auth.authenticate("dev-1", b"neither", later),
            Err(LoginError::BadPassword)
        );
        let quotas = auth.quotas("dev-1").unwrap();
        assert_eq!(quotas.max_subscriptions.map(|n| n.get()), Some(10));
    }

    #[test]
    fn both_files_combine_but_may_not_share_a_user() {
        let creds = format!(
            "[[users]]\nusername = \"dave\"\npasswords = [{{ hash = \"{}\" }}]\n",
            hash_password("d").unwrap()
        );
        let auth =
            Authenticator::from_sources(source(FIXTURE, "pw"), source(&creds, "creds")).unwrap();
        assert!(auth.has_user("alice") && auth.has_user("dave"));

        let clash = creds.replace("dave", "alice");
        let error = Authenticator::from_sources(source(FIXTURE, "pw"), source(&clash, "creds"))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "creds:2: user `alice` is also defined in pw");
    }

    #[test]
    fn user_without_passwords_cannot_log_in_with_one() {
        let creds = "[[users]]\nusername = \"cert-only\"\n[users.quotas]\nconnections = 1\n";
        let auth = Authenticator::from_sources(None, source(creds, "creds")).unwrap();
        assert!(auth.has_user("cert-only"));
        assert_eq!(
            auth.authenticate("cert-only", b"", SystemTime::now()),
            Err(LoginError::BadPassword)
        );
        assert!(auth.quotas("cert-only").is_some());
    }

    #[test]
    fn no_files_means_no_users() {
        let auth = Authenticator::load(None, None).unwrap();
        assert_eq!(
            auth.authenticate("alice", b"alice-pw", SystemTime::now()),
            Err(LoginError::UnknownUser)
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let error = Authenticator::load(Some(Path::new("/nonexistent/pw")), None).unwrap_err();
        assert!(matches!(error, AuthFileError::Read { .. }));
        assert!(error
            .to_string()
            .starts_with("cannot read /nonexistent/pw: "));
        let error = Acl::load(None, Some(Path::new("/nonexistent/creds"))).unwrap_err();
        assert!(matches!(error, AuthFileError::Read { .. }));
    }

    #[test]
    fn acl_without_rules_allows_all() {
        let creds = format!(
            "[[users]]\nusername = \"u\"\npasswords = [{{ hash = \"{}\" }}]\n",
            hash_password("p").unwrap()
        );
        for acl in [
            Acl::load(None, None).unwrap(),
            Acl::from_sources(None, source(&creds, "creds")).unwrap(),
        ] {
            let client = acl.client(Some("u"), "c");
            assert!(client.can_publish("any/topic"));
            assert!(client.can_subscribe("#"));
        }
    }

    #[test]
    fn credentials_rules_join_the_acl_file() {
        let hash = hash_password("p").unwrap();
        let creds = format!(
            "[[users]]\nusername = \"dev-1\"\npasswords = [{{ hash = \"{hash}\" }}]\n\
             [[users.acl]]\naction = \"publish\"\ntopic = \"devices/%u/#\"\nallow = true\n\
             [[users.acl]]\naction = \"subscribe\"\ntopic = \"cmd/%c\"\nallow = true\n\
             [[users.acl]]\naction = \"publish\"\ntopic = \"devices/%u/locked\"\nallow = false\n\
             [[users.acl]]\naction = \"subscribe\"\ntopic = \"devices/%u/locked\"\nallow = true\n"
        );
        let acl_text = "user dev-1\ntopic read config/#\ntopic deny config/secret\n";

        let only_creds = Acl::from_sources(None, source(&creds, "creds")).unwrap();
        let dev = only_creds.client(Some("dev-1"), "box-9");
        assert!(dev.can_publish("devices/dev-1/temp"));
        assert!(!dev.can_publish("devices/dev-2/temp"));
        assert!(!dev.can_publish("devices/dev-1/locked"), "deny rule");
        assert!(
            dev.can_receive("devices/dev-1/locked"),
            "deny was publish only"
        );
        assert!(
            !dev.can_subscribe("devices/dev-1/#"),
            "publish grants no read"
        );
        assert!(dev.can_subscribe("cmd/box-9"));
        assert!(!dev.can_publish("cmd/box-9"));
        let other = only_creds.client(Some("dev-2"), "c");
        assert!(
            !other.can_publish("devices/dev-2/temp"),
            "rules exist: deny by default"
        );
        assert!(!only_creds.client(None, "c").can_publish("devices/x"));

        let both = Acl::from_sources(source(acl_text, "acl"), source(&creds, "creds")).unwrap();
        let dev = both.client(Some("dev-1"), "box-9");
        assert!(dev.can_publish("devices/dev-1/temp"));
        assert!(dev.can_subscribe("config/#"));
        assert!(!dev.can_receive("config/secret"));

        let sneaky = only_creds.client(Some("dev-1"), "+");
        assert!(
            !sneaky.can_publish("devices/dev-1/temp"),
            "unsafe client id"
        );
    }

    #[test]
    fn errors_display_file_and_line() {
        let error =
            Acl::from_sources(source("topic read\ntopic x y\n", "/etc/acl"), None).unwrap_err();
        assert!(matches!(
            error,
            AuthFileError::Invalid { line: Some(2), .. }
        ));
        let no_line = AuthFileError::invalid("f", None, "broken");
        assert_eq!(no_line.to_string(), "f: broken");
    }
}
