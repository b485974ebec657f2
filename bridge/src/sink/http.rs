//! HTTP webhook: a POST per record (`single`, up to 16 at a time) or per
//! batch (`batch`, a JSON array), signed with HMAC-SHA256 when a key is configured. 2xx
//! commits; 5xx, 408, 429, timeouts and connection errors are retried;
//! other 4xx are permanent refusals.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::{connect_error, prefix_outcome, BatchError, SinkError, SinkResult, Written};
use crate::config::{HttpMode, HttpSink as Config};
use crate::message::Record;
use crate::secrets;

/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-KubeMQTT-Signature";
/// The idempotency key header (of the record, or a hash of the batch's).
pub const KEY_HEADER: &str = "Idempotency-Key";

/// Requests in flight at once in `single` mode.
pub const SINGLE_CONCURRENCY: usize = 16;

/// A webhook sink.
pub struct HttpSink {
    config: Config,
    client: reqwest::Client,
}

/// `sha256=<hex>` of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl HttpSink {
    /// A sink for `config`; the TLS settings are read now.
    pub fn new(config: Config) -> SinkResult<HttpSink> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_secs(10));
        // An `https://` URL without `tls` trusts the system's CAs.
        let tls_config = if config.url.starts_with("https://") {
            secrets::client_config(&config.tls.clone().unwrap_or_default())
                .map_err(|e| SinkError::permanent(format!("HTTP sink {}: {e}", config.url)))?
        } else {
            secrets::trusting_no_one()
        };
        builder = builder.use_preconfigured_tls(tls_config);
        let client = builder
            .build()
            .map_err(|e| SinkError::permanent(format!("HTTP client: {e}")))?;
        Ok(HttpSink { config, client })
    }

    async fn post(&self, body: Bytes, key: &str) -> SinkResult<()> {
        let mut request = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(KEY_HEADER, key);
        if let Some(path) = &self.config.hmac_secret_file {
            let secret =
                secrets::read_secret(path).map_err(|e| SinkError::transient(e.to_string()))?;
            request = request.header(SIGNATURE_HEADER, sign(secret.as_bytes(), &body));
        }
        if let Some(path) = &self.config.bearer_token_file {
            let token =
                secrets::read_secret(path).map_err(|e| SinkError::transient(e.to_string()))?;
            request = request.bearer_auth(token);
        }
        let response = request.body(body).send().await.map_err(|e| {
            connect_error(
                &format!("POST {}", self.config.url),
                &e,
                self.config.tls.as_ref(),
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let message = format!(
            "POST {}: {status} {}",
            self.config.url,
            text.chars().take(200).collect::<String>()
        );
        let retry = status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(if retry {
            SinkError::transient(message)
        } else {
            SinkError::permanent(message)
        })
    }

    /// Posts the batch.
    pub async fn write(&mut self, batch: &[Record]) -> Result<Written, BatchError> {
        match self.config.mode {
            HttpMode::Batch => {
                let array = serde_json::Value::Array(batch.iter().map(Record::json).collect());
                let body = Bytes::from(serde_json::to_vec(&array).unwrap_or_default());
                let mut keys = Sha256::new();
                for record in batch {
                    keys.update(record.key.as_bytes());
                }
                let key = hex::encode(&keys.finalize()[..16]);
                self.post(body, &key)
                    .await
                    .map(|()| Written::default())
                    .map_err(|error| BatchError {
                        committed: 0,
                        error,
                    })
            }
            HttpMode::Single => {
                let this = &*self;
                let mut outcomes = Vec::with_capacity(batch.len());
                // In order, SINGLE_CONCURRENCY at a time, up to the first
                // failure: what follows it is sent again with the rest.
                for chunk in batch.chunks(SINGLE_CONCURRENCY) {
                    let posts = chunk.iter().map(|record| {
                        let body = match &record.fields {
                            Some(_) => record.body(),
                            None => {
                                Bytes::from(serde_json::to_vec(&record.json()).unwrap_or_default())
                            }
                        };
                        async move { this.post(body, &record.key).await.map(|()| false) }
                    });
                    let results = futures::future::join_all(posts).await;
                    let failed = results.iter().any(Result::is_err);
                    outcomes.extend(results);
                    if failed {
                        break;
                    }
                }
                prefix_outcome(outcomes)
            }
        }
    }
}
