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
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cluster::{AutoscalingSpec, ClusterSpec, DrainSpec};
use super::status::MqttBrokerStatus;

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

/// The broker's TLS certificate, and the CA clients trust.
///
/// By default the operator keeps its own CA (`<name>-ca`) and issues the
/// server certificate from it. `ca.secretName` makes it issue from a CA
/// you provide instead, `certManager` has cert-manager issue it, and
/// `secretName` serves a certificate you manage yourself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.generated) && has(self.secretName))")
    .message("set either tls.generated or tls.secretName, not both"))]
#[x_kube(validation = Rule::new("!(has(self.certManager) && has(self.secretName))")
    .message("set either tls.certManager or tls.secretName, not both"))]
#[x_kube(validation = Rule::new(
    "!has(self.ca) || !has(self.ca.secretName) || !(has(self.secretName) || has(self.certManager))"
).message("tls.ca.secretName issues the server certificate: it cannot go with tls.secretName or tls.certManager"))]
pub struct TlsSpec {
    /// Settings of the server certificate the operator has issued (by its
    /// own CA, by `ca.secretName`, or by cert-manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedTlsSpec>,
    /// Name of a `kubernetes.io/tls` Secret in the broker's namespace that
    /// holds the certificate (`tls.crt`, `tls.key` and, optionally, the
    /// CA bundle in `ca.crt`). You renew it; the broker reloads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The CA that issues the server certificate, and how long a replaced
    /// CA stays trusted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ca: CaSpec,
    /// Have cert-manager issue the server certificate: the operator
    /// creates a cert-manager `Certificate` (`<name>-tls`) and the pods
    /// serve the Secret cert-manager writes. Needs cert-manager in the
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
}

/// The CA behind the server certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CaSpec {
    /// A Secret of yours holding the CA that issues the server
    /// certificate: `tls.crt` and `tls.key` (as cert-manager writes a CA),
    /// or `ca.crt` and `ca.key`. The operator only reads it. Replace its
    /// content to rotate the CA: the certificate it issued keeps being
    /// served for `overlapDays` (or until it needs renewing), while the
    /// trust bundle holds both CAs. Default: the operator's own CA, in
    /// `<name>-ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// How long, in days, both the outgoing and the incoming CA are in the
    /// trust bundle (`ca.crt` of the ConfigMap and of every user's Secret)
    /// when the CA changes, before the server certificate moves to the new
    /// CA. Devices that fetch their CA bundle within that time keep
    /// connecting. Default: 30.
    #[schemars(range(min = 0, max = 365))]
    pub overlap_days: i32,
    /// Whether the CA Secrets the operator generates (`<name>-ca` and
    /// `<name>-clients-ca`) are deleted with the MqttBroker. By default
    /// they stay, so that a broker created again with the same name adopts
    /// them and devices that pinned its CA keep connecting; delete them
    /// with `kubectl delete secret <name>-ca <name>-clients-ca`.
    pub delete_with_broker: bool,
}

impl Default for CaSpec {
    fn default() -> Self {
        CaSpec {
            secret_name: None,
            overlap_days: default_overlap_days(),
            delete_with_broker: false,
        }
    }
}

/// A server certificate issued by cert-manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    /// The cert-manager Issuer or ClusterIssuer that signs the
    /// certificate.
    pub issuer_ref: IssuerReference,
    /// Whether the certificate names only `generated.extraSANs` and the
    /// load balancer's address, leaving out the Services' in-cluster DNS
    /// names: for issuers that refuse names they cannot verify, such as
    /// ACME (Let's Encrypt). In-cluster clients then connect by one of the
    /// public names. Default: false.
    #[serde(default)]
    pub public_names_only: bool,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerReference {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the broker's namespace) or `ClusterIssuer`. Default:
    /// Issuer.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// The issuer's API group. Default: cert-manager.io.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// A certificate the operator has issued and renews.
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
    /// balancer's address, which it always covers. The first DNS name
    /// without a wildcard is what users' Secrets give as `external-host`:
    /// point it at the load balancer.
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

/// Timing of the broker container's probes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProbesSpec {
    /// The startup probe (`/readyz`). Default: every 2 seconds, 60
    /// failures allowed (two minutes, for replaying a large persistence
    /// log), 1-second timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub startup: ProbeSpec,
    /// The liveness probe (`/healthz`). Default: every 10 seconds, 3
    /// failures, 1-second timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub liveness: ProbeSpec,
    /// The readiness probe (`/readyz`). Default: every 5 seconds, 2
    /// failures, 1-second timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub readiness: ProbeSpec,
}

/// One probe's timing; unset fields keep the probe's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProbeSpec {
    /// Seconds after the container starts before the first probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the probe fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<i32>,
}

fn default_replicas() -> i32 {
    1
}

fn default_overlap_days() -> i32 {
    30
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
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
