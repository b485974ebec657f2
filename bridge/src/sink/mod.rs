//! Sinks: where a route writes its records.
//!
//! Each sink writes a whole batch and says how it went: committed (with
//! how many records it already had), or an error that is transient (retry
//! later: a connection, a timeout, a 5xx) or permanent (this data will
//! never be accepted: a constraint, a 4xx, a refusal), with how many
//! leading records were committed before it.

pub(crate) mod amqp;
pub mod http;
pub mod mqtt;
pub(crate) mod nats;
pub mod postgres;

use crate::config::{RouteConfig, SinkConfig};
use crate::message::Record;

pub use postgres::PostgresSink;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retry after a while.
    Transient,
    /// The sink refuses this data; send it to the dead-letter destination.
    Permanent,
}

/// A failed write.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Transient or permanent.
    pub kind: ErrorKind,
    /// What happened, for the log and the status.
    pub message: String,
}

impl SinkError {
    /// A transient failure.
    pub fn transient(message: String) -> SinkError {
        SinkError {
            kind: ErrorKind::Transient,
            message,
        }
    }

    /// A permanent refusal.
    pub fn permanent(message: String) -> SinkError {
        SinkError {
            kind: ErrorKind::Permanent,
            message,
        }
    }
}

/// A result with a [`SinkError`].
pub type SinkResult<T> = Result<T, SinkError>;

/// A write that failed after `committed` leading records were stored.
#[derive(Debug, Clone)]
pub struct BatchError {
    /// Records stored before the failure (they are not written again).
    pub committed: usize,
    /// The failure.
    pub error: SinkError,
}

/// A committed batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Records the sink already had (same idempotency key) and skipped.
    pub deduplicated: u64,
}

/// A route's sink.
pub enum Sink {
    /// PostgreSQL.
    Postgres(postgres::PostgresSink),
    /// HTTP webhook.
    Http(http::HttpSink),
    /// NATS JetStream.
    Nats(nats::NatsSink),
    /// RabbitMQ.
    Amqp(amqp::AmqpSink),
    /// Another MQTT broker.
    Mqtt(mqtt::MqttSink),
}

impl Sink {
    /// The sink a route configures; connections open at the first write.
    pub fn new(bridge: &str, route: &RouteConfig) -> Result<Sink, SinkError> {
        Ok(match &route.sink {
            SinkConfig::Postgres(config) => {
                Sink::Postgres(postgres::PostgresSink::new(config.clone(), route))
            }
            SinkConfig::Http(config) => Sink::Http(http::HttpSink::new(config.clone())?),
            SinkConfig::Nats(config) => Sink::Nats(nats::NatsSink::new(config.clone())),
            SinkConfig::Amqp(config) => Sink::Amqp(amqp::AmqpSink::new(config.clone())),
            SinkConfig::Mqtt(config) => {
                Sink::Mqtt(mqtt::MqttSink::new(bridge, &route.name, config.clone()))
            }
        })
    }

    /// Whether the sink recognises a record it already has, so a retry
    /// cannot duplicate it.
    pub fn deduplicates(&self) -> bool {
        matches!(self, Sink::Postgres(_) | Sink::Nats(_))
    }

    /// Writes `batch`, all or a prefix.
    pub async fn write(&mut self, batch: &[Record]) -> Result<Written, BatchError> {
        match self {
            Sink::Postgres(sink) => sink.write(batch).await,
            Sink::Http(sink) => sink.write(batch).await,
            Sink::Nats(sink) => sink.write(batch).await,
            Sink::Amqp(sink) => sink.write(batch).await,
            Sink::Mqtt(sink) => sink.write(batch).await,
        }
    }
}

/// An error's message followed by its causes (`a: b: c`, a cause whose
/// text is already there left out), so that what went wrong deep in a
/// client library reaches the log and the status: `invalid peer
/// certificate: UnknownIssuer`, not only `error sending request`.
pub fn full_message(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A failed connection to `what` (the sink or command source and its
/// address: `PostgreSQL 10.0.0.5:5432`), transient: the message names it,
/// says what a failed TLS handshake means in the terms of its `tls` table
/// (the server's certificate not signed by `tls.ca_file`, not naming
/// `tls.server_name`, a client certificate refused), then the library's
/// own words.
pub fn connect_error(
    what: &str,
    error: &(dyn std::error::Error + 'static),
    tls: Option<&crate::config::TlsConfig>,
) -> SinkError {
    let detail = full_message(error);
    let default_tls = crate::config::TlsConfig::default();
    match crate::secrets::explain_tls_failure(error, tls.unwrap_or(&default_tls)) {
        Some(why) => {
            SinkError::transient(format!("{what}: TLS handshake failed: {why} ({detail})"))
        }
        None => SinkError::transient(format!("{what}: {detail}")),
    }
}

/// Leading successes of per-record outcomes, as a batch result.
fn prefix_outcome(outcomes: Vec<SinkResult<bool>>) -> Result<Written, BatchError> {
    let mut written = Written::default();
    for (committed, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(duplicate) => written.deduplicated += u64::from(duplicate),
            Err(error) => return Err(BatchError { committed, error }),
        }
    }
    Ok(written)
}
