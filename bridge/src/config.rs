//! The bridge's configuration file: which broker, which topics, how each
//! message is selected and mapped, and which sink it goes to.
//!
//! The file is TOML (`bridge.toml`) or YAML (`bridge.yaml`), chosen by its
//! extension; the operator renders TOML into a ConfigMap. Every secret
//! (passwords, tokens, keys) is named by a file path, never written inline:
//! in a pod those files are mounted Secrets. [`BridgeConfig::load`] reads
//! and checks a file; an error names the line, the key and what is wrong.
//!
//! The reference with an example for each sink is docs/bridge.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod check;

pub use check::CompiledRoute;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or YAML for this schema; the message
    /// names the line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A value is well-formed but not usable (an expression that does not
    /// parse, a route without filters, two routes with one name).
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file, as a dotted key (`routes[0].where`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A whole bridge configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The bridge's name: the shared subscription group
    /// (`$share/<name>/<filter>`) and the prefix of its client ids.
    pub name: String,
    /// The broker the messages come from and commands go to.
    pub broker: BrokerConfig,
    /// The metrics, health and command HTTP server.
    #[serde(default)]
    pub http: HttpServerConfig,
    /// Where messages go: one sink per route.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where commands for devices come from.
    #[serde(default)]
    pub commands: Vec<CommandConfig>,
}

/// The source broker, reached as an ordinary MQTT 5 client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// Port (1883, or 8883 with TLS).
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id of the consuming session. Default: `<name>-<HOSTNAME>`,
    /// stable across restarts of one pod so its session (and the messages
    /// queued in it) survives.
    #[serde(default)]
    pub client_id: Option<String>,
    /// File holding the user name (a mounted Secret key).
    #[serde(default)]
    pub username_file: Option<PathBuf>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the broker; absent means plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// How long the broker keeps the session (and queues messages for it)
    /// while the bridge is away, in seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// How many unacknowledged messages the broker may send at once
    /// (MQTT 5 Receive Maximum): the bridge's in-flight window.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// The user property carrying the publisher's client id, used by the
    /// idempotency key and the `client_id` field (MQTT does not tell a
    /// subscriber who published).
    #[serde(default = "default_client_id_property")]
    pub client_id_property: String,
    /// Largest packet the bridge accepts from the broker, in bytes (MQTT 5
    /// Maximum Packet Size; the broker drops larger messages for it).
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: u32,
}

/// TLS for a connection the bridge opens. The server's certificate is
/// always verified: it must chain to a trusted CA and name the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA bundle to trust (and only it); absent: the system's trust
    /// store (the image's CA bundle, or `SSL_CERT_FILE`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name the server's certificate must carry, when it differs from the
    /// host connected to (an IP address, or an alias).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The bridge's own HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// Address to listen on: `/metrics`, `/healthz`, `/readyz`, `/status`
    /// and, with a token, `POST /publish`.
    #[serde(default = "default_http_bind")]
    pub bind: String,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            bind: default_http_bind(),
        }
    }
}

/// One route: messages matching `filters` (and `where`) go, mapped, to one
/// sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name: a metrics label and the dead-letter record's `route`.
    pub name: String,
    /// MQTT topic filters (`sensors/+/temp`, `plant/#`); each is consumed
    /// as `$share/<bridge>/<filter>`.
    pub filters: Vec<String>,
    /// QoS of the subscription: 1 (at least once, the default) or 0.
    #[serde(default = "default_qos1")]
    pub qos: u8,
    /// Condition a message must meet (expression language), e.g.
    /// `payload.temp > 30`. Messages failing it are acknowledged and
    /// counted as filtered.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// What makes two deliveries the same message (expression); hashed
    /// with the topic and the publisher's client id. Default:
    /// `coalesce(props.seq, sha256(payload_text))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Column (or JSON field) name → expression. Absent: the sink gets the
    /// payload as it came (JSON sinks) or a `payload` column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, String>,
    /// Batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Retry of transient failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The sink.
    pub sink: SinkConfig,
    /// Where permanently refused messages go. Without one, a refused
    /// message is retried like a transient failure (nothing is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
}

/// When a batch is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Write once this many messages are waiting.
    #[serde(default = "default_batch_size")]
    pub max_messages: usize,
    /// ... or once the oldest has waited this long (milliseconds).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_messages: default_batch_size(),
            linger_ms: default_linger_ms(),
        }
    }
}

/// Backoff between attempts of a failed write; transient failures are
/// retried without limit (the broker holds the messages meanwhile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First wait, milliseconds; doubled each attempt.
    #[serde(default = "default_retry_initial")]
    pub initial_ms: u64,
    /// Longest wait, milliseconds.
    #[serde(default = "default_retry_max")]
    pub max_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: default_retry_initial(),
            max_ms: default_retry_max(),
        }
    }
}

/// The sink of a route: exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Rows in a PostgreSQL table.
    Postgres(PostgresSink),
    /// HTTP POSTs to a web service.
    Http(HttpSink),
    /// Messages on a NATS JetStream stream.
    Nats(NatsSink),
    /// Messages on a RabbitMQ (AMQP 0-9-1) exchange.
    Amqp(AmqpSink),
    /// Messages on another MQTT broker.
    Mqtt(MqttSink),
}

impl SinkConfig {
    /// The sink's kind, its URL (for the kinds that have one) and its TLS.
    pub fn connection(&self) -> (&'static str, Option<&str>, Option<&TlsConfig>) {
        match self {
            SinkConfig::Postgres(pg) => ("postgres", None, pg.connection.tls.as_ref()),
            SinkConfig::Http(http) => ("http", Some(&http.url), http.tls.as_ref()),
            SinkConfig::Nats(nats) => ("nats", Some(&nats.url), nats.tls.as_ref()),
            SinkConfig::Amqp(amqp) => ("amqp", Some(&amqp.url), amqp.tls.as_ref()),
            SinkConfig::Mqtt(mqtt) => ("mqtt", None, mqtt.broker.tls.as_ref()),
        }
    }

    /// The sink's kind, as in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Http(_) => "http",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Amqp(_) => "amqp",
            SinkConfig::Mqtt(_) => "mqtt",
        }
    }
}

/// A PostgreSQL connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// Connection string without the password
    /// (`host=db port=5432 user=bridge dbname=iot`).
    pub connection: String,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS, then required (never the plain-text fallback of
    /// `sslmode=prefer`); the server certificate and its name are verified,
    /// as with libpq's `sslmode=verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Rows into a table: one per message, columns from `map`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSink {
    /// The database.
    #[serde(flatten)]
    pub connection: PostgresConnection,
    /// Table name, optionally schema-qualified (`public.readings`).
    pub table: String,
    /// Column holding the idempotency key; it needs a unique index, and
    /// rows whose key is there already are skipped (`ON CONFLICT DO
    /// NOTHING`).
    #[serde(default = "default_key_column")]
    pub key_column: String,
}

/// POSTs to a URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSink {
    /// `http://` or `https://` URL.
    pub url: String,
    /// One message per request (`single`, the default) or a JSON array
    /// (`batch`).
    #[serde(default)]
    pub mode: HttpMode,
    /// File holding the HMAC-SHA256 key; each request then carries
    /// `X-KubeMQTT-Signature: sha256=<hex of HMAC(body)>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
    /// File holding a bearer token for `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// TLS settings for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Request timeout, milliseconds; a timeout is retried.
    #[serde(default = "default_http_timeout")]
    pub timeout_ms: u64,
}

/// Single or batched webhook requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HttpMode {
    /// One POST per message, its body the mapped JSON.
    #[default]
    Single,
    /// One POST per batch, a JSON array.
    Batch,
}

/// Publishes to NATS JetStream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSink {
    /// Server URL(s), `nats://host:4222`.
    pub url: String,
    /// Subject (expression), e.g. `"'iot.' + replace(topic, '/', '.')"`.
    pub subject: String,
    /// File holding a user name (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Publishes to a RabbitMQ exchange with publisher confirms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSink {
    /// `amqp://user@host:5672/%2f` or `amqps://...`, without a password.
    pub url: String,
    /// File holding the password, put into the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Exchange (`""` is the default exchange, routing by queue name).
    #[serde(default)]
    pub exchange: String,
    /// Routing key (expression).
    pub routing_key: String,
    /// TLS for `amqps://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Publishes to another MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSink {
    /// The remote broker.
    #[serde(flatten)]
    pub broker: RemoteBroker,
    /// Topic on the remote broker (expression); default: the same topic.
    #[serde(default = "default_topic_expr")]
    pub topic: String,
    /// QoS of the publishes: 1 (default) or 2.
    #[serde(default = "default_qos1")]
    pub qos: u8,
}

/// Connection to a broker the bridge only publishes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteBroker {
    /// Host.
    pub host: String,
    /// Port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id; default `<bridge>-<route>-<HOSTNAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// File holding the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Where permanently refused messages go: exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// A JSON record published at QoS 1 on this topic of the source broker.
    MqttTopic(String),
    /// A row in this table of the route's PostgreSQL database (postgres
    /// sinks only), columns `key text primary key, route text, topic text,
    /// client_id text, error text, payload bytea, received_at timestamptz`.
    Table(String),
}

/// A source of commands, published into the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Name: a metrics label.
    pub name: String,
    /// Where the commands come from.
    pub from: CommandSource,
    /// MQTT topic (expression over `subject`, `routing_key`,
    /// `headers.<name>`, `payload`); `POST /publish` names its topic in the
    /// request instead.
    #[serde(default = "default_command_topic")]
    pub topic: String,
    /// QoS of the publish into the broker (`POST /publish` may ask for
    /// another).
    #[serde(default = "default_qos1")]
    pub qos: u8,
    /// Topic filters the commands may publish to; empty allows any topic
    /// the bridge's user may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_topics: Vec<String>,
}

/// A command source: exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandSource {
    /// `POST /publish` on the bridge's HTTP server, with
    /// `Authorization: Bearer <token>`.
    Http {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// A durable JetStream consumer.
    Nats {
        /// Server URL.
        url: String,
        /// Stream name.
        stream: String,
        /// Durable consumer name (created if missing).
        consumer: String,
        /// Subject filter of the consumer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter_subject: Option<String>,
        /// File holding a token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
        /// TLS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<TlsConfig>,
    },
    /// A RabbitMQ queue.
    Amqp {
        /// URL without the password.
        url: String,
        /// File holding the password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        /// Queue (declared durable if missing).
        queue: String,
        /// TLS for `amqps://`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<TlsConfig>,
    },
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> u16 {
    30
}
fn default_session_expiry() -> u32 {
    86_400
}
fn default_receive_maximum() -> u16 {
    1000
}
fn default_client_id_property() -> String {
    "client_id".into()
}
fn default_max_packet_bytes() -> u32 {
    1024 * 1024
}
fn default_http_bind() -> String {
    "0.0.0.0:9090".into()
}
fn default_qos1() -> u8 {
    1
}
fn default_batch_size() -> usize {
    100
}
fn default_linger_ms() -> u64 {
    20
}
fn default_retry_initial() -> u64 {
    100
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_key_column() -> String {
    "mqtt_key".into()
}
fn default_http_timeout() -> u64 {
    10_000
}
fn default_topic_expr() -> String {
    "topic".into()
}
fn default_command_topic() -> String {
    "headers.topic".into()
}

/// The default idempotency key expression: a device-supplied `seq` user
/// property, or else the hash of the payload.
pub const DEFAULT_KEY: &str = "coalesce(props.seq, sha256(payload_text))";

impl BridgeConfig {
    /// Reads, parses and checks a TOML or YAML file (by extension; `.yaml`
    /// and `.yml` are YAML, anything else TOML).
    pub fn load(path: &Path) -> Result<BridgeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let config = if yaml {
            BridgeConfig::from_yaml(&text)
        } else {
            BridgeConfig::from_toml(&text)
        };
        config.map_err(|error| error.in_file(path))
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<BridgeConfig, ConfigError> {
        let config: BridgeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and checks YAML text.
    pub fn from_yaml(text: &str) -> Result<BridgeConfig, ConfigError> {
        let config: BridgeConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The TOML text of this configuration (what the operator renders).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

impl ConfigError {
    fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: file.to_owned(),
                message,
            },
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: file.to_owned(),
                key,
                message,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
