//! What the operator reports about an `MqttBroker`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: every listener is reachable at its advertised address:
/// the load balancer has an address, the pods are ready, and every pod has
/// the current credentials.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: at least one broker pod is ready.
pub const CONDITION_AVAILABLE: &str = "Available";
/// Condition type: the operator is rolling out a change.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: the spec cannot be applied in full, or a part of the
/// broker is failing.
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Condition type: the TLS certificate is valid and covers every name.
pub const CONDITION_CERTIFICATES_READY: &str = "CertificatesReady";
/// Condition type (brokers with `spec.cluster`): the cluster works with
/// less than it should: a broker pod is down (reason
/// [`REASON_REPLICA_DOWN`]), the managed NATS lost its quorum
/// ([`REASON_NATS_QUORUM_LOST`]) or broker pods cannot reach NATS
/// ([`REASON_NATS_UNREACHABLE`]).
pub const CONDITION_CLUSTER_DEGRADED: &str = "ClusterDegraded";
/// Reason of `ClusterDegraded`: fewer broker pods are ready than wanted.
pub const REASON_REPLICA_DOWN: &str = "ReplicaDown";
/// Reason of `ClusterDegraded`: fewer than two of the three managed NATS
/// servers are ready, so JetStream cannot commit.
pub const REASON_NATS_QUORUM_LOST: &str = "NatsQuorumLost";
/// Reason of `ClusterDegraded`: broker pods report no connection to NATS.
pub const REASON_NATS_UNREACHABLE: &str = "NatsUnreachable";

/// The observed state of a broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The latest observations of the broker's state: Ready, Available,
    /// Progressing, Degraded and CertificatesReady; ClusterDegraded with
    /// `spec.cluster`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,

    /// Client connections over every broker pod that answered, from the
    /// pods' metrics (brokers with `spec.cluster`; refreshed at each
    /// reconcile, at least every two minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,

    /// The NATS the broker pods share (brokers with `spec.cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsStatus>,

    /// The object that scales the broker (`HorizontalPodAutoscaler mq`,
    /// `ScaledObject mq`), with `spec.autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<String>,

    /// Broker pods that exist (read by the scale subresource).
    #[serde(default)]
    pub replicas: i32,

    /// Broker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Label selector of the broker pods, in string form (read by the
    /// scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Where clients connect, as a URL with scheme and port
    /// (`mqtts://203.0.113.7:8883`): the external address of the first
    /// external listener (mqtts preferred) when the broker is exposed, else
    /// the in-cluster address. Unset while the load balancer has no
    /// address yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The broker's host names inside and outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsStatus>,

    /// Each enabled listener and where it is reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,

    /// The TLS certificate the broker serves and the CAs behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,

    /// The credentials file (the MqttUsers) and how far it reached the
    /// pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
}

/// The state of the NATS a clustered broker uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsStatus {
    /// `Managed` (the operator runs it) or `External`.
    pub mode: String,
    /// `Ready` (every server ready, every reporting broker pod connected),
    /// `Degraded` (a managed server down, quorum kept), `QuorumLost`,
    /// `Unreachable` (broker pods report no NATS connection) or `Unknown`
    /// (no broker pod reported yet, for an external NATS).
    pub state: String,
    /// Managed NATS servers that are ready (unset for an external NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_servers: Option<i32>,
    /// Managed NATS servers wanted (unset for an external NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<i32>,
    /// Broker pods that reported a NATS connection, of those that
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_brokers: Option<i32>,
    /// The URLs the brokers connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// The broker's host names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsStatus {
    /// The in-cluster Service's DNS name.
    pub internal: String,
    /// The load balancer's IP address or host name, once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
}

/// One listener and where it is reachable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub name: String,
    /// Its URL inside the cluster, through the Service `<name>`.
    pub internal: String,
    /// Its URL outside the cluster, through the external Service's load
    /// balancer, once that has an address. Unset for a listener that is
    /// not external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// The node port of the external Service (type NodePort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    /// Whether the external path expects a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// The TLS certificate the broker serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// When the served certificate expires.
    pub not_after: Time,
    /// When the CA that issued the served certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<Time>,
    /// During a CA rotation: when the incoming CA (already in the trust
    /// bundle) expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ca_not_after: Option<Time>,
    /// During a CA rotation: when the server certificate moves to the
    /// incoming CA and the outgoing one leaves the trust bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation_completes_at: Option<Time>,
}

/// The credentials file and its propagation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The revision of the credentials file in the Secret `<name>-auth`.
    pub revision: i64,
    /// The newest revision every broker pod has confirmed having in
    /// force. An MqttUser is Ready once this reaches the revision that
    /// holds its credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_revision: Option<i64>,
    /// Broker pods that have `revision` in force.
    #[serde(default)]
    pub pods_confirmed: i32,
}
