//! The `MqttBridge` custom resource: device messages from a broker into a
//! database, a message queue or a web service, and commands from them back
//! to devices, run by `kubemqtt-bridge` pods the operator creates.
//!
//! Each route's expressions (`where`, `key`, `map`, sink targets) use the
//! bridge's expression language (docs/bridge.md); they are checked when
//! the operator plans the bridge, and an invalid one is reported in
//! `status.conditions` with the field it is in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BrokerReference;

/// Condition type: every replica runs and is subscribed on the broker.
pub const CONDITION_BRIDGE_READY: &str = "Ready";

/// Moves MQTT messages into sinks and commands back to devices.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubemqtt.io",
    version = "v1alpha1",
    kind = "MqttBridge",
    namespaced,
    shortname = "mqbr",
    category = "kubemqtt",
    doc = "A bridge from a KubeMQTT broker to databases, message queues and web services, and back.",
    status = "MqttBridgeStatus",
    derive = "PartialEq",
    cel,
    printcolumn(
        name = "Broker",
        type_ = "string",
        description = "The MqttBroker the bridge consumes from",
        json_path = ".spec.brokerRef.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Whether every replica runs and is subscribed",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Forwarded",
        type_ = "integer",
        description = "Messages committed by the sinks (running pods)",
        json_path = ".status.forwarded"
    ),
    printcolumn(
        name = "Dead",
        type_ = "integer",
        description = "Messages sent to dead-letter destinations (running pods)",
        json_path = ".status.deadLettered"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        description = "Messages taken from the broker and not yet committed",
        json_path = ".status.lag"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message(
        "metadata.name must be at most 40 characters: it prefixes the bridge's objects and client ids"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.routes) + size(self.commands) > 0")
    .message("a bridge needs at least one route or command source"))]
pub struct MqttBridgeSpec {
    /// The broker (an MqttBroker in the same namespace) to consume from
    /// and publish commands to. The operator creates an MqttUser
    /// `<bridge>-bridge` for the bridge, allowed exactly the topics its
    /// routes and commands use.
    pub broker_ref: BrokerReference,

    /// How the bridge connects to the broker.
    #[serde(default)]
    pub broker: BrokerConnectionSpec,

    /// Bridge pods. They share the work: each route is a shared
    /// subscription (`$share/<bridge>/<filter>`), so each message goes to
    /// one of them. Default: 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 32))]
    pub replicas: i32,

    /// The bridge image. Default: the operator's bridge image of its own
    /// version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// CPU and memory of each bridge pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where messages go: each route selects messages by topic (and
    /// condition), maps them and writes them to one sink.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(r, self.filter(s, s.name == r.name).size() == 1)")
        .message("route names must be unique"))]
    pub routes: Vec<RouteSpec>,

    /// Where commands for devices come from; each is published into the
    /// broker, then acknowledged to its source.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.filter(c, has(c.http)).size() <= 1")
        .message("at most one command source may be http (one POST /publish)"))]
    pub commands: Vec<CommandSpec>,
}

fn default_replicas() -> i32 {
    1
}

/// How the bridge reaches its broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerConnectionSpec {
    /// Connect over TLS (the broker's `mqtts` listener, verified with the
    /// CA in the bridge's credentials Secret). Default: true.
    pub tls: bool,
    /// Port; default 8883 with TLS, 1883 without.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// How many messages the broker may send before the bridge
    /// acknowledges them (MQTT 5 Receive Maximum): the in-flight window of
    /// each pod. Default: 1000.
    #[schemars(range(min = 1, max = 65535))]
    pub receive_maximum: u16,
    /// How long, in seconds, the broker keeps a pod's session (and queues
    /// messages for it) while the pod is away. Default: 86400.
    pub session_expiry_seconds: u32,
}

impl Default for BrokerConnectionSpec {
    fn default() -> Self {
        BrokerConnectionSpec {
            tls: true,
            port: None,
            receive_maximum: 1000,
            session_expiry_seconds: 86_400,
        }
    }
}

/// A key of a Secret in the bridge's namespace; the bridge reads it as a
/// file, so a changed Secret is used at the next connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct SecretKeySelector {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// TLS to a sink or command source. The server's certificate is always
/// verified: it must chain to a trusted CA and name the server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certSecretRef) == has(self.keySecretRef)")
    .message("certSecretRef and keySecretRef go together"))]
pub struct TlsSpec {
    /// The CA certificates (PEM) to verify the server with, and the only
    /// ones trusted. Absent: the system's CAs (the bridge image's bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeySelector>,
    /// A client certificate (PEM, leaf first), for servers that require
    /// one. Needs keySecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeySelector>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeySelector>,
    /// The name the server's certificate must carry, when it is not the
    /// host connected to (an IP address, or an alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// One route: messages matching `filters` (and `where`) go, mapped, to one
/// sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.deadLetter) || !has(self.deadLetter.table) || has(self.sink.postgres)")
    .message("a dead-letter table needs a postgres sink; use deadLetter.mqttTopic"))]
pub struct RouteSpec {
    /// The route's name (lower-case letters, digits and `-`): a metrics
    /// label and the `route` of its dead letters.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9-]+$"))]
    pub name: String,
    /// MQTT topic filters (`sensors/+/temp`, `plant/#`).
    #[schemars(length(min = 1, max = 16))]
    pub filters: Vec<String>,
    /// QoS of the subscription: 1 (at least once, default) or 0.
    #[serde(default = "default_qos")]
    #[schemars(range(min = 0, max = 1))]
    pub qos: u8,
    /// Condition a message must meet, e.g. `payload.temp > 30 &&
    /// segment(topic, 1) == 'kitchen'`. Messages it rejects are
    /// acknowledged and counted as filtered.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<String>,
    /// What makes two deliveries the same message, hashed with the topic
    /// and the publisher's client id into the idempotency key. Default:
    /// `coalesce(props.seq, sha256(payload_text))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Column (postgres) or JSON field (other sinks) name → expression,
    /// e.g. `device: segment(topic, 1)`, `celsius: payload.temp`, `at:
    /// received_at`. Empty: the payload as it came.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, String>,
    /// When a batch is written.
    #[serde(default)]
    pub batch: BatchSpec,
    /// Backoff between attempts after a transient failure (retried without
    /// limit; the broker holds the messages meanwhile).
    #[serde(default)]
    pub retry: RetrySpec,
    /// The sink: exactly one of its fields.
    pub sink: SinkSpec,
    /// Where messages the sink refuses for good (or whose expressions fail)
    /// go. Without one they are retried like transient failures: nothing
    /// is dropped, and the route stalls until the cause is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
}

fn default_qos() -> u8 {
    1
}

/// Batching of a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct BatchSpec {
    /// Write once this many messages wait. Default: 100.
    #[schemars(range(min = 1, max = 10000))]
    pub max_messages: u32,
    /// ... or once the oldest has waited this many milliseconds. Default:
    /// 20.
    #[schemars(range(max = 60000))]
    pub linger_ms: u32,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_messages: 100,
            linger_ms: 20,
        }
    }
}

/// Exponential backoff.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RetrySpec {
    /// First wait in milliseconds, doubled after each failure. Default:
    /// 100.
    #[schemars(range(min = 1, max = 600000))]
    pub initial_ms: u32,
    /// Longest wait in milliseconds. Default: 30000.
    #[schemars(range(min = 1, max = 3600000))]
    pub max_ms: u32,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            initial_ms: 100,
            max_ms: 30_000,
        }
    }
}

/// The sink of a route: set exactly one field.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.postgres), has(self.http), has(self.nats), has(self.amqp), has(self.mqtt)].filter(x, x).size() == 1")
    .message("set exactly one sink: postgres, http, nats, amqp or mqtt"))]
pub struct SinkSpec {
    /// Rows in a PostgreSQL table (a multi-row insert per batch; a row
    /// whose idempotency key is there already is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSinkSpec>,
    /// POSTs to a web service, signed with HMAC-SHA256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSinkSpec>,
    /// Messages on NATS JetStream (deduplicated by `Nats-Msg-Id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSinkSpec>,
    /// Messages on a RabbitMQ exchange (publisher confirms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpSinkSpec>,
    /// Messages on another MQTT broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSinkSpec>,
}

/// A PostgreSQL sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSinkSpec {
    /// libpq-style connection string without the password:
    /// `host=db.data.svc port=5432 user=bridge dbname=iot`.
    #[schemars(length(min = 1))]
    pub connection: String,
    /// The password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// The table (`readings` or `schema.readings`); its columns are the
    /// route's `map` keys plus `keyColumn`.
    #[schemars(length(min = 1))]
    pub table: String,
    /// The column holding the idempotency key; give it a unique index.
    /// Default: `mqtt_key`.
    #[serde(default = "default_key_column")]
    pub key_column: String,
    /// TLS to the database, then required (never the plain-text fallback
    /// of libpq's default `sslmode=prefer`), the certificate and its name
    /// verified as with `sslmode=verify-full`. Without it,
    /// `sslmode=require` in `connection` means TLS with the system's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

fn default_key_column() -> String {
    "mqtt_key".into()
}

/// One POST per message or per batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpModeSpec {
    /// One message per request (default).
    #[default]
    Single,
    /// A JSON array per batch.
    Batch,
}

/// A webhook sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tls) || self.url.startsWith('https://')")
    .message("tls needs an https:// url"))]
pub struct HttpSinkSpec {
    /// `http://` or `https://` URL to POST to.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// `single` (default) or `batch`.
    #[serde(default)]
    pub mode: HttpModeSpec,
    /// Key for the `X-KubeMQTT-Signature: sha256=<hex HMAC of the body>`
    /// header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretKeySelector>,
    /// Token for `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretKeySelector>,
    /// TLS settings of an `https://` URL (without them, `https://`
    /// trusts the system's CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Request timeout in milliseconds (a timeout is retried). Default:
    /// 10000.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 100, max = 600000))]
    pub timeout_ms: u32,
}

fn default_timeout_ms() -> u32 {
    10_000
}

/// A JetStream sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSinkSpec {
    /// Server URL, `nats://nats.messaging.svc:4222`.
    pub url: String,
    /// Subject (expression), e.g. `'iot.' + replace(topic, '/', '.')`. A
    /// stream must take it.
    pub subject: String,
    /// User name (with `passwordSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeySelector>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// Token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeySelector>,
    /// TLS (required when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A RabbitMQ sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tls) || self.url.startsWith('amqps://')")
    .message("tls needs an amqps:// url"))]
pub struct AmqpSinkSpec {
    /// `amqp://user@host:5672/vhost` (or `amqps://`), without a password.
    #[schemars(regex(pattern = r"^amqps?://"))]
    pub url: String,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// Exchange; empty (default) is the default exchange, which routes by
    /// queue name.
    #[serde(default)]
    pub exchange: String,
    /// Routing key (expression), e.g. `'readings'` or `segment(topic, 1)`.
    pub routing_key: String,
    /// TLS settings of an `amqps://` URL (without them, `amqps://` trusts
    /// the system's CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// Another MQTT broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttSinkSpec {
    /// Host of the remote broker.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Port. Default: 1883.
    #[serde(default = "default_mqtt_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Topic there (expression). Default: `topic`, the same topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// QoS of the publishes: 1 (default) or 2.
    #[serde(default = "default_qos")]
    #[schemars(range(min = 1, max = 2))]
    pub qos: u8,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeySelector>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// TLS (required when set; the remote broker's TLS port, usually
    /// 8883).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

fn default_mqtt_port() -> u16 {
    1883
}

fn default_topic() -> String {
    "topic".into()
}

/// A dead-letter destination: set exactly one field.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.mqttTopic) != has(self.table)")
    .message("set exactly one of mqttTopic and table"))]
pub struct DeadLetterSpec {
    /// A topic on the source broker; each refused message is published
    /// there as JSON (route, topic, client_id, key, error, payload,
    /// received_at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_topic: Option<String>,
    /// A table in the route's PostgreSQL database with columns `key text
    /// primary key, route text, topic text, client_id text, error text,
    /// payload bytea, received_at timestamptz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// A source of commands for devices: set exactly one of `http`, `nats`
/// and `amqp`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.http), has(self.nats), has(self.amqp)].filter(x, x).size() == 1")
    .message("set exactly one command source: http, nats or amqp"))]
pub struct CommandSpec {
    /// The source's name (lower-case letters, digits and `-`).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9-]+$"))]
    pub name: String,
    /// `POST /publish` on the bridge's Service (port 9090), with
    /// `Authorization: Bearer <token>` and a JSON body `{"topic": ...,
    /// "payload": ..., "qos": 1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCommandSpec>,
    /// A durable JetStream consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsCommandSpec>,
    /// A RabbitMQ queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpCommandSpec>,
    /// The MQTT topic (expression over `subject` or `routing_key`,
    /// `headers.<name>` and `payload`). Default: `headers.topic`.
    /// `POST /publish` names the topic in the request instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// QoS of the publish into the broker. Default: 1.
    #[serde(default = "default_qos")]
    #[schemars(range(min = 0, max = 2))]
    pub qos: u8,
    /// Topic filters commands may publish to (e.g.
    /// `devices/+/commands`); anything else is refused. Empty: any topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_topics: Vec<String>,
}

/// The `POST /publish` command source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCommandSpec {
    /// The bearer token callers must present.
    pub token_secret_ref: SecretKeySelector,
}

/// A JetStream command source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsCommandSpec {
    /// Server URL.
    pub url: String,
    /// The stream holding the commands.
    pub stream: String,
    /// Durable consumer name (created if missing).
    pub consumer: String,
    /// Subject filter of the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    /// Token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeySelector>,
    /// TLS (required when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A RabbitMQ command source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tls) || self.url.startsWith('amqps://')")
    .message("tls needs an amqps:// url"))]
pub struct AmqpCommandSpec {
    /// URL without the password.
    #[schemars(regex(pattern = r"^amqps?://"))]
    pub url: String,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// The queue (declared durable if missing).
    pub queue: String,
    /// TLS settings of an `amqps://` URL (without them, `amqps://` trusts
    /// the system's CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// What the operator reports about a bridge; the counters add up the
/// running pods' (they restart from zero with a pod).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttBridgeStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: every replica runs and is subscribed on the broker; or why
    /// not (`InvalidSpec` names the field at fault).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,
    /// Pods wanted.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Messages committed by the sinks.
    #[serde(default)]
    pub forwarded: i64,
    /// Failed write attempts, counted per message.
    #[serde(default)]
    pub failed: i64,
    /// Messages sent to dead-letter destinations.
    #[serde(default)]
    pub dead_lettered: i64,
    /// Messages taken from the broker and not yet committed and
    /// acknowledged.
    #[serde(default)]
    pub lag: i64,
    /// The latest error any pod reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<BridgeErrorStatus>,
}

/// An error a bridge pod reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeErrorStatus {
    /// The route or command source (`source` for the broker connection).
    pub route: String,
    /// What happened.
    pub message: String,
    /// When (RFC 3339).
    pub time: String,
}

#[cfg(test)]
mod tests;
