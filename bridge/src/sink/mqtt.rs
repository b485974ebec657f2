//! Another MQTT broker: each record published at QoS 1 or 2 and awaited
//! (PUBACK/PUBCOMP), with its idempotency key as the user property
//! `kubemqtt-key` so a consumer there can drop duplicates.

use std::time::Duration;

use super::{BatchError, Written};
use crate::config::MqttSink as Config;
use crate::message::Record;
use crate::mqtt::{Endpoint, Outbound, Publisher};

/// The user property carrying the idempotency key.
pub const KEY_PROPERTY: &str = "kubemqtt-key";

/// A remote-broker sink.
pub struct MqttSink {
    qos: u8,
    publisher: Publisher,
}

impl MqttSink {
    /// A sink for `config`; it connects at the first write.
    pub fn new(bridge: &str, route: &str, config: Config) -> MqttSink {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let remote = config.broker;
        let endpoint = Endpoint {
            client_id: remote
                .client_id
                .unwrap_or_else(|| format!("{bridge}-{route}-{host}")),
            host: remote.host,
            port: remote.port,
            username_file: remote.username_file,
            password_file: remote.password_file,
            tls: remote.tls,
            keep_alive: Duration::from_secs(30),
        };
        MqttSink {
            qos: config.qos,
            publisher: Publisher::new(endpoint),
        }
    }

    /// Publishes the batch and waits for the acknowledgements.
    pub async fn write(&mut self, batch: &[Record]) -> Result<Written, BatchError> {
        let messages: Vec<Outbound> = batch
            .iter()
            .map(|record| Outbound {
                topic: record.target.clone().unwrap_or_default(),
                payload: record.body(),
                qos: self.qos,
                retain: false,
                user_properties: vec![(KEY_PROPERTY.into(), record.key.clone())],
            })
            .collect();
        self.publisher
            .publish_all(&messages)
            .await
            .map(|()| Written::default())
            .map_err(|(committed, error)| BatchError { committed, error })
    }
}
