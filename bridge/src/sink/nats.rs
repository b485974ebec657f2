//! NATS JetStream: each record published with `Nats-Msg-Id` set to its
//! idempotency key, so the stream drops a redelivered message within its
//! duplicate window; the batch is published, then every acknowledgement
//! awaited.

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;

use super::{connect_error, prefix_outcome, BatchError, SinkError, SinkResult, Written};
use crate::config::{NatsSink as Config, TlsConfig};
use crate::message::Record;
use crate::secrets;

/// A JetStream sink.
pub struct NatsSink {
    config: Config,
    context: Option<jetstream::Context>,
}

/// Connects to NATS with the credentials and TLS of a configuration.
pub async fn connect(
    url: &str,
    username_file: Option<&std::path::PathBuf>,
    password_file: Option<&std::path::PathBuf>,
    token_file: Option<&std::path::PathBuf>,
    tls: Option<&TlsConfig>,
) -> SinkResult<async_nats::Client> {
    let transient = |e: String| SinkError::transient(e);
    // The first connection is made here, so that its failure (a server
    // down, a certificate refused) is this call's error, in the status.
    let mut options =
        async_nats::ConnectOptions::new().connection_timeout(std::time::Duration::from_secs(10));
    if let (Some(user), Some(password)) = (username_file, password_file) {
        options = options.user_and_password(
            secrets::read_secret(user).map_err(|e| transient(e.to_string()))?,
            secrets::read_secret(password).map_err(|e| transient(e.to_string()))?,
        );
    }
    if let Some(token) = token_file {
        options = options.token(secrets::read_secret(token).map_err(|e| transient(e.to_string()))?);
    }
    if let Some(tls) = tls {
        let config =
            secrets::client_config(tls).map_err(|e| transient(format!("NATS {url}: {e}")))?;
        options = options.tls_client_config(config).require_tls(true);
    }
    options
        .connect(url)
        .await
        .map_err(|e| connect_error(&format!("NATS {url}"), &e, tls))
}

impl NatsSink {
    /// A sink for `config`; it connects at the first write.
    pub fn new(config: Config) -> NatsSink {
        NatsSink {
            config,
            context: None,
        }
    }

    async fn context(&mut self) -> SinkResult<jetstream::Context> {
        if let Some(context) = &self.context {
            return Ok(context.clone());
        }
        let client = connect(
            &self.config.url,
            self.config.username_file.as_ref(),
            self.config.password_file.as_ref(),
            self.config.token_file.as_ref(),
            self.config.tls.as_ref(),
        )
        .await?;
        let context = jetstream::new(client);
        self.context = Some(context.clone());
        Ok(context)
    }

    /// Publishes the batch and waits for the stream's acknowledgements.
    pub async fn write(&mut self, batch: &[Record]) -> Result<Written, BatchError> {
        let context = self.context().await.map_err(|error| BatchError {
            committed: 0,
            error,
        })?;
        let mut acks = Vec::with_capacity(batch.len());
        for record in batch {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", record.key.as_str());
            let subject = record.target.clone().unwrap_or_default();
            let sent = context
                .publish_with_headers(subject, headers, record.body())
                .await;
            acks.push(sent);
        }
        let mut outcomes = Vec::with_capacity(acks.len());
        for sent in acks {
            let outcome = match sent {
                Ok(ack) => ack.await.map(|ack| ack.duplicate).map_err(classify),
                Err(e) => Err(classify(e)),
            };
            outcomes.push(outcome);
        }
        prefix_outcome(outcomes)
    }
}

fn classify(error: async_nats::jetstream::context::PublishError) -> SinkError {
    let message = format!("JetStream publish: {error}");
    match error.kind() {
        // Over the server's limit: this message will never be accepted.
        // (No stream for the subject is transient: it may be created, and
        // the server answers so while JetStream starts.)
        PublishErrorKind::MaxPayloadExceeded => SinkError::permanent(message),
        _ => SinkError::transient(message),
    }
}
