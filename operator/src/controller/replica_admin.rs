//! The replicas of one broker as the rebalance and rollout logic sees
//! them, behind [`ReplicaAdmin`]: list them (ready, draining,
//! connections), ask one to shed clients, restart one.
//!
//! [`PodReplicas`] is the Kubernetes side: the broker's pods with their
//! `/metrics` as the reconcile read them, their admin API over HTTP to the
//! pod IP (the admin port is inside the cluster network; the admin token
//! authenticates the operator), and pod deletion through the API server.
//! The simulated cluster of the contract tests implements the same trait
//! with broker processes, so one piece of decision code drives both.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Client};

use crate::plan::rebalance::{ReplicaState, Shed};

/// How long one request to a broker pod may take.
pub const POD_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A future of [`ReplicaAdmin`].
pub type AdminFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AdminError>> + Send + 'a>>;

/// A request to a replica that did not work.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No connection, or no answer in time.
    #[error("cannot reach {replica}: {message}")]
    Unreachable {
        /// The replica.
        replica: String,
        /// Why.
        message: String,
    },
    /// The broker answered with an error.
    #[error("{replica} answered HTTP {status}: {body}")]
    Refused {
        /// The replica.
        replica: String,
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// The API server refused to delete a pod.
    #[error("cannot delete pod {pod}: {source}")]
    Delete {
        /// The pod.
        pod: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// A replica could not be restarted (the simulated cluster's process).
    #[error("cannot restart {replica}: {message}")]
    Restart {
        /// The replica.
        replica: String,
        /// Why.
        message: String,
    },
}

/// A broker's replicas, to observe and act on.
pub trait ReplicaAdmin: Send + Sync {
    /// Every replica, in ordinal order, with what it reports.
    fn replicas(&self) -> AdminFuture<'_, Vec<ReplicaState>>;

    /// Asks `shed.replica` to send `shed.count` clients away at
    /// `shed.rate` a second; returns how many it will send.
    fn shed<'a>(&'a self, shed: &'a Shed) -> AdminFuture<'a, u64>;

    /// Restarts `replica` (deletes the pod, which its StatefulSet creates
    /// again; stops and starts the process). Returns once it was asked to
    /// stop (Kubernetes) or has started again (a process).
    fn restart<'a>(&'a self, replica: &'a str) -> AdminFuture<'a, ()>;
}

/// A future of [`BrokerHttp`]: the status and body of the answer.
pub type HttpFuture<'a> = Pin<Box<dyn Future<Output = Result<(u16, String), String>> + Send + 'a>>;

/// HTTP/1.1 to a broker's admin port. The controller uses
/// [`HyperBrokerHttp`]; tests answer without a network.
pub trait BrokerHttp: Send + Sync {
    /// `method` (`GET` or `POST`) `url`, with the bearer `token`.
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        token: Option<&'a str>,
    ) -> HttpFuture<'a>;
}

/// [`BrokerHttp`] over hyper.
pub struct HyperBrokerHttp {
    client: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Default for HyperBrokerHttp {
    fn default() -> Self {
        HyperBrokerHttp {
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl BrokerHttp for HyperBrokerHttp {
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        token: Option<&'a str>,
    ) -> HttpFuture<'a> {
        Box::pin(async move {
            let mut request = hyper::Request::builder().method(method).uri(url);
            if let Some(token) = token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let exchange = async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok((status, String::from_utf8_lossy(&body).into_owned()))
            };
            tokio::time::timeout(POD_REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| format!("no answer in {POD_REQUEST_TIMEOUT:?}"))?
        })
    }
}

/// The value of the unlabelled series `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// What a broker's `/metrics` says of its connections and its cluster.
pub fn read_metrics(text: &str) -> (Option<u64>, Option<bool>) {
    let connections = metric_value(text, "kubemqtt_clients_connected").map(|v| v.max(0.0) as u64);
    let cluster = metric_value(text, "kubemqtt_cluster_connected").map(|v| v >= 1.0);
    (connections, cluster)
}

/// What a broker's answer to `shed` means: the clients it will send away
/// (`202 {"shedding": N, "rate": R}`), or its refusal.
pub fn shed_answer(shed: &Shed, status: u16, body: String) -> Result<u64, AdminError> {
    if status != 202 {
        return Err(AdminError::Refused {
            replica: shed.replica.clone(),
            status,
            body,
        });
    }
    Ok(serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|answer| answer["shedding"].as_u64())
        .unwrap_or(shed.count))
}

/// A broker pod as a reconcile saw it: the pod, and its `/metrics` text
/// when it answered ([`read_pods`](super::cluster::read_pods): read once
/// per reconcile, for the status and the replicas alike).
#[derive(Debug, Clone, Default)]
pub struct ObservedPod {
    /// The pod.
    pub pod: Pod,
    /// What its `/metrics` said; `None` when it was not read (being
    /// deleted, no address) or did not answer.
    pub metrics: Option<String>,
}

/// A broker's pods, as [`ReplicaAdmin`].
pub struct PodReplicas {
    pods: Api<Pod>,
    /// The broker's pods (from the reconcile's observation), in ordinal
    /// order, with their metrics as read in the reconcile.
    observed: Vec<ObservedPod>,
    http: Arc<dyn BrokerHttp>,
    /// The broker's HTTP port.
    port: u16,
    /// The admin API token.
    token: String,
    now: Timestamp,
}

impl PodReplicas {
    /// The pods `observed` in `namespace`, with what their `/metrics` said
    /// (the replicas' connections are not read again), reached on `port`
    /// with `token` for the admin API.
    pub fn new(
        client: Client,
        namespace: &str,
        mut observed: Vec<ObservedPod>,
        http: Arc<dyn BrokerHttp>,
        port: u16,
        token: String,
        now: Timestamp,
    ) -> PodReplicas {
        observed.sort_by_key(|observed| {
            let name = observed.pod.metadata.name.clone().unwrap_or_default();
            let ordinal = name
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u32>().ok());
            (ordinal, name)
        });
        PodReplicas {
            pods: Api::namespaced(client, namespace),
            observed,
            http,
            port,
            token,
            now,
        }
    }

    fn pod(&self, name: &str) -> Option<&Pod> {
        self.observed
            .iter()
            .map(|observed| &observed.pod)
            .find(|pod| pod.metadata.name.as_deref() == Some(name))
    }

    /// `http://<pod IP>:<port><path>`, when the pod has an address.
    fn url(&self, pod: &Pod, path: &str) -> Option<String> {
        let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
        Some(format!("http://{}{path}", SocketAddr::new(ip, self.port)))
    }

    fn state(observed: &ObservedPod, now: Timestamp) -> ReplicaState {
        let pod = &observed.pod;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ready_since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.as_ref().map(|t| t.0));
        let ready = ready_since.is_some();
        let ready_for = ready_since
            .flatten()
            .and_then(|since| Duration::try_from(now.duration_since(since)).ok())
            .unwrap_or(Duration::ZERO);
        let draining = pod.metadata.deletion_timestamp.is_some();
        // Counted only for a replica that is ready and not draining.
        let (connections, cluster_connected) = match &observed.metrics {
            Some(text) if ready && !draining => read_metrics(text),
            _ => (None, None),
        };
        ReplicaState {
            name,
            ready,
            ready_for,
            draining,
            connections,
            cluster_connected,
        }
    }
}

impl ReplicaAdmin for PodReplicas {
    fn replicas(&self) -> AdminFuture<'_, Vec<ReplicaState>> {
        Box::pin(async move {
            Ok(self
                .observed
                .iter()
                .map(|observed| PodReplicas::state(observed, self.now))
                .collect())
        })
    }

    fn shed<'a>(&'a self, shed: &'a Shed) -> AdminFuture<'a, u64> {
        Box::pin(async move {
            let unreachable = |message: String| AdminError::Unreachable {
                replica: shed.replica.clone(),
                message,
            };
            let url = self
                .pod(&shed.replica)
                .and_then(|pod| {
                    self.url(
                        pod,
                        &format!("/api/v1/shed?count={}&rate={}", shed.count, shed.rate),
                    )
                })
                .ok_or_else(|| unreachable("the pod has no IP address".to_owned()))?;
            let (status, body) = self
                .http
                .request("POST", &url, Some(&self.token))
                .await
                .map_err(unreachable)?;
            shed_answer(shed, status, body)
        })
    }

    fn restart<'a>(&'a self, replica: &'a str) -> AdminFuture<'a, ()> {
        Box::pin(async move {
            // Only the incarnation that was looked at: a pod already
            // replaced is left alone.
            let uid = self.pod(replica).and_then(|pod| pod.metadata.uid.clone());
            let params = DeleteParams {
                preconditions: uid.map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.pods.delete(replica, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(source) => Err(AdminError::Delete {
                    pod: replica.to_owned(),
                    source,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_cluster_state_come_from_the_metrics() {
        let text = "# HELP kubemqtt_clients_connected Clients connected now\n\
                    # TYPE kubemqtt_clients_connected gauge\n\
                    kubemqtt_clients_connected 33\n\
                    kubemqtt_clients_connected_total 7\n\
                    kubemqtt_cluster_connected 1\n";
        assert_eq!(read_metrics(text), (Some(33), Some(true)));
        assert_eq!(
            read_metrics("kubemqtt_cluster_connected 0\n"),
            (None, Some(false))
        );
        assert_eq!(metric_value("x 1e3\n", "x"), Some(1000.0));
        assert_eq!(metric_value("xy 1\n", "x"), None);
    }
}
