//! HTTP hook fleets: the team's own device registry answers whether a login,
//! and each topic a device publishes or subscribes to, is allowed.
//!
//! Requests are `POST` with a JSON body and `Authorization: Bearer <token>`
//! when a token file is set:
//!
//! ```text
//! login:  {"fleet", "username", "client_id", "password", "device_id" (from
//!          the user name template, or null), "peer" ("address:port")}
//! topics: {"fleet", "device_id", "username", "client_id",
//!          "action" ("publish" | "subscribe"), "topic"}
//! ```
//!
//! The registry answers 200 with `{"result": "allow"}` or `{"result":
//! "deny"}` (a login may add `"device_id"`), or 401/403 for deny. Anything
//! else (a timeout, a refused connection, a 5xx, an unreadable body) means
//! the registry is down: then `when_down` decides: `deny` (logins get 0x88
//! Server unavailable, topics are refused) or `allow_cached` (what the
//! registry last allowed stays allowed). Answers are cached, bounded, and
//! reused for `cache_ttl_secs`; a login's cache key is a SHA-256 over the
//! user name, client id and password (no password is kept).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cache::BoundedCache;
use super::config::{HookSettings, WhenDown};
use super::{Refused, TopicAction};
use crate::auth::AuthFileError;

/// An HTTP client trusting only `ca_file` (none: plain http, or https to
/// nobody), with the ring provider.
pub(crate) fn http_client(
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, AuthFileError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let invalid = |message: String| AuthFileError::Invalid {
            file: path.display().to_string(),
            line: None,
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| invalid(format!("cannot read the CA bundle: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("holds no CA certificate".to_owned()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| AuthFileError::Invalid {
            file: "broker.toml".to_owned(),
            line: None,
            message: format!("HTTP client: {e}"),
        })
}

#[derive(Debug, Clone)]
struct LoginAnswer {
    allowed: bool,
    device_id: Option<Arc<str>>,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct TopicAnswer {
    allowed: bool,
    at: Instant,
}

/// A login to ask the registry about.
pub(crate) struct HookLogin<'a> {
    pub(crate) fleet: &'a str,
    pub(crate) username: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) password: &'a [u8],
    pub(crate) device_id: Option<&'a str>,
    pub(crate) peer: SocketAddr,
}

/// A topic to ask the registry about.
pub(crate) struct HookTopic<'a> {
    pub(crate) fleet: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) username: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) action: TopicAction,
    pub(crate) topic: &'a str,
}

#[derive(Serialize)]
struct LoginBody<'a> {
    fleet: &'a str,
    username: &'a str,
    client_id: &'a str,
    password: std::borrow::Cow<'a, str>,
    device_id: Option<&'a str>,
    peer: String,
}

#[derive(Serialize)]
struct TopicBody<'a> {
    fleet: &'a str,
    device_id: &'a str,
    username: &'a str,
    client_id: &'a str,
    action: &'a str,
    topic: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    result: AnswerResult,
    #[serde(default)]
    device_id: Option<String>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum AnswerResult {
    Allow,
    Deny,
}

/// The registry of a hook fleet, with its caches.
pub(crate) struct Hook {
    settings: HookSettings,
    token: Option<String>,
    client: reqwest::Client,
    logins: BoundedCache<[u8; 32], LoginAnswer>,
    topics: BoundedCache<[u8; 32], TopicAnswer>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("url", &self.settings.url)
            .finish()
    }
}

impl Hook {
    /// Reads the token and CA files and builds the client.
    pub(crate) fn load(settings: &HookSettings) -> Result<Hook, AuthFileError> {
        let token = settings
            .token_file
            .as_deref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|text| text.trim().to_owned())
                    .map_err(|source| AuthFileError::Read {
                        path: path.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        Ok(Hook {
            token,
            client: http_client(
                settings.ca_file.as_deref(),
                Duration::from_millis(settings.timeout_ms),
            )?,
            logins: BoundedCache::new(settings.cache_size),
            topics: BoundedCache::new(settings.cache_size),
            settings: settings.clone(),
        })
    }

    /// Whether the hook can be kept across a reload (same settings, same
    /// token): its caches then survive.
    pub(crate) fn same_as(&self, settings: &HookSettings) -> bool {
        if self.settings != *settings {
            return false;
        }
        let token = settings
            .token_file
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|text| text.trim().to_owned());
        token == self.token
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.settings.cache_ttl_secs)
    }

    /// Asks whether the login is allowed. Ok: the device id (the
    /// registry's, else the one from the user name, else the user name).
    pub(crate) async fn login(&self, login: &HookLogin<'_>) -> Result<Arc<str>, (Refused, String)> {
        let key = digest(&[
            login.username.as_bytes(),
            login.client_id.as_bytes(),
            login.password,
            login.device_id.unwrap_or("").as_bytes(),
        ]);
        let cached = self.logins.get(&key);
        let answer = match cached.clone().filter(|a| a.at.elapsed() < self.ttl()) {
            Some(fresh) => fresh,
            None => {
                let body = LoginBody {
                    fleet: login.fleet,
                    username: login.username,
                    client_id: login.client_id,
                    password: String::from_utf8_lossy(login.password),
                    device_id: login.device_id,
                    peer: login.peer.to_string(),
                };
                match self.ask(&self.settings.url, &body).await {
                    Ok(answer) => {
                        let answer = LoginAnswer {
                            allowed: answer.result == AnswerResult::Allow,
                            device_id: answer.device_id.filter(|d| !d.is_empty()).map(Arc::from),
                            at: Instant::now(),
                        };
                        self.logins.insert(key, answer.clone());
                        answer
                    }
                    Err(why) => match (self.settings.when_down, cached) {
                        (WhenDown::AllowCached, Some(last)) if last.allowed => last,
                        _ => return Err((Refused::Unavailable, why)),
                    },
                }
            }
        };
        if !answer.allowed {
            return Err((Refused::Denied, "the registry denied the login".to_owned()));
        }
        Ok(answer
            .device_id
            .or_else(|| login.device_id.map(Arc::from))
            .unwrap_or_else(|| Arc::from(login.username)))
    }

    /// Whether the device may publish or subscribe to the topic (always,
    /// without an `acl_url`).
    pub(crate) async fn authorize(&self, topic: &HookTopic<'_>) -> bool {
        let Some(url) = &self.settings.acl_url else {
            return true;
        };
        let key = digest(&[
            topic.device_id.as_bytes(),
            topic.username.as_bytes(),
            topic.client_id.as_bytes(),
            topic.action.as_str().as_bytes(),
            topic.topic.as_bytes(),
        ]);
        let cached = self.topics.get(&key);
        if let Some(fresh) = cached.filter(|a| a.at.elapsed() < self.ttl()) {
            return fresh.allowed;
        }
        let body = TopicBody {
            fleet: topic.fleet,
            device_id: topic.device_id,
            username: topic.username,
            client_id: topic.client_id,
            action: topic.action.as_str(),
            topic: topic.topic,
        };
        match self.ask(url, &body).await {
            Ok(answer) => {
                let allowed = answer.result == AnswerResult::Allow;
                self.topics.insert(
                    key,
                    TopicAnswer {
                        allowed,
                        at: Instant::now(),
                    },
                );
                allowed
            }
            Err(_) => {
                self.settings.when_down == WhenDown::AllowCached
                    && cached.is_some_and(|last| last.allowed)
            }
        }
    }

    /// One request. Err: the registry is down (why, for the log).
    async fn ask(&self, url: &str, body: &impl Serialize) -> Result<Answer, String> {
        let mut request = self.client.post(url).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!(
                    "the registry did not answer within {} ms",
                    self.settings.timeout_ms
                )
            } else {
                format!("cannot reach the registry: {e}")
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(Answer {
                result: AnswerResult::Deny,
                device_id: None,
            });
        }
        if !status.is_success() {
            return Err(format!("the registry answered {status}"));
        }
        response
            .json::<Answer>()
            .await
            .map_err(|e| format!("the registry's answer is not understood: {e}"))
    }
}

/// SHA-256 over parts separated so that no two lists collide.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny registry: answers every request with `answer(body)` (status
    /// and JSON), counts requests, and remembers the last Authorization.
    pub(crate) struct Registry {
        pub(crate) url: String,
        pub(crate) requests: Arc<AtomicUsize>,
        pub(crate) last_auth: Arc<parking_lot::Mutex<String>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Registry {
        pub(crate) async fn start(
            answer: impl Fn(&serde_json::Value) -> (u16, String) + Send + Sync + 'static,
        ) -> Registry {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(AtomicUsize::new(0));
            let last_auth = Arc::new(parking_lot::Mutex::new(String::new()));
            let answer = Arc::new(answer);
            let (count, auth) = (requests.clone(), last_auth.clone());
            let task = tokio::spawn(async move {
                // Dropped with this task: the open connections close too.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (answer, count, auth) = (answer.clone(), count.clone(), auth.clone());
                    connections.spawn(async move {
                        let mut buf = Vec::new();
                        loop {
                            let mut chunk = [0u8; 4096];
                            let Ok(n) = stream.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            let text = String::from_utf8_lossy(&buf).to_string();
                            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                                continue;
                            };
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() < length {
                                continue;
                            }
                            count.fetch_add(1, Ordering::SeqCst);
                            if let Some(line) = head
                                .lines()
                                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            {
                                *auth.lock() = line["authorization:".len()..].trim().to_owned();
                            }
                            let json: serde_json::Value =
                                serde_json::from_str(&body[..length]).unwrap_or_default();
                            let (status, mut reply) = answer(&json);
                            if let Some(rest) = reply.strip_prefix("sleep:") {
                                reply = rest.to_owned();
                                tokio::time::sleep(Duration::from_millis(600)).await;
                            }
                            let response = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n{reply}",
                                reply.len()
                            );
                            let _ = stream.write_all(response.as_bytes()).await;
                            buf.clear();
                        }
                    });
                }
            });
            Registry {
                url,
                requests,
                last_auth,
                task,
            }
        }
    }

    pub(crate) fn settings(url: &str) -> HookSettings {
        HookSettings {
            url: format!("{url}/login"),
            acl_url: Some(format!("{url}/acl")),
            token_file: None,
            ca_file: None,
            timeout_ms: 300,
            cache_ttl_secs: 60,
            cache_size: 1000,
            when_down: WhenDown::Deny,
        }
    }

    fn login<'a>(username: &'a str, password: &'a [u8]) -> HookLogin<'a> {
        HookLogin {
            fleet: "f",
            username,
            client_id: "c",
            password,
            device_id: Some("d"),
            peer: "127.0.0.1:5".parse().unwrap(),
        }
    }

    fn topic(action: TopicAction, topic: &str) -> HookTopic<'_> {
        HookTopic {
            fleet: "f",
            device_id: "d",
            username: "d@f",
            client_id: "c",
            action,
            topic,
        }
    }

    /// Allows password "good" and topics under `d/`.
    fn registry_rules(body: &serde_json::Value) -> (u16, String) {
        let allow = match body.get("topic") {
            Some(topic) => topic.as_str().unwrap_or("").starts_with("d/"),
            None => body["password"] == "good",
        };
        let result = if allow { "allow" } else { "deny" };
        (200, format!("{{\"result\": \"{result}\"}}"))
    }

    #[tokio::test]
    async fn logins_and_topics_are_asked_and_cached() {
        let registry = Registry::start(registry_rules).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let mut s = settings(&registry.url);
        s.token_file = Some(token);
        let hook = Hook::load(&s).unwrap();
        assert_eq!(
            hook.login(&login("d@f", b"good")).await.unwrap().as_ref(),
            "d"
        );
        assert_eq!(*registry.last_auth.lock(), "Bearer s3cret");
        assert_eq!(
            hook.login(&login("d@f", b"bad")).await.unwrap_err().0,
            Refused::Denied
        );
        assert_eq!(registry.requests.load(Ordering::SeqCst), 2);
        // Cached: no new request.
        assert!(hook.login(&login("d@f", b"good")).await.is_ok());
        assert_eq!(registry.requests.load(Ordering::SeqCst), 2);

        assert!(hook.authorize(&topic(TopicAction::Publish, "d/x")).await);
        assert!(!hook.authorize(&topic(TopicAction::Subscribe, "e/x")).await);
        assert!(hook.authorize(&topic(TopicAction::Publish, "d/x")).await);
        assert_eq!(registry.requests.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_registry_that_is_down_denies_or_allows_what_it_allowed() {
        let registry = Registry::start(registry_rules).await;
        let mut s = settings(&registry.url);
        s.cache_ttl_secs = 0;
        let deny = Hook::load(&s).unwrap();
        s.when_down = WhenDown::AllowCached;
        let cached = Hook::load(&s).unwrap();
        for hook in [&deny, &cached] {
            assert!(hook.login(&login("d@f", b"good")).await.is_ok());
            assert!(hook.authorize(&topic(TopicAction::Publish, "d/x")).await);
        }
        drop(registry);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (refused, why) = deny.login(&login("d@f", b"good")).await.unwrap_err();
        assert_eq!(refused, Refused::Unavailable);
        assert!(why.contains("registry"), "{why}");
        assert!(!deny.authorize(&topic(TopicAction::Publish, "d/x")).await);
        assert!(cached.login(&login("d@f", b"good")).await.is_ok());
        assert!(cached.authorize(&topic(TopicAction::Publish, "d/x")).await);
        assert_eq!(
            cached
                .login(&login("d@f", b"never seen"))
                .await
                .unwrap_err()
                .0,
            Refused::Unavailable,
            "nothing cached for this login"
        );
    }

    #[tokio::test]
    async fn errors_and_slow_answers_count_as_down() {
        let registry = Registry::start(|body| match body["password"].as_str() {
            Some("slow") => (200, "sleep:{\"result\": \"allow\"}".to_owned()),
            Some("500") => (500, "{}".to_owned()),
            Some("403") => (403, "{}".to_owned()),
            _ => (200, "not json".to_owned()),
        })
        .await;
        let hook = Hook::load(&settings(&registry.url)).unwrap();
        let refused = |r: Result<Arc<str>, (Refused, String)>| r.unwrap_err();
        assert_eq!(
            refused(hook.login(&login("d@f", b"500")).await).0,
            Refused::Unavailable
        );
        assert_eq!(
            refused(hook.login(&login("d@f", b"403")).await).0,
            Refused::Denied
        );
        let (r, why) = refused(hook.login(&login("d@f", b"x")).await);
        assert_eq!(r, Refused::Unavailable);
        assert!(why.contains("not understood"), "{why}");
        let (r, why) = refused(hook.login(&login("d@f", b"slow")).await);
        assert_eq!(r, Refused::Unavailable);
        assert!(why.contains("within 300 ms"), "{why}");
    }

    #[tokio::test]
    async fn the_registry_may_name_the_device() {
        let registry = Registry::start(|_| {
            (
                200,
                "{\"result\": \"allow\", \"device_id\": \"serial-77\"}".to_owned(),
            )
        })
        .await;
        let hook = Hook::load(&settings(&registry.url)).unwrap();
        let mut l = login("shared", b"pw");
        l.device_id = None;
        assert_eq!(hook.login(&l).await.unwrap().as_ref(), "serial-77");
    }
}
