//! `spec.listeners` and `spec.service`: which listeners a broker has and
//! how its Services expose them.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_default;

/// The four listeners. Each one has a standard port and can be turned on
/// or off; two may not share a port, and port 8080 is the broker's HTTP
/// port (health, metrics, admin API). Every enabled listener is on the
/// in-cluster Service `<name>`; only the TLS ones (mqtts, wss) are on the
/// external Service `<name>-external` unless a listener says otherwise.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenersSpec {
    /// Plain MQTT over TCP. Default: enabled, port 1883.
    #[serde(skip_serializing_if = "is_default")]
    pub mqtt: ListenerSpec,
    /// MQTT over TLS. Default: enabled, port 8883.
    #[serde(skip_serializing_if = "is_default")]
    pub mqtts: ListenerSpec,
    /// MQTT over WebSocket, on path /mqtt. Default: disabled, port 8083.
    #[serde(skip_serializing_if = "is_default")]
    pub ws: ListenerSpec,
    /// MQTT over WebSocket over TLS, on path /mqtt. Default: disabled,
    /// port 8084.
    #[serde(skip_serializing_if = "is_default")]
    pub wss: ListenerSpec,
}

/// One listener.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerSpec {
    /// Whether the broker listens on this port. Default: on for mqtt and
    /// mqtts, off for ws and wss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The port, on the pods and on the Services. Default: the listener's
    /// standard port.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Whether the listener is also on the external Service (the load
    /// balancer, with `service.type` LoadBalancer). Default: true for the
    /// TLS listeners (mqtts, wss), false for the plain-text ones (mqtt,
    /// ws), whose passwords would cross the internet in clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// Whether connections through the external Service start with a
    /// PROXY protocol (v1 or v2) header carrying the client's address, as
    /// load balancers configured for it send. Only the external path
    /// expects it: the broker listens for it on a second port (this port
    /// plus 10000) that only the external Service targets, so in-cluster
    /// clients of `<name>` are unaffected. Turning it on here does not
    /// configure the load balancer: see docs/exposure.md for each cloud's
    /// annotation. Default: false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,
}

/// The external Service (`<name>-external`), which exposes the listeners
/// marked external outside the cluster. In-cluster clients use the
/// ClusterIP Service `<name>`, which has every listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.type == 'LoadBalancer' || ((!has(self.loadBalancerSourceRanges) || size(self.loadBalancerSourceRanges) == 0) && !has(self.loadBalancerClass))"
).message("loadBalancerSourceRanges and loadBalancerClass need type LoadBalancer"))]
#[x_kube(validation = Rule::new("self.type != 'ClusterIP' || !has(self.externalTrafficPolicy)")
    .message("externalTrafficPolicy needs type NodePort or LoadBalancer"))]
pub struct ServiceSpec {
    /// How the broker is exposed outside the cluster: LoadBalancer (the
    /// default), NodePort, or ClusterIP for no external Service at all.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations on the external Service, e.g. for the cloud's load
    /// balancer controller (docs/exposure.md has a table per cloud).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// CIDR ranges allowed to reach the load balancer (type LoadBalancer
    /// only). Default: any address; the operator posts a Warning Event when
    /// a plain-text listener is then open to the world.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// Whether external traffic is routed to node-local pods only (Local,
    /// which keeps the client's address) or to any node (Cluster). Types
    /// NodePort and LoadBalancer only. Default: the cluster's default
    /// (Cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
    /// The load balancer implementation to use (type LoadBalancer only).
    /// Default: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
}

/// How a Service is exposed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only: no external Service.
    ClusterIP,
    /// Reachable on a port of every node.
    NodePort,
    /// Reachable through a cloud load balancer.
    #[default]
    LoadBalancer,
}

impl ServiceType {
    /// The Service API's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where a Service sends external traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// To any ready pod, through any node.
    Cluster,
    /// Only to pods on the node that received it (keeps the client address).
    Local,
}

impl ExternalTrafficPolicy {
    /// The Service API's name of the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}
