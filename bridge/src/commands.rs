//! Commands to devices: messages from NATS JetStream, RabbitMQ or
//! `POST /publish`, published into the broker at the requested QoS. The
//! command is acknowledged to where it came from only after the broker
//! acknowledged the publish; a command that can never be published (a bad
//! topic, a topic outside `allowed_topics`) is refused there instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{CommandConfig, CommandSource};
use crate::expr::{Expr, Scope};
use crate::metrics::Metrics;
use crate::mqtt::{Outbound, Publisher};
use crate::sink::{ErrorKind, SinkError};
use crate::topic;

/// A command source's rules and the connection commands go out on.
pub struct Commands {
    /// The source's name (a metrics label).
    pub name: String,
    topic: Expr,
    qos: u8,
    allowed: Vec<String>,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
}

/// What expressions see of a command from NATS or RabbitMQ.
struct CommandScope<'a> {
    subject: &'a str,
    headers: &'a BTreeMap<String, String>,
    payload: &'a [u8],
}

impl Scope for CommandScope<'_> {
    fn var(&self, name: &str) -> Option<Value> {
        Some(match name {
            "subject" | "routing_key" => Value::String(self.subject.to_owned()),
            "headers" => Value::Object(
                self.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
            "payload" => serde_json::from_slice(self.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(self.payload).into_owned())
            }),
            "payload_text" => Value::String(String::from_utf8_lossy(self.payload).into_owned()),
            _ => return None,
        })
    }
}

impl Commands {
    /// The rules of `config`, publishing through `publisher`.
    pub fn new(
        config: &CommandConfig,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
    ) -> Result<Commands, crate::expr::ParseError> {
        Ok(Commands {
            name: config.name.clone(),
            topic: crate::expr::parse(&config.topic)?,
            qos: config.qos,
            allowed: config.allowed_topics.clone(),
            publisher,
            metrics,
        })
    }

    /// The default QoS.
    pub fn qos(&self) -> u8 {
        self.qos
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .commands
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
    }

    /// Publishes one command; a permanent error means it will never go.
    pub async fn publish(&self, message: Outbound) -> Result<(), SinkError> {
        let valid = !message.topic.is_empty()
            && !message.topic.contains(['+', '#', '\0'])
            && message.qos <= 2;
        if !valid {
            self.count("refused");
            return Err(SinkError::permanent(format!(
                "`{}` is not a topic to publish to",
                message.topic
            )));
        }
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|f| topic::matches(f, &message.topic))
        {
            self.count("refused");
            return Err(SinkError::permanent(format!(
                "topic `{}` is outside allowed_topics",
                message.topic
            )));
        }
        match self.publisher.publish(message).await {
            Ok(()) => {
                self.count("published");
                Ok(())
            }
            Err(e) => {
                self.count("failed");
                self.metrics.error(&self.name, e.message.clone());
                Err(e)
            }
        }
    }

    /// A command from NATS or RabbitMQ, its topic from the expression.
    async fn publish_mapped(
        &self,
        subject: &str,
        headers: &BTreeMap<String, String>,
        payload: Bytes,
    ) -> Result<(), SinkError> {
        let scope = CommandScope {
            subject,
            headers,
            payload: &payload,
        };
        let topic = match self.topic.eval(&scope) {
            Ok(Value::String(topic)) => topic,
            Ok(other) => {
                self.count("refused");
                return Err(SinkError::permanent(format!(
                    "the topic is {other}, not a string"
                )));
            }
            Err(e) => {
                self.count("refused");
                return Err(SinkError::permanent(format!("topic expression: {e}")));
            }
        };
        let qos = headers
            .get("qos")
            .and_then(|q| q.parse().ok())
            .unwrap_or(self.qos);
        self.publish(Outbound {
            topic,
            payload,
            qos,
            retain: false,
            user_properties: Vec::new(),
        })
        .await
    }
}

/// Consumes a command source until shutdown; reconnects on errors.
pub async fn run(config: CommandConfig, commands: Commands, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            result = consume(&config.from, &commands) => result,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = result {
            tracing::warn!(source = %commands.name, "command source: {}; again in {delay:?}", e.message);
            commands.metrics.error(&commands.name, e.message);
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn consume(source: &CommandSource, commands: &Commands) -> Result<(), SinkError> {
    match source {
        // Served by the HTTP server.
        CommandSource::Http { .. } => std::future::pending().await,
        CommandSource::Nats {
            url,
            stream,
            consumer,
            filter_subject,
            token_file,
            tls,
        } => {
            let client =
                crate::sink::nats::connect(url, None, None, token_file.as_ref(), tls.as_ref())
                    .await?;
            consume_nats(
                commands,
                client,
                stream,
                consumer,
                filter_subject.as_deref(),
            )
            .await
        }
        CommandSource::Amqp {
            url,
            password_file,
            queue,
            tls,
        } => {
            let connection =
                crate::sink::amqp::connect(url, password_file.as_ref(), tls.as_ref()).await?;
            consume_amqp(commands, connection, queue).await
        }
    }
}

async fn consume_nats(
    commands: &Commands,
    client: async_nats::Client,
    stream: &str,
    consumer: &str,
    filter_subject: Option<&str>,
) -> Result<(), SinkError> {
    use async_nats::jetstream::{self, consumer::pull, AckKind};
    let failed = |e: String| SinkError::transient(format!("NATS: {e}"));
    let context = jetstream::new(client);
    let stream = context
        .get_stream(stream)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            consumer,
            pull::Config {
                durable_name: Some(consumer.to_owned()),
                filter_subject: filter_subject.unwrap_or_default().to_owned(),
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!(source = %commands.name, "consuming commands from JetStream");
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| failed(e.to_string()))?;
        let headers: BTreeMap<String, String> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(name, values)| {
                Some((name.to_string(), values.first()?.as_str().to_owned()))
            })
            .collect();
        let outcome = commands
            .publish_mapped(message.subject.as_str(), &headers, message.payload.clone())
            .await;
        let ack = match outcome {
            Ok(()) => message.ack().await,
            Err(e) if e.kind == ErrorKind::Permanent => {
                tracing::warn!(source = %commands.name, "command refused: {}", e.message);
                message.ack_with(AckKind::Term).await
            }
            Err(e) => {
                tracing::warn!(source = %commands.name, "command not published: {}", e.message);
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
            }
        };
        ack.map_err(|e| failed(format!("acknowledge: {e}")))?;
    }
    Err(failed("the consumer stream ended".into()))
}

async fn consume_amqp(
    commands: &Commands,
    connection: lapin::Connection,
    queue: &str,
) -> Result<(), SinkError> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let failed = |e: lapin::Error| SinkError::transient(format!("AMQP: {e}"));
    let channel = connection.create_channel().await.map_err(failed)?;
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .map_err(failed)?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(failed)?;
    let tag = format!("kubemqtt-bridge-{}", commands.name);
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed)?;
    tracing::info!(source = %commands.name, queue, "consuming commands from RabbitMQ");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(failed)?;
        let mut headers = BTreeMap::new();
        if let Some(table) = delivery.properties.headers() {
            for (name, value) in table.inner() {
                let text = match value {
                    AMQPValue::LongString(s) => s.to_string(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    other => format!("{other:?}"),
                };
                headers.insert(name.to_string(), text);
            }
        }
        let outcome = commands
            .publish_mapped(
                delivery.routing_key.as_str(),
                &headers,
                Bytes::from(delivery.data.clone()),
            )
            .await;
        let acked = match outcome {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await,
            Err(e) => {
                let requeue = e.kind == ErrorKind::Transient;
                tracing::warn!(source = %commands.name, requeue, "command not published: {}", e.message);
                if requeue {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                delivery
                    .nack(BasicNackOptions {
                        requeue,
                        ..Default::default()
                    })
                    .await
            }
        };
        acked.map_err(failed)?;
    }
    Err(SinkError::transient("AMQP: the consumer ended".into()))
}
