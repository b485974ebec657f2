//! RabbitMQ (AMQP 0-9-1): persistent messages on an exchange, on a channel
//! in confirm mode; the batch is published, then every confirm awaited. A
//! message no queue takes (returned, `mandatory`) is a permanent refusal;
//! a nack or a lost connection is retried.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::{prefix_outcome, BatchError, SinkError, SinkResult, Written};
use crate::config::{AmqpSink as Config, TlsConfig};
use crate::message::Record;
use crate::secrets;

/// A RabbitMQ sink.
pub struct AmqpSink {
    config: Config,
    channel: Option<(Connection, Channel)>,
}

/// Connects with the password from its file put into the URL.
pub async fn connect(
    url: &str,
    password_file: Option<&std::path::PathBuf>,
    tls: Option<&TlsConfig>,
) -> SinkResult<Connection> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| SinkError::permanent(format!("bad AMQP URL {url}: {e}")))?;
    if let Some(password) =
        secrets::read_optional(password_file).map_err(|e| SinkError::transient(e.to_string()))?
    {
        uri.authority.userinfo.password = password;
    }
    let properties = ConnectionProperties::default();
    let failed = |e: lapin::Error| SinkError::transient(format!("AMQP {url}: {e}"));
    let runtime = lapin::runtime::default_runtime().map_err(failed)?;
    let tls_config = match tls.map(secrets::ca_pem).transpose() {
        Ok(pem) => lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: pem.flatten(),
        },
        Err(e) => return Err(SinkError::transient(e.to_string())),
    };
    let uri_text = uri_to_string(&uri);
    Connection::connect_with_config(&uri_text, properties, tls_config, runtime)
        .await
        .map_err(failed)
}

fn uri_to_string(uri: &lapin::uri::AMQPUri) -> String {
    let scheme = match uri.scheme {
        lapin::uri::AMQPScheme::AMQP => "amqp",
        lapin::uri::AMQPScheme::AMQPS => "amqps",
    };
    let user = &uri.authority.userinfo;
    let vhost: String = uri
        .vhost
        .bytes()
        .map(|b| match b {
            b'/' => "%2f".to_owned(),
            b => (b as char).to_string(),
        })
        .collect();
    format!(
        "{scheme}://{}:{}@{}:{}/{vhost}",
        percent(&user.username),
        percent(&user.password),
        uri.authority.host,
        uri.authority.port
    )
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
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
