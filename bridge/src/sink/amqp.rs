//! RabbitMQ (AMQP 0-9-1): persistent messages on an exchange, on a channel
//! in confirm mode; the batch is published, then every confirm awaited. A
//! message no queue takes (returned, `mandatory`) is a permanent refusal;
//! a nack or a lost connection is retried.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::{AMQPUriTcpExt, TLSConfig};
use lapin::types::ShortString;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tcp_stream::RustlsConnector;

use super::{connect_error, prefix_outcome, BatchError, SinkError, SinkResult, Written};
use crate::config::{AmqpSink as Config, TlsConfig};
use crate::message::Record;
use crate::secrets;

/// A RabbitMQ sink.
pub struct AmqpSink {
    config: Config,
    channel: Option<(Connection, Channel)>,
}

/// Connects with the password from its file. An `amqps://` URL goes over
/// TLS with `tls` (or, without it, the system's trust store).
pub async fn connect(
    url: &str,
    password_file: Option<&std::path::PathBuf>,
    tls: Option<&TlsConfig>,
) -> SinkResult<Connection> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e| SinkError::permanent(format!("bad AMQP URL {url}: {e}")))?;
    if let Some(password) =
        secrets::read_optional(password_file).map_err(|e| SinkError::transient(e.to_string()))?
    {
        uri.authority.userinfo.password = password;
    }
    // Named without the URL's user and password.
    let what = format!("AMQP {}:{}", uri.authority.host, uri.authority.port);
    let default_tls = TlsConfig::default();
    let tls = match uri.scheme {
        AMQPScheme::AMQPS => Some(tls.unwrap_or(&default_tls)),
        AMQPScheme::AMQP => None,
    };
    let connector = match tls {
        Some(tls) => {
            let config = secrets::client_config(tls)
                .map_err(|e| SinkError::transient(format!("{what}: {e}")))?;
            Some(RustlsConnector::from(config))
        }
        None => None,
    };
    let failed = |e: lapin::Error| connect_error(&what, &e, tls);
    let runtime = lapin::runtime::default_runtime().map_err(failed)?;
    // lapin opens the TCP connection; the TLS handshake is the bridge's
    // own, with its rustls configuration.
    let open = async move |uri: AMQPUri, runtime| -> lapin::Result<_> {
        let plain = AMQPUri {
            scheme: AMQPScheme::AMQP,
            ..uri.clone()
        };
        let stream = plain
            .connect_with_config_async(TLSConfig::default(), &runtime)
            .await?;
        Ok(match &connector {
            Some(connector) => stream.into_rustls(connector, &uri.authority.host).await?,
            None => stream,
        })
    };
    Connection::connector(uri, runtime, open, ConnectionProperties::default())
        .await
        .map_err(failed)
}

impl AmqpSink {
    /// A sink for `config`; it connects at the first write.
    pub fn new(config: Config) -> AmqpSink {
        AmqpSink {
            config,
            channel: None,
        }
    }

    async fn channel(&mut self) -> SinkResult<Channel> {
        if let Some((connection, channel)) = &self.channel {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        self.channel = None;
        let connection = connect(
            &self.config.url,
            self.config.password_file.as_ref(),
            self.config.tls.as_ref(),
        )
        .await?;
        let failed = |e: lapin::Error| SinkError::transient(format!("AMQP channel: {e}"));
        let channel = connection.create_channel().await.map_err(failed)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed)?;
        self.channel = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Publishes the batch and waits for the confirms.
    pub async fn write(&mut self, batch: &[Record]) -> Result<Written, BatchError> {
        let channel = self.channel().await.map_err(|error| BatchError {
            committed: 0,
            error,
        })?;
        let mut confirms = Vec::with_capacity(batch.len());
        for record in batch {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(record.key.as_str()))
                .with_content_type(ShortString::from(match record.fields {
                    Some(_) => "application/json",
                    None => "application/octet-stream",
                }));
            let sent = channel
                .basic_publish(
                    ShortString::from(self.config.exchange.as_str()),
                    ShortString::from(record.target.as_deref().unwrap_or_default()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &record.body(),
                    properties,
                )
                .await;
            confirms.push(sent);
        }
        let mut outcomes = Vec::with_capacity(confirms.len());
        for sent in confirms {
            let outcome = match sent {
                Ok(confirm) => match confirm.await {
                    Ok(Confirmation::Ack(None)) => Ok(false),
                    Ok(Confirmation::Ack(Some(returned))) => Err(SinkError::permanent(format!(
                        "AMQP: no queue takes the message ({} {})",
                        returned.reply_code, returned.reply_text
                    ))),
                    Ok(other) => Err(SinkError::transient(format!("AMQP: {other:?}"))),
                    Err(e) => Err(SinkError::transient(format!("AMQP confirm: {e}"))),
                },
                Err(e) => Err(SinkError::transient(format!("AMQP publish: {e}"))),
            };
            if outcome.is_err() {
                self.channel = None;
            }
            outcomes.push(outcome);
        }
        prefix_outcome(outcomes)
    }
}
