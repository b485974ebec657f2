//! The source: one persistent MQTT 5 session on the broker, subscribed to
//! every route's filters as shared subscriptions (`$share/<bridge>/...`),
//! with manual acknowledgements.
//!
//! Each message gets a sequence number and an [`AckToken`] that every
//! route it matches completes once its sink committed it (or its
//! dead-letter destination stored it). The PUBACK goes to the broker only
//! then, and in the order the messages arrived. A message that arrived on
//! an earlier connection is not acknowledged on a later one: the broker
//! sends it again (DUP) in the resumed session, and that copy is
//! acknowledged instead, so a PUBACK never lands on a packet id the broker
//! has since given to another message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, Incoming};
use tokio::sync::{mpsc, watch};

use crate::config::BridgeConfig;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::mqtt::Endpoint;
use crate::topic;

/// A message handed to a route.
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// Complete it once the message is committed.
    pub token: Arc<AckToken>,
}

/// Counts the routes still working on a message.
pub struct AckToken {
    seq: u64,
    remaining: AtomicUsize,
    done: mpsc::UnboundedSender<u64>,
}

impl AckToken {
    /// One route is done with the message; the last one releases it.
    pub fn complete(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.done.send(self.seq);
        }
    }
}

/// A route as the source sees it.
pub struct RouteInput {
    /// Its topic filters.
    pub filters: Vec<String>,
    /// Its queue.
    pub sender: mpsc::Sender<Delivery>,
}

/// The client id of the consuming session: configured, or
/// `<bridge>-<HOSTNAME>` (a StatefulSet pod's name is stable, so its
/// session survives a restart).
pub fn client_id(config: &BridgeConfig) -> String {
    config.broker.client_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        if host.starts_with(&config.name) {
            host
        } else {
            format!("{}-{host}", config.name)
        }
    })
}

/// The source broker's endpoint for a client id.
pub fn endpoint(config: &BridgeConfig, client_id: String) -> Endpoint {
    let broker = &config.broker;
    Endpoint {
        host: broker.host.clone(),
        port: broker.port,
        client_id,
        username_file: broker.username_file.clone(),
        password_file: broker.password_file.clone(),
        tls: broker.tls.clone(),
        keep_alive: Duration::from_secs(u64::from(broker.keep_alive_secs.max(5))),
    }
}

enum Inbound {
    Connected(u64),
    Message(u64, Box<Publish>, Arc<Message>),
}

struct Entry {
    seq: u64,
    epoch: u64,
    publish: Option<Publish>,
    done: bool,
}

/// Runs the source until `shutdown` turns true, then lets the routes finish
/// what they hold, acknowledges it and disconnects.
pub async fn run(
    config: &BridgeConfig,
    routes: Vec<RouteInput>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::secrets::SecretError> {
    let broker = &config.broker;
    let mut options = endpoint(config, client_id(config)).options()?;
    options
        .set_clean_start(false)
        .set_manual_acks(true)
        .set_session_expiry_interval(Some(broker.session_expiry_secs))
        .set_receive_maximum(Some(broker.receive_maximum))
        .set_max_packet_size(Some(broker.max_packet_bytes));
    let window = usize::from(broker.receive_maximum);
    let (client, eventloop) = AsyncClient::new(options, 4 * window + 64);
    let mut filters: Vec<Filter> = Vec::new();
    for (route, input) in config.routes.iter().zip(&routes) {
        for filter in &input.filters {
            let path = format!("$share/{}/{filter}", config.name);
            let qos = if route.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            match filters.iter_mut().find(|f| f.path == path) {
                Some(existing) if qos == QoS::AtLeastOnce => existing.qos = qos,
                Some(_) => {}
                None => filters.push(Filter::new(path, qos)),
            }
        }
    }
    let (inbound_tx, mut inbound) = mpsc::channel(4 * window + 64);
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        filters,
        inbound_tx,
        metrics.clone(),
        broker.client_id_property.clone(),
        broker.tls.clone(),
    ));

    let (done_tx, mut done) = mpsc::unbounded_channel::<u64>();
    let mut routes = Some(routes);
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut epoch = 0u64;
    loop {
        tokio::select! {
            changed = shutdown.changed(), if routes.is_some() => {
                if changed.is_err() || *shutdown.borrow() {
                    tracing::info!("stopping: finishing {} messages in flight", pending.len());
                    // Closing the queues makes each route write what it
                    // holds and stop.
                    routes = None;
                }
            }
            Some(seq) = done.recv() => {
                if let Some(entry) = pending.iter_mut().find(|e| e.seq == seq) {
                    entry.done = true;
                }
                while pending.front().is_some_and(|e| e.done) {
                    let Some(entry) = pending.pop_front() else { break };
                    if let (Some(publish), true) = (&entry.publish, entry.epoch == epoch) {
                        if let Err(e) = client.ack(publish).await {
                            tracing::warn!("cannot acknowledge: {e}");
                        }
                    }
                }
                metrics.lag.set(pending.len() as i64);
            }
            Some(event) = inbound.recv() => match event {
                Inbound::Connected(new_epoch) => epoch = new_epoch,
                Inbound::Message(message_epoch, publish, message) => {
                    let Some(routes) = &routes else {
                        // Stopping: not acknowledged, so the broker keeps it.
                        continue;
                    };
                    let matching: Vec<&RouteInput> = routes
                        .iter()
                        .filter(|r| r.filters.iter().any(|f| topic::matches(f, &message.topic)))
                        .collect();
                    let seq = next_seq;
                    next_seq += 1;
                    let token = Arc::new(AckToken {
                        seq,
                        remaining: AtomicUsize::new(matching.len().max(1)),
                        done: done_tx.clone(),
                    });
                    pending.push_back(Entry {
                        seq,
                        epoch: message_epoch,
                        publish: (publish.qos != QoS::AtMostOnce).then_some(*publish),
                        done: false,
                    });
                    metrics.lag.set(pending.len() as i64);
                    if matching.is_empty() {
                        token.complete();
                    }
                    for route in matching {
                        let delivery = Delivery { message: message.clone(), token: token.clone() };
                        if route.sender.send(delivery).await.is_err() {
                            token.complete();
                        }
                    }
                }
            },
            else => break,
        }
        if routes.is_none() && pending.is_empty() {
            break;
        }
    }
    if let Err(e) = client.disconnect().await {
        tracing::warn!("disconnect: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    Ok(())
}

async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<Filter>,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    client_id_property: String,
    tls: Option<crate::config::TlsConfig>,
) {
    let mut epoch = 0u64;
    let mut delay = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                epoch += 1;
                delay = Duration::from_millis(200);
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to the broker"
                );
                if inbound.send(Inbound::Connected(epoch)).await.is_err() {
                    return;
                }
                if filters.is_empty() {
                    // A bridge with commands only.
                    metrics.set_connected(true);
                    continue;
                }
                // The session may hold the subscriptions already; asking
                // again is harmless and covers an expired session.
                if let Err(e) = client.subscribe_many(filters.clone()).await {
                    tracing::error!("cannot subscribe: {e}");
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(suback))) => {
                let refused: Vec<_> = suback
                    .return_codes
                    .iter()
                    .zip(&filters)
                    .filter(|(code, _)| !matches!(code, SubscribeReasonCode::Success(_)))
                    .map(|(code, filter)| format!("{} ({code:?})", filter.path))
                    .collect();
                if refused.is_empty() {
                    metrics.set_connected(true);
                } else {
                    let message =
                        format!("the broker refused subscriptions: {}", refused.join(", "));
                    tracing::error!("{message}");
                    metrics.error("source", message);
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                metrics.received.inc();
                if publish.dup {
                    metrics.redelivered.inc();
                }
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let properties = publish
                    .properties
                    .as_ref()
                    .map(|p| p.user_properties.clone())
                    .unwrap_or_default();
                let mut message = Message::new(
                    topic,
                    publish.payload.clone(),
                    publish.qos as u8,
                    properties,
                    &client_id_property,
                );
                message.retain = publish.retain;
                let mut for_ack = publish;
                for_ack.payload = bytes::Bytes::new();
                if inbound
                    .send(Inbound::Message(
                        epoch,
                        Box::new(for_ack),
                        Arc::new(message),
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Incoming(Incoming::Disconnect(disconnect))) => {
                metrics.set_connected(false);
                tracing::warn!(
                    "the broker disconnected the bridge: {:?}",
                    disconnect.reason_code
                );
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                metrics.set_connected(false);
                // Let the DISCONNECT reach the broker, then stop.
                let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                metrics.set_connected(false);
                let error = crate::sink::connect_error("broker connection", &e, tls.as_ref());
                tracing::warn!("{}; reconnecting in {delay:?}", error.message);
                metrics.error("source", error.message);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
