//! The desired state of an `MqttBroker`.
//!
//! Defaults that never change (replica count, certificate validity, Service
//! type, log level) are written into the schema, so the apiserver fills them
//! in and `kubectl get -o yaml` shows them. Defaults that depend on the
//! operator's release (the image) or on the broker (limits, listener ports)
//! stay unset and are resolved by the planner, so that upgrading either one
//! moves existing brokers along.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::MqttBrokerStatus;

/// The message of the CEL rule that caps `spec.replicas`.
pub const REPLICAS_MESSAGE: &str =
    "replicas above 1 are not supported yet: every broker pod would \
keep its own sessions, subscriptions and retained messages, so clients connected to different \
pods would silently stop seeing each other's messages";

/// An MQTT broker: the operator runs it as a StatefulSet behind a Service,
/// with its configuration, TLS certificates and credentials.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubemqtt.io",
    version = "v1alpha1",
    kind = "MqttBroker",
    namespaced,
    shortname = "mqb",
    category = "kubemqtt",
    doc = "An MQTT broker managed by the KubeMQTT operator.",
    status = "MqttBrokerStatus",
    derive = "PartialEq",
    cel,
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Whether the broker accepts connections",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        description = "Where clients connect",
        json_path = ".status.endpoint"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        description = "Broker pods that are ready",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "self.metadata.name.size() <= 52 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message(
        "metadata.name must be at most 52 characters of lower-case letters, digits and '-', \
         starting with a letter: it names the broker's Services and pods"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerSpec {
    /// Container image of the broker. Default: the broker image released
    /// with this version of the operator (chosen when the operator is
    /// installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Number of broker pods: 1 runs the broker, 0 stops it (its volume is
    /// kept). Values above 1 are rejected until brokers can share
    /// sessions: each pod would otherwise serve its own clients in
    /// isolation. Default: 1.
    #[schemars(range(min = 0))]
    #[x_kube(validation = Rule::new("self <= 1").message(REPLICAS_MESSAGE))]
    #[serde(default = "default_replicas")]
    pub replicas: i32,

    /// CPU and memory of the broker container. Default: requests of 100m
    /// CPU and 128Mi memory, and a 512Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a node must have to run the broker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the broker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the broker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Topology spread constraints of the broker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// PriorityClass of the broker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Extra labels on the broker pods. The `app.kubernetes.io/name`,
    /// `app.kubernetes.io/instance` and `app.kubernetes.io/managed-by` keys
    /// are the operator's and may not be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on the broker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// The ports the broker accepts clients on.
    #[serde(default, skip_serializing_if = "is_default")]
    pub listeners: ListenersSpec,

    /// The Service that exposes the listeners to clients.
    #[serde(default, skip_serializing_if = "is_default")]
    pub service: ServiceSpec,

    /// The broker's TLS certificate: generated and renewed by the operator
    /// (the default), or taken from a Secret you manage.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: TlsSpec,

    /// Who may connect.
    #[serde(default, skip_serializing_if = "is_default")]
    pub auth: AuthSpec,

    /// Packet, flow-control and queue limits. Unset fields keep the
    /// broker's defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,

    /// Durable storage of retained messages and persistent sessions: one
    /// PersistentVolumeClaim per pod. Cannot be changed after creation (a
    /// StatefulSet's volume claims are immutable).
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "persistence cannot be changed after creation: the broker's volume claims are immutable"
    ))]
    // Always present (the schema defaults it), so that the rule above also
    // holds when the first version of the broker left it out.
    #[serde(default)]
    pub persistence: PersistenceSpec,

    /// Log output of the broker.
    #[serde(default, skip_serializing_if = "is_default")]
    pub logging: LoggingSpec,

    /// Further broker settings, written into the broker's configuration
    /// file as they are (snake_case keys, as in the broker's
    /// docs/configuration.md; for example `sys: {interval_secs: 0}` or
    /// `persistence: {fsync: always}`). Keys that other fields of this
    /// spec manage are rejected, and the result is checked against the
    /// broker's own configuration schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Default for MqttBrokerSpec {
    fn default() -> Self {
        MqttBrokerSpec {
            image: None,
            replicas: default_replicas(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: Vec::new(),
            priority_class_name: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            listeners: ListenersSpec::default(),
            service: ServiceSpec::default(),
            tls: TlsSpec::default(),
            auth: AuthSpec::default(),
            limits: LimitsSpec::default(),
            persistence: PersistenceSpec::default(),
            logging: LoggingSpec::default(),
            config: None,
        }
    }
}

/// The four listeners. Each one has a standard port and can be turned on
/// or off; two may not share a port, and port 8080 is the broker's HTTP
/// port (health, metrics, admin API).
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
}

/// The client Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.type == 'LoadBalancer' || ((!has(self.loadBalancerSourceRanges) || size(self.loadBalancerSourceRanges) == 0) && !has(self.loadBalancerClass))"
).message("loadBalancerSourceRanges and loadBalancerClass need type LoadBalancer"))]
#[x_kube(validation = Rule::new("self.type != 'ClusterIP' || !has(self.externalTrafficPolicy)")
    .message("externalTrafficPolicy needs type NodePort or LoadBalancer"))]
pub struct ServiceSpec {
    /// How the Service is exposed. Default: LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations on the client Service, e.g. for the cloud's load
    /// balancer controller.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// CIDR ranges allowed to reach the load balancer (type LoadBalancer
    /// only). Default: any address.
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
    /// Whether the broker expects a PROXY protocol (v1 or v2) header at the
    /// start of every connection, as load balancers send to pass on the
    /// client's address. Every listener then requires it, also from
    /// clients inside the cluster. Turning it on here does not configure
    /// the load balancer: use the annotations your cloud documents.
    /// Default: false.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// How a Service is exposed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
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

/// The broker's TLS certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.generated) && has(self.secretName))")
    .message("set either tls.generated or tls.secretName, not both"))]
pub struct TlsSpec {
    /// Settings of the certificate the operator generates, from its own
    /// CA, when `secretName` is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedTlsSpec>,
    /// Name of a `kubernetes.io/tls` Secret in the broker's namespace that
    /// holds the certificate (`tls.crt`, `tls.key` and, optionally, the
    /// CA bundle in `ca.crt`). You renew it; the broker reloads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// A certificate the operator generates and renews.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.renewBeforeDays < self.validityDays")
    .message("renewBeforeDays must be less than validityDays"))]
pub struct GeneratedTlsSpec {
    /// How long a server certificate is valid, in days. Default: 365.
    #[schemars(range(min = 1, max = 3650))]
    #[serde(default = "default_validity_days")]
    pub validity_days: i32,
    /// How many days before expiry the certificate is renewed. Default: 30.
    #[schemars(range(min = 1))]
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: i32,
    /// Extra names (DNS names, `*.` wildcards or IP addresses) the
    /// certificate covers, besides the Services' DNS names and the load
    /// balancer's address, which it always covers.
    #[serde(default, rename = "extraSANs", skip_serializing_if = "Vec::is_empty")]
    pub extra_sans: Vec<String>,
}

impl Default for GeneratedTlsSpec {
    fn default() -> Self {
        GeneratedTlsSpec {
            validity_days: default_validity_days(),
            renew_before_days: default_renew_before_days(),
            extra_sans: Vec::new(),
        }
    }
}

/// Who may connect.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthSpec {
    /// Whether clients may connect without a user name. Default: false.
    pub anonymous: bool,
}

/// The broker's limits. Each unset field keeps the broker's default, shown
/// here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsSpec {
    /// Largest packet accepted or sent, in bytes. Default: 1048576.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 268435455))]
    pub max_packet_size: Option<u32>,
    /// QoS 1 and 2 messages a client may have unacknowledged towards the
    /// broker (its Receive Maximum). Default: 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub receive_maximum: Option<u16>,
    /// QoS 1 and 2 messages the broker keeps unacknowledged towards one
    /// client. Default: 32.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_inflight: Option<u16>,
    /// QoS 1 and 2 messages queued per session while the client is
    /// offline or its in-flight window is full. Default: 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<u32>,
    /// Payload bytes queued per session. Default: 67108864 (64 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
    /// What to drop when a session's queue is full. Default: DropNew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_full_policy: Option<QueueFullPolicy>,
    /// Topic aliases a client may use (MQTT 5.0); 0 turns them off.
    /// Default: 64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_alias_maximum: Option<u16>,
    /// Longest keep alive granted, in seconds. Default: 65535.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keep_alive_seconds: Option<u16>,
    /// Longest session expiry interval granted, in seconds. Default:
    /// 4294967295 (sessions never expire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_session_expiry_seconds: Option<u32>,
    /// Longest client identifier accepted, in bytes; MQTT requires at
    /// least 23. Default: 65535.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 23))]
    pub max_client_id_length: Option<u16>,
    /// PUBLISH packets per second one client may send; 0 means no limit.
    /// Default: 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// What happens to a client over its publish rate: Disconnect, or
    /// Throttle (the broker stops reading from it until it is back under
    /// the rate). Default: Disconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate_action: Option<RateLimitAction>,
    /// Subscriptions one session may hold; 0 means no limit. Default: 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u32>,
}

/// What to do with a client that publishes faster than allowed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RateLimitAction {
    /// Disconnect it (MQTT 5.0 clients are told "message rate too high").
    Disconnect,
    /// Stop reading from it until it is back under the rate.
    Throttle,
}

/// What to drop when a session's queue is full.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QueueFullPolicy {
    /// Drop the message that does not fit.
    DropNew,
    /// Drop the oldest queued message to make room.
    DropOldest,
}

/// Durable storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PersistenceSpec {
    /// Whether retained messages and persistent sessions survive restarts,
    /// on a PersistentVolumeClaim per pod. Default: false.
    pub enabled: bool,
    /// Size of each pod's volume. Default: 1Gi.
    pub size: Quantity,
    /// StorageClass of the volumes. Default: the cluster's default class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        PersistenceSpec {
            enabled: false,
            size: Quantity("1Gi".to_owned()),
            storage_class_name: None,
        }
    }
}

/// Log output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LoggingSpec {
    /// Least severe level written. Default: info.
    pub level: LogLevel,
    /// `text` (mosquitto-style lines) or `json` (one object per line).
    /// Default: text.
    pub format: LogFormat,
}

/// Severity of a log line, most severe first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures of the broker itself.
    Error,
    /// Something to look at.
    Warning,
    /// Connections and disconnections.
    Notice,
    /// Startup, shutdown and other informational lines.
    #[default]
    Info,
    /// Per-packet lines.
    Debug,
}

/// Format of log lines.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// mosquitto-style text lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_replicas() -> i32 {
    1
}

fn default_validity_days() -> i32 {
    365
}

fn default_renew_before_days() -> i32 {
    30
}

/// Whether a value equals its type's default (used to leave defaults out
/// when serializing).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The schema of `spec.config`: any object, kept as it is by the apiserver.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
