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
    Affinity, Container, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::cluster::{AutoscalingSpec, ClusterSpec, DrainSpec};
use super::status::MqttBrokerStatus;

mod limits;
mod listeners;
mod runtime;
mod tls;

pub use limits::{AuthSpec, LimitsSpec, QueueFullPolicy, RateLimitAction};
pub use listeners::{ExternalTrafficPolicy, ListenerSpec, ListenersSpec, ServiceSpec, ServiceType};
pub use runtime::{LogFormat, LogLevel, LoggingSpec, PersistenceSpec, ProbeSpec, ProbesSpec};
pub use tls::{CaSpec, CertManagerSpec, GeneratedTlsSpec, IssuerReference, TlsSpec};

/// The message of the CEL rule that caps `spec.replicas` of a broker
/// without `spec.cluster`.
pub const REPLICAS_MESSAGE: &str = "replicas above 1 need spec.cluster: without a NATS \
cluster every broker pod would keep its own sessions, subscriptions and retained messages, so \
clients connected to different pods would silently stop seeing each other's messages";

/// The message of the CEL rule that ties `spec.autoscaling` to
/// `spec.cluster`.
pub const AUTOSCALING_MESSAGE: &str =
    "spec.autoscaling needs spec.cluster: only a clustered broker can run more than one pod";

/// The official NATS image the operator runs for `spec.cluster.nats.managed`
/// when the spec names none (pinned: a NATS upgrade is a decision).
pub const DEFAULT_NATS_IMAGE: &str = "nats:2.10.24-alpine";

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
        name = "Desired",
        type_ = "integer",
        description = "Broker pods wanted",
        json_path = ".spec.replicas"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        description = "Broker pods that are ready",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        description = "Client connections over every broker pod (clustered brokers)",
        json_path = ".status.connections"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        description = "Where clients connect (scheme://host:port)",
        json_path = ".status.endpoint"
    ),
    printcolumn(
        name = "NATS",
        type_ = "string",
        description = "State of the NATS the broker pods share (clustered brokers)",
        json_path = ".status.nats.state"
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
#[x_kube(validation = Rule::new("self.replicas <= 1 || has(self.cluster)").message(REPLICAS_MESSAGE))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || has(self.cluster)").message(AUTOSCALING_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerSpec {
    /// Container image of the broker. Default: the operator's broker image
    /// (the chart's `operator.brokerImage`, else the image released with
    /// this version of the operator): set either to use a mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Secrets for pulling the broker image from a private registry or
    /// mirror. Default: the operator's (the chart's
    /// `operator.brokerImagePullSecrets`); when set here, these replace
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// The ServiceAccount the broker pods run as. The broker never calls
    /// the Kubernetes API, so its token is not mounted. Default: the
    /// namespace's `default` ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Number of broker pods. Without `spec.cluster`: 1 runs the broker,
    /// 0 stops it (its volume is kept), and more is refused, since each pod
    /// would serve its own clients in isolation. With `spec.cluster`: any
    /// number, the pods sharing sessions, subscriptions and retained
    /// messages through NATS. With `spec.autoscaling` the autoscaler writes
    /// this field (through the scale subresource, as `kubectl scale` does):
    /// leave it out of what your GitOps tool applies. Default: 1.
    #[schemars(range(min = 0))]
    #[serde(default = "default_replicas")]
    pub replicas: i32,

    /// CPU and memory of the broker container. Default: requests of 100m
    /// CPU and 256Mi memory, and a 1Gi memory limit. Keep a memory limit:
    /// the broker bounds the messages queued in all sessions together to
    /// half of it (its memory budget), so a limit is what keeps many full
    /// queues from getting the pod killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables of the broker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Extra containers in the broker pods, next to the broker (a log
    /// shipper, a proxy). Their names may not be `broker`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Container>,

    /// Timing of the broker container's startup, liveness and readiness
    /// probes. Unset fields keep the defaults shown for each probe.
    #[serde(default, skip_serializing_if = "is_default")]
    pub probes: ProbesSpec,

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
    /// PersistentVolumeClaim per pod. It can be turned on or off, and its
    /// size raised, on a running broker: the operator replaces the
    /// StatefulSet without deleting its pods, resizes the existing claims
    /// (their StorageClass must allow volume expansion) and rolls the pods.
    /// A size can not shrink, and the StorageClass can not change while
    /// claims exist.
    #[serde(default)]
    pub persistence: PersistenceSpec,

    /// Log output of the broker.
    #[serde(default, skip_serializing_if = "is_default")]
    pub logging: LoggingSpec,

    /// Several broker pods sharing their clients' sessions, subscriptions
    /// and retained messages through a NATS JetStream cluster, run by the
    /// operator (`nats.managed`) or yours (`nats.external`). Needed for
    /// `replicas` above 1 and for `autoscaling`; it cannot go with
    /// `persistence.enabled` (the cluster keeps the state in JetStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,

    /// Scale the broker with the load: a HorizontalPodAutoscaler (or a KEDA
    /// ScaledObject) that drives `spec.replicas` through the MqttBroker's
    /// scale subresource. Needs `spec.cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// How a stopping broker pod hands its clients over: how fast it
    /// disconnects them, and how many it is expected to hold, which sets
    /// how long it may take (the pods' termination grace period).
    #[serde(default, skip_serializing_if = "is_default")]
    pub drain: DrainSpec,

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
            image_pull_secrets: Vec::new(),
            service_account_name: None,
            replicas: default_replicas(),
            resources: None,
            env: Vec::new(),
            sidecars: Vec::new(),
            probes: ProbesSpec::default(),
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
            cluster: None,
            autoscaling: None,
            drain: DrainSpec::default(),
            config: None,
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// Whether a value equals its type's default (used to leave defaults out
/// when serializing).
pub(super) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The schema of `spec.config`: any object, kept as it is by the apiserver.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
