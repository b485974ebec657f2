//! The parts of an `MqttBroker`'s spec that make it a cluster of pods:
//! `spec.cluster` (the NATS the pods share), `spec.autoscaling` and
//! `spec.drain`.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rebalance::RebalanceSpec;

/// Several broker pods sharing one NATS with JetStream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The NATS JetStream cluster the broker pods share: `managed` (the
    /// operator runs three NATS servers for this broker) or `external`
    /// (yours).
    pub nats: NatsSpec,
    /// Prefix of every NATS subject, stream and key-value bucket of this
    /// broker, so that several brokers can share one NATS: letters,
    /// digits, `-` and `_`. Default: the broker's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: Option<String>,
    /// JetStream replicas of the broker's streams and buckets (1 to 5, at
    /// most the number of NATS servers). Default: 3, or 1 for an external
    /// NATS given a single URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub stream_replicas: Option<u8>,
    /// How the operator spreads clients over the pods after a scale-up.
    /// Default: on, within 10% of the mean, at most 25% of a pod's clients
    /// per round, 50 clients a second.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rebalance: RebalanceSpec,
}

/// Where the NATS of a cluster comes from: exactly one of `external` and
/// `managed`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.external) != has(self.managed)")
    .message("set exactly one of spec.cluster.nats.external and spec.cluster.nats.managed"))]
pub struct NatsSpec {
    /// A NATS with JetStream that you run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalNatsSpec>,
    /// A NATS the operator runs for this broker: a StatefulSet of three
    /// JetStream servers (`<name>-nats`) with its Services, its
    /// PodDisruptionBudget, a volume per server, and TLS between the
    /// servers and to the brokers from a CA the operator keeps
    /// (`<name>-nats-ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedNatsSpec>,
}

/// A NATS with JetStream run outside the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalNatsSpec {
    /// Its servers' URLs (`nats://host:4222`, or `tls://host:4222` for
    /// TLS); the other servers of its cluster are discovered.
    #[schemars(length(min = 1))]
    pub urls: Vec<String>,
    /// How the brokers log in; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<NatsCredentialsSpec>,
    /// TLS to NATS: the CA its servers' certificates are checked against,
    /// and a client certificate. Default: with `tls://` URLs, the system's
    /// roots and no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTlsSpec>,
}

/// NATS credentials, from a Secret in the broker's namespace mounted into
/// the broker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'UserPassword' || has(self.user)")
    .message("credentials of type UserPassword need user"))]
pub struct NatsCredentialsSpec {
    /// The kind of credentials: `Creds` (a `.creds` file: JWT and NKey
    /// seed), `UserPassword`, `Token` or `Nkey` (an NKey seed, `SU...`).
    #[serde(rename = "type")]
    pub type_: NatsCredentialsType,
    /// The Secret holding them.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The key in the Secret. Default: `nats.creds`, `password`, `token`
    /// or `nkey.seed`, after the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
    /// The NATS user name (type UserPassword only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,
}

/// The kinds of NATS credentials the broker accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NatsCredentialsType {
    /// A credentials file (JWT and NKey seed, `.creds`).
    Creds,
    /// A user name (`user`) and the password in the Secret.
    UserPassword,
    /// A token.
    Token,
    /// An NKey seed.
    Nkey,
}

impl NatsCredentialsType {
    /// The Secret key read when the spec names none.
    pub fn default_key(self) -> &'static str {
        match self {
            NatsCredentialsType::Creds => "nats.creds",
            NatsCredentialsType::UserPassword => "password",
            NatsCredentialsType::Token => "token",
            NatsCredentialsType::Nkey => "nkey.seed",
        }
    }
}

/// TLS to an external NATS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caSecretName) && has(self.caConfigMapName))")
    .message("set either caSecretName or caConfigMapName, not both"))]
pub struct NatsTlsSpec {
    /// A Secret holding the CA certificates (PEM) the NATS servers'
    /// certificates are checked against, under `caKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: Option<String>,
    /// A ConfigMap holding them instead, under `caKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_config_map_name: Option<String>,
    /// The key of the CA certificates. Default: `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_key: Option<String>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) whose
    /// certificate the brokers present to NATS servers that verify
    /// clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_certificate_secret_name: Option<String>,
}

/// The NATS the operator runs: three JetStream servers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ManagedNatsSpec {
    /// The NATS server image. Default: the official image the operator
    /// pins (`nats:2.10.24-alpine`); set it to use a mirror of that image.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// The JetStream volume of each server.
    pub storage: NatsStorageSpec,
    /// CPU and memory of each NATS server. Default: requests of 100m CPU
    /// and 256Mi memory, and a 1Gi memory limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The JetStream volume of each managed NATS server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct NatsStorageSpec {
    /// Size of each server's volume. Default: 10Gi.
    pub size: Quantity,
    /// StorageClass of the volumes. Default: the cluster's default class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for NatsStorageSpec {
    fn default() -> Self {
        NatsStorageSpec {
            size: Quantity("10Gi".to_owned()),
            storage_class_name: None,
        }
    }
}

/// Scaling with the load.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not be above maxReplicas"))]
#[x_kube(validation = Rule::new("self.provider != 'keda' || has(self.keda)")
    .message("provider keda needs keda.prometheusServerAddress"))]
pub struct AutoscalingSpec {
    /// The fewest broker pods. Default: 2.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// The most broker pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// What the autoscaler aims at; it adds pods when any target is
    /// exceeded.
    pub targets: AutoscalingTargets,
    /// How fast it scales.
    #[serde(default, skip_serializing_if = "is_default")]
    pub behavior: AutoscalingBehavior,
    /// `hpa` (a HorizontalPodAutoscaler, with the connection and message
    /// targets served by the Prometheus Adapter) or `keda` (a KEDA
    /// ScaledObject querying Prometheus itself). Default: hpa.
    #[serde(default)]
    pub provider: AutoscalingProvider,
    /// Settings of the KEDA ScaledObject (provider keda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keda: Option<KedaSpec>,
}

/// The autoscaler's targets; at least one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.cpuUtilization) || has(self.connectionsPerReplica) || has(self.messagesPerSecondPerReplica)"
).message("set at least one autoscaling target"))]
pub struct AutoscalingTargets {
    /// Average CPU use of the broker containers, in percent of their CPU
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub cpu_utilization: Option<i32>,
    /// Average client connections per broker pod (the broker's
    /// `kubemqtt_connections`, summed over its listeners). Also the
    /// number of clients a stopping pod is expected to hand over, unless
    /// `spec.drain.expectedConnectionsPerReplica` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections_per_replica: Option<i64>,
    /// Average PUBLISH packets received per second per broker pod (the
    /// rate of the broker's `kubemqtt_messages_received_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub messages_per_second_per_replica: Option<i64>,
}

/// How fast the autoscaler moves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AutoscalingBehavior {
    /// Seconds of recommendations the autoscaler looks back over before
    /// scaling up (it takes the lowest): 0 scales up at once. Default: 0.
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: i32,
    /// Seconds of recommendations it looks back over before scaling down
    /// (it takes the highest), so that a short dip does not remove pods
    /// whose clients must then reconnect. Default: 300.
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

impl Default for AutoscalingBehavior {
    fn default() -> Self {
        AutoscalingBehavior {
            scale_up_stabilization_seconds: 0,
            scale_down_stabilization_seconds: 300,
        }
    }
}

/// The object that scales the broker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingProvider {
    /// An `autoscaling/v2` HorizontalPodAutoscaler.
    #[default]
    Hpa,
    /// A KEDA `ScaledObject` (KEDA must be installed).
    Keda,
}

/// Settings of a KEDA ScaledObject.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KedaSpec {
    /// The Prometheus that scrapes the broker pods, as KEDA reaches it
    /// (`http://prometheus-operated.monitoring.svc:9090`).
    #[schemars(length(min = 1))]
    pub prometheus_server_address: String,
    /// Seconds between two KEDA checks. Default: 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub polling_interval_seconds: Option<i32>,
}

/// How a stopping broker pod hands its clients over.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DrainSpec {
    /// Clients a stopping pod disconnects per second (MQTT 5.0 clients are
    /// told to reconnect; with `spec.cluster` their sessions move to the
    /// pod they reconnect to), so that the other pods are not stampeded.
    /// 0 disconnects everyone at once. Default: 500, or `drain.rate_per_sec`
    /// of `spec.config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub rate_per_second: Option<u32>,
    /// Clients one pod is expected to hold. The pods' termination grace
    /// period is long enough to disconnect them all at `ratePerSecond`
    /// (and at least 30 seconds). Default:
    /// `autoscaling.targets.connectionsPerReplica`, else none (30 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub expected_connections_per_replica: Option<i64>,
}

fn default_min_replicas() -> i32 {
    2
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
