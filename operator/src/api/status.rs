//! What the operator reports about an `MqttBroker`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the broker accepts connections on its endpoints.
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

/// The observed state of a broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The latest observations of the broker's state: Ready, Available,
    /// Progressing, Degraded and CertificatesReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,

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

    /// Where clients connect: the load balancer's address when it has
    /// one, else the Service's in-cluster DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The broker's addresses inside and outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsStatus>,

    /// The TLS certificate the broker serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
}

/// The broker's addresses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsStatus {
    /// The client Service's DNS name inside the cluster.
    pub internal: String,
    /// The load balancer's IP address or host name, once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
}

/// The TLS certificate the broker serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// When the certificate expires.
    pub not_after: Time,
}
