//! MQTT connections: options for the source session and the publishing
//! connections, and [`Publisher`], whose `publish` returns once the broker
//! acknowledged the message.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PubRecReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::oneshot;

use crate::config::TlsConfig;
use crate::secrets::{self, SecretError};
use crate::sink::{SinkError, SinkResult};

/// How to reach a broker.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Client id.
    pub client_id: String,
    /// File with the user name.
    pub username_file: Option<PathBuf>,
    /// File with the password.
    pub password_file: Option<PathBuf>,
    /// TLS.
    pub tls: Option<TlsConfig>,
    /// Keep-alive.
    pub keep_alive: Duration,
}

impl Endpoint {
    /// MQTT 5 options for this endpoint; secrets are read now, so a
    /// rotated password is used at the next connection.
    pub fn options(&self) -> Result<MqttOptions, SecretError> {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options.set_keep_alive(self.keep_alive);
        let username = secrets::read_optional(self.username_file.as_ref())?;
        let password = secrets::read_optional(self.password_file.as_ref())?;
        if username.is_some() || password.is_some() {
            options.set_credentials(username.unwrap_or_default(), password.unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            let mut config = secrets::client_config(tls)?;
            config.alpn_protocols.clear();
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
        }
        Ok(options)
    }
}

/// QoS from its number (anything above 2 is 2).
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

type Waiter = oneshot::Sender<SinkResult<()>>;

#[derive(Default)]
struct Pending {
    /// Publishes handed to the client, not yet given a packet id.
    queued: VecDeque<Waiter>,
    /// Publishes sent, by packet id.
    sent: HashMap<u16, Waiter>,
    dead: bool,
}

impl Pending {
    fn fail_all(&mut self, error: &str) {
        self.dead = true;
        for waiter in self
            .queued
            .drain(..)
            .chain(self.sent.drain().map(|(_, w)| w))
        {
            let _ = waiter.send(Err(SinkError::transient(error.to_owned())));
        }
    }
}

struct Connection {
    client: AsyncClient,
    pending: Arc<Mutex<Pending>>,
}

/// A publishing connection that tells when each message is acknowledged
/// (PUBACK for QoS 1, PUBCOMP for QoS 2, written for QoS 0).
///
/// rumqttc hands out packet ids in request order, and reports each as
/// `Outgoing::Publish(pkid)` in that order; the publisher pairs the n-th
/// report with the n-th request. A connection that fails is dropped whole
/// (its waiters get a transient error, the caller retries) and the next
/// publish opens a fresh one, so no retransmission can confuse the pairing.
pub struct Publisher {
    endpoint: Endpoint,
    connection: tokio::sync::Mutex<Option<Connection>>,
    timeout: Duration,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// User properties.
    pub user_properties: Vec<(String, String)>,
}

impl Publisher {
    /// A publisher for `endpoint`; it connects at the first publish.
    pub fn new(endpoint: Endpoint) -> Publisher {
        Publisher {
            endpoint,
            connection: tokio::sync::Mutex::new(None),
            timeout: Duration::from_secs(30),
        }
    }

    /// Publishes `messages` and waits for each acknowledgement. Returns how
    /// many leading messages were acknowledged with the error, if any.
    pub async fn publish_all(&self, messages: &[Outbound]) -> Result<(), (usize, SinkError)> {
        let mut receivers = Vec::with_capacity(messages.len());
        {
            let mut connection = self.connection.lock().await;
            let alive = connection
                .as_ref()
                .is_some_and(|c| c.pending.lock().map(|p| !p.dead).unwrap_or(false));
            if !alive {
                *connection = Some(self.connect().map_err(|e| (0, e))?);
            }
            let Some(conn) = connection.as_ref() else {
                return Err((0, SinkError::transient("no connection".into())));
            };
            for message in messages {
                let (tx, rx) = oneshot::channel();
                if let Ok(mut pending) = conn.pending.lock() {
                    pending.queued.push_back(tx);
                }
                let properties = PublishProperties {
                    user_properties: message.user_properties.clone(),
                    ..Default::default()
                };
                let sent = conn
                    .client
                    .publish_with_properties(
                        message.topic.clone(),
                        qos(message.qos),
                        message.retain,
                        message.payload.clone(),
                        properties,
                    )
                    .await;
                if let Err(e) = sent {
                    // Only a closed channel: the connection task ended.
                    if let Ok(mut pending) = conn.pending.lock() {
                        pending.fail_all(&format!("publish not queued: {e}"));
                    }
                }
                receivers.push(rx);
            }
        }
        for (i, rx) in receivers.into_iter().enumerate() {
            let outcome = match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(SinkError::transient("connection closed".into())),
                Err(_) => {
                    self.drop_connection().await;
                    Err(SinkError::transient(format!(
                        "no acknowledgement from {}:{} within {:?}",
                        self.endpoint.host, self.endpoint.port, self.timeout
                    )))
                }
            };
            outcome.map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Publishes one message and waits for its acknowledgement.
    pub async fn publish(&self, message: Outbound) -> SinkResult<()> {
        self.publish_all(std::slice::from_ref(&message))
            .await
            .map_err(|(_, e)| e)
    }

    async fn drop_connection(&self) {
        if let Some(old) = self.connection.lock().await.take() {
            if let Ok(mut pending) = old.pending.lock() {
                pending.fail_all("connection dropped");
            }
        }
    }

    fn connect(&self) -> Result<Connection, SinkError> {
        let options = self.endpoint.options().map_err(|e| {
            SinkError::transient(format!(
                "MQTT {}:{}: {e}",
                self.endpoint.host, self.endpoint.port
            ))
        })?;
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let pending = Arc::new(Mutex::new(Pending::default()));
        tokio::spawn(drive(eventloop, pending.clone(), self.endpoint.clone()));
        Ok(Connection { client, pending })
    }
}

async fn drive(mut eventloop: EventLoop, pending: Arc<Mutex<Pending>>, endpoint: Endpoint) {
    use rumqttc::v5::Incoming;
    loop {
        let event = eventloop.poll().await;
        let Ok(mut state) = pending.lock() else {
            return;
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                if let Some(waiter) = state.queued.pop_front() {
                    let _ = waiter.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if !state.sent.contains_key(&pkid) {
                    if let Some(waiter) = state.queued.pop_front() {
                        state.sent.insert(pkid, waiter);
                    }
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(waiter) = state.sent.remove(&ack.pkid) {
                    let outcome = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        reason => Err(SinkError::permanent(format!(
                            "{}:{} refused the message: {reason:?}",
                            endpoint.host, endpoint.port
                        ))),
                    };
                    let _ = waiter.send(outcome);
                }
            }
            Ok(Event::Incoming(Incoming::PubRec(rec))) => {
                if !matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) {
                    if let Some(waiter) = state.sent.remove(&rec.pkid) {
                        let _ = waiter.send(Err(SinkError::permanent(format!(
                            "{}:{} refused the message: {:?}",
                            endpoint.host, endpoint.port, rec.reason
                        ))));
                    }
                }
            }
            Ok(Event::Incoming(Incoming::PubComp(comp))) => {
                if let Some(waiter) = state.sent.remove(&comp.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Incoming::Disconnect(disconnect))) => {
                state.fail_all(&format!(
                    "{}:{} disconnected: {:?}",
                    endpoint.host, endpoint.port, disconnect.reason_code
                ));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let what = format!("MQTT {}:{}", endpoint.host, endpoint.port);
                let error = crate::sink::connect_error(&what, &e, endpoint.tls.as_ref());
                tracing::warn!("publishing connection failed: {}", error.message);
                state.fail_all(&error.message);
                return;
            }
        }
        if state.dead {
            return;
        }
    }
}
