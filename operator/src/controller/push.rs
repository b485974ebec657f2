//! Pushing a broker's credentials file to its pods' admin API
//! (`PUT /api/v1/credentials`), so that a user change is in force within
//! a second instead of when the kubelet next refreshes the Secret volume
//! (a minute or more). The Secret stays the source of truth: the broker
//! keeps whichever of the file and the push has the higher `revision`, and
//! a pod that missed a push reads the file when it starts.
//!
//! Why push rather than let the broker watch its Secret: the broker then
//! needs no Kubernetes client, credentials or RBAC of its own, and works the
//! same outside Kubernetes; the operator already holds the admin token.
//! This is how RabbitMQ's topology operator and Strimzi's user operator
//! reach their brokers too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one push may take.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a broker answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushReply {
    /// The revision is in force now.
    Applied,
    /// It (or a newer one) already was.
    AlreadyInForce,
}

/// A push that did not work.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No connection, or no answer in time: the pod is probably not
    /// running; it reads the file when it starts.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// The broker refused the credentials (a bug: the planner checks
    /// them with the broker's own parser).
    #[error("{url} answered HTTP {status}: {body}")]
    Refused {
        /// Where.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
}

/// Sends credentials to a broker pod. The controller uses [`HttpPusher`];
/// tests record what would be sent.
pub trait CredentialsPusher: Send + Sync {
    /// `PUT`s `body` to `url` with the bearer `token`.
    fn push<'a>(
        &'a self,
        url: &'a str,
        token: &'a str,
        body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<PushReply, PushError>> + Send + 'a>>;
}

/// Pushes over plain HTTP/1.1 (the pods' admin port is inside the
/// cluster network; the bearer token authenticates the operator).
pub struct HttpPusher {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Default for HttpPusher {
    fn default() -> Self {
        HttpPusher {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl CredentialsPusher for HttpPusher {
    fn push<'a>(
        &'a self,
        url: &'a str,
        token: &'a str,
        body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<PushReply, PushError>> + Send + 'a>> {
        Box::pin(async move {
            let unreachable = |message: String| PushError::Unreachable {
                url: url.to_owned(),
                message,
            };
            let request = hyper::Request::put(url)
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                .header(hyper::header::CONTENT_TYPE, "application/toml")
                .body(Full::new(Bytes::from(body.to_owned())))
                .map_err(|e| unreachable(e.to_string()))?;
            let exchange = async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let status = response.status().as_u16();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| unreachable(e.to_string()))?
                    .to_bytes();
                Ok::<_, PushError>((status, String::from_utf8_lossy(&bytes).into_owned()))
            };
            let (status, answer) = tokio::time::timeout(PUSH_TIMEOUT, exchange)
                .await
                .map_err(|_| unreachable(format!("no answer in {PUSH_TIMEOUT:?}")))??;
            match status {
                200 if answer.contains("\"applied\":true") => Ok(PushReply::Applied),
                200 | 409 => Ok(PushReply::AlreadyInForce),
                status => Err(PushError::Refused {
                    url: url.to_owned(),
                    status,
                    body: answer,
                }),
            }
        })
    }
}

/// The admin API URL of each pod of a broker, through the headless
/// Service's per-pod DNS names.
pub fn pod_urls(
    broker: &str,
    headless_service: &str,
    namespace: &str,
    cluster_domain: &str,
    replicas: i32,
    port: u16,
) -> Vec<String> {
    (0..replicas.max(0))
        .map(|index| {
            format!(
                "http://{broker}-{index}.{headless_service}.{namespace}.svc.{cluster_domain}:{port}/api/v1/credentials"
            )
        })
        .collect()
}

/// The revision each pod URL last confirmed, so that a reconcile that
/// changed nothing sends nothing.
#[derive(Debug, Default)]
pub struct PushedRevisions {
    confirmed: Mutex<HashMap<String, u64>>,
}

impl PushedRevisions {
    /// Whether `url` already confirmed `revision` or a newer one.
    pub fn is_current(&self, url: &str, revision: u64) -> bool {
        self.lock().get(url).is_some_and(|&seen| seen >= revision)
    }

    /// Records that `url` has `revision` in force.
    pub fn confirm(&self, url: &str, revision: u64) {
        self.lock().insert(url.to_owned(), revision);
    }

    /// Forgets `url` (its pod may have restarted).
    pub fn forget(&self, url: &str) {
        self.lock().remove(url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_per_pod_through_the_headless_service() {
        assert_eq!(
            pod_urls("mq", "mq-headless", "iot", "cluster.local", 1, 8080),
            vec!["http://mq-0.mq-headless.iot.svc.cluster.local:8080/api/v1/credentials"]
        );
        assert!(pod_urls("mq", "mq-headless", "iot", "cluster.local", 0, 8080).is_empty());
    }

    #[test]
    fn confirmed_revisions_are_remembered_per_pod() {
        let pushed = PushedRevisions::default();
        assert!(!pushed.is_current("a", 1));
        pushed.confirm("a", 3);
        assert!(pushed.is_current("a", 3));
        assert!(pushed.is_current("a", 2));
        assert!(!pushed.is_current("a", 4));
        assert!(!pushed.is_current("b", 3));
        pushed.forget("a");
        assert!(!pushed.is_current("a", 3));
    }
}
