//! Who may connect and what each client may do (`[auth]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Authentication and authorization files (`[auth]`). Each file is
/// re-read when it changes on disk (checked every `reload_interval_secs`)
/// and on SIGHUP; a file that fails to parse is refused with a log line and
/// the previous contents stay in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A mosquitto password file (`mosquitto_passwd` output, `$7$` and `$6$`
    /// hashes), used unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// KubeMQTT's credentials file (TOML): users with several password
    /// hashes, each optionally valid only until `not_after`, per-user quotas
    /// and ACL rules. See docs/auth.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A mosquitto `acl_file`, used unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
    /// How often the files (and `broker.toml` itself) are checked for
    /// changes, in seconds. Default: 2.
    #[serde(default = "default_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// Which clients that log in with a certificate (a TLS listener with
    /// `username_from`) are let in: `any` (default, as mosquitto's
    /// `use_identity_as_username`) or `known`: only when the certificate's
    /// user name is a user of the password or credentials file, so that
    /// removing the user revokes the certificate too.
    #[serde(default)]
    pub certificate_users: CertificateUsers,
    /// Device fleets (`[[auth.fleets]]`): devices that log in with a
    /// fleet's certificates, derived passwords, JWTs or HTTP hook, with
    /// nothing stored per device. See docs/fleets.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleets: Vec<crate::auth::fleet::FleetConfig>,
    /// A directory of fleet files: each `*.toml` in it holds one fleet (the
    /// keys of an `[[auth.fleets]]` table), with paths relative to the
    /// directory. Re-read when its files change; fleets come and go
    /// without a restart (the operator mounts its fleets Secret here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleets_dir: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            credentials_file: None,
            acl_file: None,
            reload_interval_secs: default_reload_interval_secs(),
            certificate_users: CertificateUsers::Any,
            fleets: Vec::new(),
            fleets_dir: None,
        }
    }
}

/// Which certificate-authenticated clients are let in (`auth.certificate_users`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateUsers {
    /// Every client with a certificate the CA signed.
    #[default]
    Any,
    /// Only those whose certificate names a known user.
    Known,
}

fn default_reload_interval_secs() -> u64 {
    2
}
