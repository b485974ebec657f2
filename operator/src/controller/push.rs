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
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;

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

/// A broker pod to push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// The pod's name.
    pub name: String,
    /// Who holds what was pushed: the pod's UID and the broker
    /// container's restarts (a restarted broker forgets a push and reads
    /// the file the kubelet mounted).
    pub key: String,
    /// The pod's admin API URL; `None` while it has no IP address.
    pub url: Option<String>,
}

/// Where the credentials file is pushed.
pub const CREDENTIALS_PATH: &str = "/api/v1/credentials";

/// The pods to push credentials to: every broker pod that is not being
/// deleted.
pub fn targets(pods: &[Pod], container: &str, port: u16) -> Vec<PodTarget> {
    targets_at(pods, container, port, CREDENTIALS_PATH)
}

/// The pods to push to, at `path` of their admin API.
pub fn targets_at(pods: &[Pod], container: &str, port: u16, path: &str) -> Vec<PodTarget> {
    let mut targets: Vec<PodTarget> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let status = pod.status.as_ref();
            let restarts = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|statuses| statuses.iter().find(|c| c.name == container))
                .map_or(0, |c| c.restart_count);
            let url = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| format!("http://{}{path}", SocketAddr::new(ip, port)));
            PodTarget {
                name: pod.metadata.name.clone().unwrap_or_default(),
                key: format!(
                    "{}/{restarts}",
                    pod.metadata.uid.as_deref().unwrap_or_default()
                ),
                url,
            }
        })
        .collect();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    targets
}

/// The revision each pod (by [`PodTarget::key`]) last confirmed, so that
/// a reconcile that changed nothing sends nothing.
#[derive(Debug, Default)]
pub struct PushedRevisions {
    confirmed: Mutex<HashMap<String, u64>>,
}

impl PushedRevisions {
    /// Whether `pod` already confirmed `revision` or a newer one.
    pub fn is_current(&self, pod: &str, revision: u64) -> bool {
        self.lock().get(pod).is_some_and(|&seen| seen >= revision)
    }

    /// Records that `pod` has `revision` in force.
    pub fn confirm(&self, pod: &str, revision: u64) {
        self.lock().insert(pod.to_owned(), revision);
    }

    /// Forgets `pod`.
    pub fn forget(&self, pod: &str) {
        self.lock().remove(pod);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: Option<&str>, restarts: i32) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "status": {
                "podIP": ip,
                "containerStatuses": [
                    {"name": "sidecar", "restartCount": 9, "image": "x", "imageID": "", "ready": true},
                    {"name": "broker", "restartCount": restarts, "image": "x", "imageID": "", "ready": true},
                ],
            },
        }))
        .unwrap()
    }

    #[test]
    fn one_target_per_pod_by_its_address_and_incarnation() {
        let mut leaving = pod("mq-2", Some("10.0.0.9"), 0);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2025-06-01T12:00:00Z".parse().unwrap(),
            ));
        let targets = targets(
            &[
                pod("mq-1", Some("fd00::7"), 0),
                pod("mq-0", Some("10.0.0.7"), 2),
                leaving,
                pod("mq-3", None, 0),
            ],
            "broker",
            8080,
        );
        assert_eq!(
            targets,
            [
                PodTarget {
                    name: "mq-0".into(),
                    key: "uid-mq-0/2".into(),
                    url: Some("http://10.0.0.7:8080/api/v1/credentials".into()),
                },
                PodTarget {
                    name: "mq-1".into(),
                    key: "uid-mq-1/0".into(),
                    url: Some("http://[fd00::7]:8080/api/v1/credentials".into()),
                },
                PodTarget {
                    name: "mq-3".into(),
                    key: "uid-mq-3/0".into(),
                    url: None,
                },
            ]
        );
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
