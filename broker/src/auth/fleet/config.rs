//! The `[[auth.fleets]]` tables of `broker.toml`: one per device fleet.
//!
//! ```toml
//! [[auth.fleets]]
//! name = "sensors"
//! mode = "derived"                 # certificate | derived | jwt | hook
//! username = "%d@sensors"          # which CONNECT user names are this fleet's devices
//! revocation_file = "/etc/kubemqtt/fleets/sensors/revoked"
//! [auth.fleets.quotas]
//! connections = 1
//! [[auth.fleets.acl]]
//! action = "publish"
//! topic = "sensors/%d/#"
//! [auth.fleets.derived]
//! secret_file = "/etc/kubemqtt/fleets/sensors/secret"
//! replay_window_secs = 300
//! ```
//!
//! Documented for operators in docs/configuration.md and docs/fleets.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::{AuthFileError, UserQuotas};
use crate::topic;

use super::username::UsernameTemplate;

/// One device fleet (`[[auth.fleets]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The fleet's name: in metrics, logs and the operator's resources.
    /// Letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// How the fleet's devices prove who they are.
    pub mode: FleetMode,
    /// Which CONNECT user names belong to this fleet: a template where `%d`
    /// stands for the device id, e.g. `%d@sensors` or `sensors/%d`; without
    /// `%d`, one literal user name shared by the fleet's devices (JWT and
    /// hook fleets, whose device id comes from the token or the registry).
    /// Required by `derived` (with `%d`), `jwt` and `hook`; a `certificate`
    /// fleet is recognised by its CA and takes no user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Revoked devices: one per line, `device <id>` (or just the id) or
    /// `serial <hex>` (certificate fleets); `#` starts a comment. Re-read
    /// when it changes; connected devices it names are disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_file: Option<PathBuf>,
    /// Limits per device, as `[users.quotas]` of the credentials file;
    /// `connections` counts per device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<UserQuotas>,
    /// Topic rules of every device (an ACL template): `%d` is the device
    /// id, `%u` the user name, `%c` the client id. Without rules a device
    /// may use every topic (but `$SYS`), as without an ACL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<FleetRule>,
    /// `mode = "certificate"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSettings>,
    /// `mode = "derived"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived: Option<DerivedSettings>,
    /// `mode = "jwt"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSettings>,
    /// `mode = "hook"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookSettings>,
}

/// How a fleet's devices log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetMode {
    /// Client certificates signed by the fleet's CA.
    Certificate,
    /// Passwords signed with a per-device secret derived from the fleet's.
    Derived,
    /// A JSON Web Token as the password.
    Jwt,
    /// The team's device registry answers over HTTP.
    Hook,
}

impl FleetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetMode::Certificate => "certificate",
            FleetMode::Derived => "derived",
            FleetMode::Jwt => "jwt",
            FleetMode::Hook => "hook",
        }
    }
}

/// One topic rule of a fleet's ACL template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRule {
    /// `publish`, `subscribe` (and receive) or `all`.
    pub action: RuleAction,
    /// A topic filter; `%d`, `%u` and `%c` are substituted per device.
    pub topic: String,
    /// Grant (default) or deny.
    #[serde(default = "default_true")]
    pub allow: bool,
}

/// What a fleet rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Publish,
    Subscribe,
    All,
}

/// `[auth.fleets.certificate]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSettings {
    /// PEM bundle of the fleet's CA certificates (several during a CA
    /// rotation). The TLS listener's `ca_file` must hold them too.
    pub ca_file: PathBuf,
    /// Where the device id is: `cn` (subject common name, default) or
    /// `san` (first DNS, e-mail or URI subject alternative name).
    #[serde(default)]
    pub device_id_from: DeviceIdFrom,
}

/// Where a certificate carries the device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceIdFrom {
    #[default]
    Cn,
    San,
}

/// `[auth.fleets.derived]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedSettings {
    /// The fleet secret (at least 32 bytes; a trailing newline is ignored).
    pub secret_file: PathBuf,
    /// The fleet secret being rotated out: devices whose secret was
    /// derived from it still log in until this is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_file: Option<PathBuf>,
    /// How old (or how far ahead of the broker's clock) a signed login may
    /// be, in seconds; an older one is refused as replayed. Default: 300.
    #[serde(default = "default_replay_window_secs")]
    pub replay_window_secs: u64,
}

/// `[auth.fleets.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// Verification keys: a JWKS document (JSON) or PEM public keys (RSA,
    /// EC, Ed25519). One of `keys_file` and `jwks_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<PathBuf>,
    /// A JWKS URL, fetched at the first login and kept for
    /// `jwks_refresh_secs` (a token whose `kid` is unknown fetches it
    /// again, at most once per 10 seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM CA bundle to verify an `https` JWKS URL; default: none trusted
    /// but this file, so it is required for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    /// How long fetched keys are used before they are fetched again, in
    /// seconds. Default: 300.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// The claim holding the device id. Default: `sub`.
    #[serde(default = "default_device_id_claim")]
    pub device_id_claim: String,
    /// A claim with the device's own topic rules:
    /// `{"publish": [filters], "subscribe": [filters]}`; checked before the
    /// fleet's ACL template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_claim: Option<String>,
    /// Required `iss`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default: 30.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Disconnect a device when its token expires (5.0: DISCONNECT 0xA0
    /// Maximum connect time). Default: false (checked at login only).
    #[serde(default)]
    pub disconnect_at_expiry: bool,
}

/// `[auth.fleets.hook]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSettings {
    /// Where logins are checked: `POST` with a JSON body (docs/fleets.md).
    pub url: String,
    /// Where each publish and subscribe topic is checked; without it only
    /// the ACL template applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_url: Option<String>,
    /// A file holding the bearer token sent with every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that an `https` registry's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long the registry may take to answer, in milliseconds.
    /// Default: 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an answer is reused without asking again, in seconds.
    /// Default: 60. 0: ask every time (answers are still kept for
    /// `when_down = "allow_cached"`).
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// How many answers are kept. Default: 100000.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// When the registry does not answer (timeout, connection refused, a
    /// 5xx): `deny` (default; logins get CONNACK 0x88 Server unavailable)
    /// or `allow_cached` (what the registry last allowed stays allowed).
    #[serde(default)]
    pub when_down: WhenDown,
}

/// The answer when the registry is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenDown {
    #[default]
    Deny,
    AllowCached,
}

fn default_true() -> bool {
    true
}
fn default_replay_window_secs() -> u64 {
    300
}
fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_device_id_claim() -> String {
    "sub".to_owned()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_cache_ttl_secs() -> u64 {
    60
}
fn default_cache_size() -> usize {
    100_000
}

/// A rule the schema cannot express: the key (under `auth.fleets[i]`) and
/// what is wrong.
pub type FleetConfigError = (String, String);

impl FleetConfig {
    /// Every file the fleet names, to watch for changes.
    pub fn files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = Vec::new();
        files.extend(self.revocation_file.as_deref());
        if let Some(c) = &self.certificate {
            files.push(&c.ca_file);
        }
        if let Some(d) = &self.derived {
            files.push(&d.secret_file);
            files.extend(d.previous_secret_file.as_deref());
        }
        if let Some(j) = &self.jwt {
            files.extend(j.keys_file.as_deref());
            files.extend(j.jwks_ca_file.as_deref());
        }
        if let Some(h) = &self.hook {
            files.extend(h.token_file.as_deref());
            files.extend(h.ca_file.as_deref());
        }
        files
    }

    /// The user name template, parsed (validated by [`validate`]).
    pub(crate) fn username_template(&self) -> Option<UsernameTemplate> {
        self.username.as_deref().and_then(UsernameTemplate::parse)
    }

    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<(), FleetConfigError> {
        let err = |field: &str, message: String| Err((key(field), message));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return err(
                "name",
                format!(
                    "`{}`: a fleet name is letters, digits, `-`, `_` and `.`",
                    self.name
                ),
            );
        }
        let sections = [
            (FleetMode::Certificate, self.certificate.is_some()),
            (FleetMode::Derived, self.derived.is_some()),
            (FleetMode::Jwt, self.jwt.is_some()),
            (FleetMode::Hook, self.hook.is_some()),
        ];
        for (mode, present) in sections {
            if mode == self.mode && !present {
                return err(
                    "mode",
                    format!(
                        "mode = \"{0}\" needs an [auth.fleets.{0}] table",
                        mode.as_str()
                    ),
                );
            }
            if mode != self.mode && present {
                return err(
                    mode.as_str(),
                    format!(
                        "an [auth.fleets.{}] table does not go with mode = \"{}\"",
                        mode.as_str(),
                        self.mode.as_str()
                    ),
                );
            }
        }
        match (&self.username, self.mode) {
            (Some(_), FleetMode::Certificate) => {
                return err(
                    "username",
                    "a certificate fleet is recognised by its CA: it takes no user name \
                     (the device id comes from the certificate)"
                        .to_owned(),
                )
            }
            (None, FleetMode::Certificate) => {}
            (None, mode) => {
                return err(
                    "username",
                    format!(
                        "a {} fleet needs a user name template, e.g. \"%d@{}\"",
                        mode.as_str(),
                        self.name
                    ),
                )
            }
            (Some(text), mode) => {
                let Some(template) = UsernameTemplate::parse(text) else {
                    return err(
                        "username",
                        format!(
                            "`{text}`: at most one `%d`, and text around it \
                             (a bare `%d` would claim every user name)"
                        ),
                    );
                };
                if mode == FleetMode::Derived && !template.has_device() {
                    return err(
                        "username",
                        format!(
                            "`{text}`: a derived fleet takes the device id from the user \
                             name, so the template needs `%d`"
                        ),
                    );
                }
            }
        }
        for (index, rule) in self.acl.iter().enumerate() {
            if !topic::valid_topic_filter(&rule.topic) {
                return err(
                    &format!("acl[{index}].topic"),
                    format!("invalid topic filter `{}`", rule.topic),
                );
            }
        }
        if let Some(d) = &self.derived {
            if d.replay_window_secs == 0 {
                return err("derived.replay_window_secs", "must be above 0".to_owned());
            }
        }
        if let Some(j) = &self.jwt {
            match (&j.keys_file, &j.jwks_url) {
                (Some(_), Some(_)) | (None, None) => {
                    return err(
                        "jwt.keys_file",
                        "set one of keys_file and jwks_url".to_owned(),
                    )
                }
                (None, Some(url)) if !is_http_url(url) => {
                    return err(
                        "jwt.jwks_url",
                        format!("`{url}` is not an http:// or https:// URL"),
                    )
                }
                _ => {}
            }
            if j.device_id_claim.is_empty() {
                return err("jwt.device_id_claim", "must not be empty".to_owned());
            }
        }
        if let Some(h) = &self.hook {
            for (field, url) in [
                ("hook.url", Some(&h.url)),
                ("hook.acl_url", h.acl_url.as_ref()),
            ] {
                if let Some(url) = url.filter(|url| !is_http_url(url)) {
                    return err(field, format!("`{url}` is not an http:// or https:// URL"));
                }
            }
            if h.timeout_ms == 0 {
                return err("hook.timeout_ms", "must be above 0".to_owned());
            }
            if h.cache_size == 0 {
                return err("hook.cache_size", "must be above 0".to_owned());
            }
        }
        Ok(())
    }
}

impl FleetConfig {
    /// Makes relative paths relative to `dir` (fleet files of a
    /// `fleets_dir` name their files next to them).
    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        let optional = |path: &mut Option<PathBuf>| path.iter_mut().for_each(resolve);
        optional(&mut self.revocation_file);
        if let Some(c) = &mut self.certificate {
            resolve(&mut c.ca_file);
        }
        if let Some(d) = &mut self.derived {
            resolve(&mut d.secret_file);
            optional(&mut d.previous_secret_file);
        }
        if let Some(j) = &mut self.jwt {
            optional(&mut j.keys_file);
            optional(&mut j.jwks_ca_file);
        }
        if let Some(h) = &mut self.hook {
            optional(&mut h.token_file);
            optional(&mut h.ca_file);
        }
    }
}

/// The `*.toml` files of a fleets directory, sorted by name. A missing
/// directory has none (an optional Secret volume that is not there yet).
pub fn dir_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "toml")
                && !path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Parses one fleet file (the keys of an `[[auth.fleets]]` table at the
/// top level); relative paths in it are relative to its directory.
pub fn parse_fleet_file(path: &Path) -> Result<FleetConfig, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let mut fleet: FleetConfig = serde_path_to_error::deserialize(toml::Deserializer::new(&text))
        .map_err(|error| {
        let key = error.path().to_string();
        let inner = error.into_inner();
        let line = inner.span().map(|span| line_at(&text, span.start));
        let message = inner.message().lines().next().unwrap_or("").to_owned();
        let message = if key == "." {
            message
        } else {
            format!("key `{key}`: {message}")
        };
        AuthFileError::Invalid {
            file: origin.clone(),
            line,
            message,
        }
    })?;
    if let Some(dir) = path.parent() {
        fleet.resolve_paths(dir);
    }
    Ok(fleet)
}

fn line_at(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// Every fleet of `[auth]`: the `[[auth.fleets]]` tables, then the files of
/// `auth.fleets_dir`, checked together (names and user names unique). An
/// error names the fleet file it is in.
pub fn all_fleets(
    tables: &[FleetConfig],
    dir: Option<&Path>,
) -> Result<Vec<FleetConfig>, AuthFileError> {
    let mut fleets = tables.to_vec();
    let mut origins = vec![None; fleets.len()];
    for path in dir.map(dir_files).unwrap_or_default() {
        fleets.push(parse_fleet_file(&path)?);
        origins.push(Some(path));
    }
    validate(&fleets).map_err(|(key, message)| {
        let index = key
            .strip_prefix("auth.fleets[")
            .and_then(|rest| rest.split(']').next())
            .and_then(|n| n.parse::<usize>().ok());
        match index.and_then(|i| origins.get(i).cloned().flatten()) {
            Some(path) => {
                let field = key.split_once("].").map_or("", |(_, field)| field);
                AuthFileError::Invalid {
                    file: path.display().to_string(),
                    line: None,
                    message: format!("key `{field}`: {message}"),
                }
            }
            None => AuthFileError::Invalid {
                file: "broker.toml".to_owned(),
                line: None,
                message: format!("key `{key}`: {message}"),
            },
        }
    })?;
    Ok(fleets)
}

/// Every file to watch for the fleets of `[auth]`: the tables' files, the
/// fleet files of the directory and the files they name, and the
/// directory's revision file.
pub fn watched_files(tables: &[FleetConfig], dir: Option<&Path>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = tables
        .iter()
        .flat_map(|f| f.files())
        .map(Path::to_owned)
        .collect();
    for path in dir.map(dir_files).unwrap_or_default() {
        if let Ok(fleet) = parse_fleet_file(&path) {
            files.extend(fleet.files().into_iter().map(Path::to_owned));
        }
        files.push(path);
    }
    if let Some(dir) = dir {
        files.push(dir.join(super::pushed::REVISION_FILE));
    }
    files
}

fn is_http_url(url: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme))
}

/// Checks every fleet and that no two claim the same name or user names.
/// Keys are full paths, e.g. `auth.fleets[1].username`.
pub fn validate(fleets: &[FleetConfig]) -> Result<(), FleetConfigError> {
    for (index, fleet) in fleets.iter().enumerate() {
        let key = |field: &str| format!("auth.fleets[{index}].{field}");
        fleet.check(&key)?;
        for (other_index, other) in fleets.iter().enumerate().take(index) {
            if other.name == fleet.name {
                return Err((
                    key("name"),
                    format!(
                        "fleet `{}` is already defined in auth.fleets[{other_index}]",
                        fleet.name
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (fleet.username_template(), other.username_template()) {
                if a.overlaps(&b) {
                    return Err((
                        key("username"),
                        format!(
                            "`{}` can name the same users as fleet `{}` (`{}`)",
                            fleet.username.as_deref().unwrap_or_default(),
                            other.name,
                            other.username.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
