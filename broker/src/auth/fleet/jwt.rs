//! JWT fleets: the device's password is a JSON Web Token signed by a key
//! of the fleet (RSA, EC or Ed25519 public keys, or an HMAC secret in a
//! JWKS). Keys come from a file (JWKS JSON or PEM) or a JWKS URL, fetched
//! and cached. The token's claims give the device id and, optionally, the
//! device's own topic rules; `exp` is required and enforced at login.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;

use super::config::JwtSettings;
use super::hook::http_client;
use super::Refused;
use crate::auth::acl::{Rule, READ, WRITE};
use crate::auth::AuthFileError;
use crate::topic;

/// A token whose `kid` is unknown fetches the JWKS URL again at most this
/// often.
const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Verification keys: by `kid`, and those without one.
#[derive(Default)]
pub(crate) struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    anonymous: Vec<DecodingKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("keys", &self.len()).finish()
    }
}

impl Keys {
    fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Parses a JWKS document or PEM public keys; `origin` names the
    /// source in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Keys, AuthFileError> {
        let invalid = |message: String| AuthFileError::Invalid {
            file: origin.to_owned(),
            line: None,
            message,
        };
        let mut keys = Keys::default();
        if text.trim_start().starts_with('{') {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| invalid(format!("not a JWKS document: {e}")))?;
            for (index, jwk) in set.keys.iter().enumerate() {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| invalid(format!("key {index} of the JWKS: {e}")))?;
                match &jwk.common.key_id {
                    Some(kid) => {
                        keys.by_kid.insert(kid.clone(), key);
                    }
                    None => keys.anonymous.push(key),
                }
            }
        } else {
            for block in pem_blocks(text) {
                let bytes = block.as_bytes();
                let key = DecodingKey::from_rsa_pem(bytes)
                    .or_else(|_| DecodingKey::from_ec_pem(bytes))
                    .or_else(|_| DecodingKey::from_ed_pem(bytes))
                    .map_err(|_| {
                        invalid("a PEM block is not an RSA, EC or Ed25519 public key".to_owned())
                    })?;
                keys.anonymous.push(key);
            }
        }
        if keys.len() == 0 {
            return Err(invalid("holds no key".to_owned()));
        }
        Ok(keys)
    }

    /// The keys that may have signed a token with `kid` and `alg`.
    fn candidates<'a>(
        &'a self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        let named = kid.and_then(|kid| self.by_kid.get(kid));
        let all: Box<dyn Iterator<Item = &DecodingKey>> = match (kid, named) {
            (Some(_), Some(key)) => Box::new(std::iter::once(key)),
            (Some(_), None) => Box::new(std::iter::empty()),
            (None, _) => Box::new(self.anonymous.iter().chain(self.by_kid.values())),
        };
        all.filter(move |key| key.family() == alg.family())
    }
}

/// Checks verification keys (a JWKS document or PEM public keys) as the
/// broker reads them; returns how many there are. `origin` names them in
/// errors.
pub fn check_keys(text: &str, origin: &str) -> Result<usize, AuthFileError> {
    Keys::parse(text, origin).map(|keys| keys.len())
}

/// The PEM blocks of a text, each with its BEGIN and END lines.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = &mut current {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ") {
            blocks.extend(current.take());
        }
    }
    blocks
}

/// Keys fetched from a JWKS URL, kept for the refresh interval.
pub(crate) struct JwksUrl {
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    cached: Mutex<Option<(Instant, Arc<Keys>)>>,
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksUrl {
    /// The keys, fetched when none are cached, when they are older than
    /// the refresh interval, or when `unknown_kid` (at most every
    /// [`MIN_REFETCH`]). A failed fetch keeps the keys already cached.
    async fn keys(&self, unknown_kid: bool) -> Result<Arc<Keys>, String> {
        let fresh = |cached: &Option<(Instant, Arc<Keys>)>| match cached {
            Some((at, keys)) if at.elapsed() < self.refresh && !unknown_kid => Some(keys.clone()),
            _ => None,
        };
        if let Some(keys) = fresh(&self.cached.lock()) {
            return Ok(keys);
        }
        let _one = self.fetching.lock().await;
        if let Some(keys) = fresh(&self.cached.lock()) {
            return Ok(keys);
        }
        let stale = self.cached.lock().as_ref().map(|(_, keys)| keys.clone());
        let recently = self
            .last_fetch
            .lock()
            .is_some_and(|at| at.elapsed() < MIN_REFETCH);
        if let (Some(keys), true) = (&stale, recently) {
            return Ok(keys.clone());
        }
        *self.last_fetch.lock() = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *self.cached.lock() = Some((Instant::now(), keys.clone()));
                Ok(keys)
            }
            Err(e) => stale.ok_or(e),
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {}: {e}", self.url))?;
        if !response.status().is_success() {
            return Err(format!("{} answered {}", self.url, response.status()));
        }
        let text = response
            .text()
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.url))?;
        Keys::parse(&text, &self.url).map_err(|e| e.to_string())
    }
}

/// Where a JWT fleet's keys come from.
enum KeySource {
    File(Keys),
    Url(Arc<JwksUrl>),
}

/// What a JWT fleet checks tokens with.
pub(crate) struct JwtVerifier {
    keys: KeySource,
    settings: JwtSettings,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedToken {
    pub(crate) device_id: String,
    pub(crate) expires_at: SystemTime,
    pub(crate) rules: Vec<Rule>,
}

impl JwtVerifier {
    /// Reads the keys file, or prepares the JWKS URL client (reusing
    /// `previous`' cache when the settings did not change).
    pub(crate) fn load(
        settings: &JwtSettings,
        previous: Option<&JwtVerifier>,
    ) -> Result<JwtVerifier, AuthFileError> {
        let keys = match (&settings.keys_file, &settings.jwks_url) {
            (Some(path), _) => KeySource::File(read_keys(path)?),
            (None, Some(url)) => match previous.map(|p| (&p.keys, &p.settings)) {
                Some((KeySource::Url(cached), old)) if old == settings => {
                    KeySource::Url(cached.clone())
                }
                _ => KeySource::Url(Arc::new(JwksUrl {
                    url: url.clone(),
                    client: http_client(settings.jwks_ca_file.as_deref(), Duration::from_secs(10))?,
                    refresh: Duration::from_secs(settings.jwks_refresh_secs),
                    cached: Mutex::new(None),
                    last_fetch: Mutex::new(None),
                    fetching: tokio::sync::Mutex::new(()),
                })),
            },
            (None, None) => {
                return Err(AuthFileError::Invalid {
                    file: "broker.toml".to_owned(),
                    line: None,
                    message: "a JWT fleet needs keys_file or jwks_url".to_owned(),
                })
            }
        };
        Ok(JwtVerifier {
            keys,
            settings: settings.clone(),
        })
    }

    pub(crate) fn disconnect_at_expiry(&self) -> bool {
        self.settings.disconnect_at_expiry
    }

    /// Verifies `token` at `now`. `Err` carries a refusal and, for the
    /// log, what went wrong.
    pub(crate) async fn verify(
        &self,
        token: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedToken, (Refused, String)> {
        let token = std::str::from_utf8(token)
            .map_err(|_| (Refused::Malformed, "the token is not UTF-8".to_owned()))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| (Refused::Malformed, format!("not a JWT: {e}")))?;
        let kid = header.kid.as_deref();
        let claims = match &self.keys {
            KeySource::File(keys) => self.check(keys, token, header.alg, kid, now),
            KeySource::Url(url) => {
                let keys = url
                    .keys(false)
                    .await
                    .map_err(|e| (Refused::Unavailable, e))?;
                match self.check(&keys, token, header.alg, kid, now) {
                    Err((Refused::UnknownKey, _)) => {
                        let keys = url
                            .keys(true)
                            .await
                            .map_err(|e| (Refused::Unavailable, e))?;
                        self.check(&keys, token, header.alg, kid, now)
                    }
                    other => other,
                }
            }
        }?;
        self.claims(claims)
    }

    fn check(
        &self,
        keys: &Keys,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        now: SystemTime,
    ) -> Result<serde_json::Map<String, serde_json::Value>, (Refused, String)> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        // jsonwebtoken reads the system clock; its leeway is the only
        // skew it allows. Tests pass a `now` to check expiry themselves.
        validation.validate_exp = false;
        match &self.settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let mut last = (
            Refused::UnknownKey,
            format!("no key for kid {kid:?} and {alg:?}"),
        );
        for key in keys.candidates(kid, alg) {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &validation,
            ) {
                Ok(data) => {
                    let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64);
                    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    return match exp {
                        None => Err((Refused::Malformed, "no numeric exp claim".to_owned())),
                        Some(exp) if exp + self.settings.leeway_secs < now_secs => {
                            Err((Refused::Expired, format!("expired at {exp}")))
                        }
                        Some(_) => Ok(data.claims),
                    };
                }
                Err(e) => last = map_error(e),
            }
        }
        Err(last)
    }

    fn claims(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<VerifiedToken, (Refused, String)> {
        let claim = &self.settings.device_id_claim;
        let device_id = match claims.get(claim) {
            Some(serde_json::Value::String(id)) if !id.is_empty() => id.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return Err((
                    Refused::Malformed,
                    format!("no device id in claim `{claim}`"),
                ))
            }
        };
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let rules = match &self.settings.rules_claim {
            Some(name) => match claims.get(name) {
                Some(value) => rules_from_claim(value).map_err(|e| (Refused::Malformed, e))?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        Ok(VerifiedToken {
            device_id,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            rules,
        })
    }
}

fn read_keys(path: &Path) -> Result<Keys, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Keys::parse(&text, &path.display().to_string())
}

fn map_error(error: jsonwebtoken::errors::Error) -> (Refused, String) {
    use jsonwebtoken::errors::ErrorKind;
    let refused = match error.kind() {
        ErrorKind::InvalidSignature => Refused::BadSignature,
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Refused::Expired,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::InvalidSubject => {
            Refused::Denied
        }
        ErrorKind::InvalidAlgorithm => Refused::UnknownKey,
        _ => Refused::Malformed,
    };
    (refused, error.to_string())
}

/// `{"publish": [filters], "subscribe": [filters]}` as grant rules.
fn rules_from_claim(value: &serde_json::Value) -> Result<Vec<Rule>, String> {
    let object = value
        .as_object()
        .ok_or("the rules claim is not an object")?;
    let mut rules = Vec::new();
    for (action, access) in [("publish", WRITE), ("subscribe", READ)] {
        let Some(filters) = object.get(action) else {
            continue;
        };
        let filters = filters
            .as_array()
            .ok_or(format!("`{action}` in the rules claim is not a list"))?;
        for filter in filters {
            let filter = filter
                .as_str()
                .filter(|f| topic::valid_topic_filter(f))
                .ok_or(format!(
                    "`{action}` holds an invalid topic filter: {filter}"
                ))?;
            rules.push(Rule {
                filter: filter.to_owned(),
                access,
                allow: true,
                substitute: filter.contains('%'),
            });
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests;
