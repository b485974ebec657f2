//! The rumqttc clients: the same workloads as the built-in client, driven
//! through an independent MQTT library, to cross-check the built-in
//! client's figures.
//!
//! Each client is a rumqttc `AsyncClient` (requests go into a bounded
//! channel) and its `EventLoop` (writes them, one PUBLISH per flush, reads
//! and acknowledges what arrives), in one tokio task per client on one
//! runtime. Counting follows the events rumqttc reports: a PUBLISH is sent
//! when the event loop reports `Outgoing::Publish` (written to the socket),
//! acknowledged on `Incoming::PubAck` (QoS 1) or `Incoming::PubComp`
//! (QoS 2), delivered on `Incoming::Publish` at a subscriber. A client
//! never reconnects: a connection error ends it and is counted.

mod publisher;
mod subscriber;

use std::time::{Duration, Instant};

use ::rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet};

use crate::cli::MAX_PACKET_SIZE;
use crate::client::ClientOptions;
use crate::codec::QoS;
use crate::run::{sleep_until, ClientJob, Driver, PublisherJob, SubscriberJob, Workload};

/// Name of this generator in reports.
pub const GENERATOR: &str = "rumqttc";

/// How long a client waits for its DISCONNECT to be written.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The rumqttc clients.
#[derive(Debug, Clone, Copy)]
pub struct Rumqttc {
    /// Capacity of each client's request channel: how many PUBLISHes a
    /// publisher queues ahead of its event loop. Payloads are stamped when
    /// queued, so the time they wait there counts as latency.
    pub request_capacity: usize,
}

impl Driver for Rumqttc {
    fn name(&self) -> &'static str {
        GENERATOR
    }

    fn subscriber(
        &self,
        job: SubscriberJob,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        subscriber::run(job, self.request_capacity)
    }

    fn publisher(
        &self,
        job: PublisherJob,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        publisher::run(job, self.request_capacity)
    }
}

/// A client and its event loop for `client_id` in a run of `workload`, not
/// connected yet.
fn client(
    c: &ClientOptions,
    workload: &Workload,
    client_id: &str,
    capacity: usize,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(client_id, c.addr.ip().to_string(), c.addr.port());
    options
        .set_keep_alive(Duration::from_secs(u64::from(c.keep_alive)))
        .set_clean_session(c.clean_session)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        .set_inflight(u16::try_from(workload.inflight).unwrap_or(u16::MAX));
    if let Some(user) = &c.username {
        options.set_credentials(user, c.password.clone().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(options, capacity.max(1));
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    // rumqttc bounds both the connect and every flush by this (whole
    // seconds). Connecting is bounded by `connect` below; a flush may wait
    // for a broker that holds a publisher back, so it gets the whole run.
    let run_length = c.timeout + workload.duration + workload.drain;
    network.set_connection_timeout(run_length.as_secs() + 1);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Waits for the client's slot, then connects: polls the event loop for
/// CONNACK within the connect timeout, counting the outcome. A client whose
/// connection failed is done with its setup (settled).
async fn connect(c: &ClientJob, capacity: usize) -> Option<(AsyncClient, EventLoop)> {
    sleep_until(c.slot).await;
    let (client, mut eventloop) = client(&c.options, &c.workload, &c.client_id, capacity);
    let begun = Instant::now();
    let failure = match tokio::time::timeout(c.settings.client.timeout, eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
            c.shared.connected(begun.elapsed());
            return Some((client, eventloop));
        }
        Ok(Ok(other)) => format!("expected CONNACK, got {other:?}"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out waiting for CONNACK".to_string(),
    };
    c.shared.connect_failed(&c.who, failure);
    c.shared.settle();
    None
}

/// rumqttc's QoS for ours.
fn qos(qos: QoS) -> ::rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => ::rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => ::rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => ::rumqttc::QoS::ExactlyOnce,
    }
}

/// Sends DISCONNECT and waits (briefly) until it is written; errors are
/// ignored since the connection is being dropped anyway.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let written = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, written).await;
}
