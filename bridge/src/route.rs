//! A route's task: select and map each delivered message, batch the
//! records, write each batch to the sink (retrying transient failures with
//! backoff), send what the sink refuses for good to the dead-letter
//! destination, and only then release each message for acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{BatchConfig, CompiledRoute, DeadLetterConfig, RetryConfig};
use crate::message::{Message, Record, Selected};
use crate::metrics::Metrics;
use crate::mqtt::{Outbound, Publisher};
use crate::sink::postgres::DeadRecord;
use crate::sink::{ErrorKind, Sink, SinkError};
use crate::source::{AckToken, Delivery};

/// Where a route's refused messages go.
pub enum DeadLetter {
    /// A JSON record published on the source broker.
    Mqtt {
        /// The connection.
        publisher: Arc<Publisher>,
        /// The topic.
        topic: String,
    },
    /// A row in a table of the route's PostgreSQL database.
    Table(String),
}

/// A batch is also written once no message came for this long: the
/// broker sends at most its in-flight window of unacknowledged messages
/// (`limits.max_inflight`), so a batch that stops growing is as full as it
/// gets, and waiting out the linger would only add latency.
pub const IDLE_FLUSH: Duration = Duration::from_millis(2);

/// Exponential backoff.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(retry: &RetryConfig) -> Backoff {
        Backoff {
            next: Duration::from_millis(retry.initial_ms.max(1)),
            max: Duration::from_millis(retry.max_ms.max(retry.initial_ms).max(1)),
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// One route, ready to run.
pub struct Route {
    /// The route's name.
    pub name: String,
    /// Its expressions.
    pub compiled: CompiledRoute,
    /// Its sink.
    pub sink: Sink,
    /// Its dead-letter destination.
    pub dead_letter: Option<DeadLetter>,
    /// Batching.
    pub batch: BatchConfig,
    /// Backoff.
    pub retry: RetryConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// What is refused: a record, or a message whose expressions failed.
enum Refused<'a> {
    Record(&'a Record),
    Message(&'a Message),
}

impl Route {
    /// Runs until the source closes the channel, then writes what is left.
    pub async fn run(mut self, mut deliveries: mpsc::Receiver<Delivery>) {
        let mut records: Vec<Record> = Vec::new();
        let mut tokens: Vec<Arc<AckToken>> = Vec::new();
        let mut deadline = Instant::now();
        let mut idle_until = Instant::now();
        loop {
            let delivery = if records.is_empty() {
                deliveries.recv().await
            } else {
                tokio::select! {
                    delivery = deliveries.recv() => delivery,
                    () = tokio::time::sleep_until(deadline.min(idle_until)) => {
                        self.flush(&mut records, &mut tokens).await;
                        continue;
                    }
                }
            };
            let Some(Delivery { message, token }) = delivery else {
                self.flush(&mut records, &mut tokens).await;
                return;
            };
            match self.compiled.apply(&message) {
                Ok(Selected::Record(record)) => {
                    if records.is_empty() {
                        deadline = Instant::now() + Duration::from_millis(self.batch.linger_ms);
                    }
                    records.push(record);
                    tokens.push(token);
                    idle_until = Instant::now() + IDLE_FLUSH;
                    if records.len() >= self.batch.max_messages {
                        self.flush(&mut records, &mut tokens).await;
                    }
                }
                Ok(Selected::Filtered) => {
                    self.metrics.filtered.with_label_values(&[&self.name]).inc();
                    token.complete();
                }
                Err(error) => {
                    let error = SinkError::permanent(format!("expression: {error}"));
                    self.refuse(Refused::Message(&message), &error).await;
                    token.complete();
                }
            }
        }
    }

    /// Writes the batch until every record is committed or dead-lettered.
    async fn flush(&mut self, records: &mut Vec<Record>, tokens: &mut Vec<Arc<AckToken>>) {
        if records.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let name = self.name.clone();
        let label = [name.as_str()];
        let mut done = 0;
        let mut backoff = Backoff::new(&self.retry);
        while done < records.len() {
            let pending = &records[done..];
            match self.sink.write(pending).await {
                Ok(written) => {
                    self.metrics
                        .forwarded
                        .with_label_values(&label)
                        .inc_by(pending.len() as u64);
                    self.metrics
                        .deduplicated
                        .with_label_values(&label)
                        .inc_by(written.deduplicated);
                    for token in &tokens[done..] {
                        token.complete();
                    }
                    done = records.len();
                }
                Err(failure) => {
                    self.metrics
                        .forwarded
                        .with_label_values(&label)
                        .inc_by(failure.committed as u64);
                    for token in &tokens[done..done + failure.committed] {
                        token.complete();
                    }
                    done += failure.committed;
                    let left = (records.len() - done) as u64;
                    self.metrics.failed.with_label_values(&label).inc_by(left);
                    self.metrics
                        .error(&self.name, failure.error.message.clone());
                    tracing::warn!(route = %self.name, kind = ?failure.error.kind, "write failed: {}", failure.error.message);
                    match failure.error.kind {
                        ErrorKind::Transient => {
                            if !self.sink.deduplicates() {
                                self.metrics.resent.with_label_values(&label).inc_by(left);
                            }
                            backoff.wait().await;
                        }
                        ErrorKind::Permanent if left == 1 => {
                            if !self
                                .refuse(Refused::Record(&records[done]), &failure.error)
                                .await
                            {
                                backoff.wait().await;
                                continue;
                            }
                            tokens[done].complete();
                            done += 1;
                        }
                        ErrorKind::Permanent => {
                            // Find the culprits: write the rest one by one.
                            for i in done..records.len() {
                                self.write_one(&records[i]).await;
                                tokens[i].complete();
                            }
                            done = records.len();
                        }
                    }
                }
            }
        }
        self.metrics
            .batch_seconds
            .with_label_values(&label)
            .observe(started.elapsed().as_secs_f64());
        records.clear();
        tokens.clear();
    }

    /// Writes one record until it is committed or dead-lettered.
    async fn write_one(&mut self, record: &Record) {
        let name = self.name.clone();
        let label = [name.as_str()];
        let mut backoff = Backoff::new(&self.retry);
        loop {
            match self.sink.write(std::slice::from_ref(record)).await {
                Ok(written) => {
                    self.metrics.forwarded.with_label_values(&label).inc();
                    self.metrics
                        .deduplicated
                        .with_label_values(&label)
                        .inc_by(written.deduplicated);
                    return;
                }
                Err(failure) => {
                    self.metrics.failed.with_label_values(&label).inc();
                    self.metrics
                        .error(&self.name, failure.error.message.clone());
                    if failure.error.kind == ErrorKind::Permanent
                        && self.refuse(Refused::Record(record), &failure.error).await
                    {
                        return;
                    }
                    if failure.error.kind == ErrorKind::Transient && !self.sink.deduplicates() {
                        self.metrics.resent.with_label_values(&label).inc();
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    /// Sends a refused message to the dead-letter destination, retrying
    /// until it is stored there. Returns false when the route has none (the
    /// caller keeps retrying the sink: nothing is dropped).
    async fn refuse(&mut self, refused: Refused<'_>, error: &SinkError) -> bool {
        let name = self.name.clone();
        let label = [name.as_str()];
        self.metrics.error(&self.name, error.message.clone());
        let (message, key) = match refused {
            Refused::Record(record) => (record.message.as_ref(), record.key.clone()),
            Refused::Message(message) => (message, message_hash(message)),
        };
        let Some(dead_letter) = &self.dead_letter else {
            tracing::error!(route = %self.name, topic = %message.topic, "refused, and no dead-letter destination: retrying: {}", error.message);
            return false;
        };
        tracing::warn!(route = %self.name, topic = %message.topic, "dead-lettered: {}", error.message);
        let record = DeadRecord {
            key,
            topic: &message.topic,
            client_id: &message.client_id,
            error: error.message.clone(),
            payload: &message.payload,
            received_at_ms: message.received_at_ms(),
        };
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let stored = match dead_letter {
                DeadLetter::Mqtt { publisher, topic } => {
                    publisher
                        .publish(Outbound {
                            topic: topic.clone(),
                            payload: dead_letter_json(&self.name, &record, message).into(),
                            qos: 1,
                            retain: false,
                            user_properties: Vec::new(),
                        })
                        .await
                }
                DeadLetter::Table(table) => match &mut self.sink {
                    Sink::Postgres(sink) => sink.dead_letter(table, &self.name, &record).await,
                    _ => Err(SinkError::permanent(
                        "a dead-letter table needs a postgres sink".into(),
                    )),
                },
            };
            match stored {
                Ok(()) => {
                    self.metrics.dead_lettered.with_label_values(&label).inc();
                    return true;
                }
                Err(e) => {
                    self.metrics.error(
                        &self.name,
                        format!("dead-letter destination: {}", e.message),
                    );
                    backoff.wait().await;
                }
            }
        }
    }
}

/// The dead-letter JSON record (MQTT destination).
fn dead_letter_json(route: &str, record: &DeadRecord<'_>, message: &Message) -> Vec<u8> {
    use base64::Engine;
    let mut json = serde_json::json!({
        "route": route,
        "topic": record.topic,
        "client_id": record.client_id,
        "key": record.key,
        "error": record.error,
        "received_at": message.received_at_rfc3339(),
    });
    match std::str::from_utf8(record.payload) {
        Ok(text) => json["payload"] = text.into(),
        Err(_) => {
            json["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(record.payload)
                .into()
        }
    }
    serde_json::to_vec(&json).unwrap_or_default()
}

/// A key for a message whose key expression could not be evaluated.
fn message_hash(message: &Message) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        message.topic.as_bytes(),
        message.client_id.as_bytes(),
        &message.payload,
    ] {
        hash.update(part);
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}

/// What to build a route's dead-letter destination from.
pub fn dead_letter(
    config: Option<&DeadLetterConfig>,
    publisher: &Arc<Publisher>,
) -> Option<DeadLetter> {
    config.map(|config| match config {
        DeadLetterConfig::MqttTopic(topic) => DeadLetter::Mqtt {
            publisher: publisher.clone(),
            topic: topic.clone(),
        },
        DeadLetterConfig::Table(table) => DeadLetter::Table(table.clone()),
    })
}
