//! The built-in client's publishers and subscribers: the crate's own codec
//! on a split TCP stream, several PUBLISHes per write, counters updated
//! once per read or write rather than per message.

use std::time::Instant;

use tokio::sync::watch;

use crate::client::{ClientError, ClientOptions, Connection, PacketIds};
use crate::codec::{self, Ack, Packet, QoS};
use crate::payload::{self, MessageId};
use crate::run::{sleep_until, ClientJob, Driver, PublisherJob, Shared, SubscriberJob};
use crate::seen::Seen;

/// Name of this generator in reports.
pub const GENERATOR: &str = "kubemqtt-bench";

/// Most PUBLISHes encoded into one write.
const MAX_BATCH: u64 = 64;

/// The built-in client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

impl Driver for Builtin {
    fn name(&self) -> &'static str {
        GENERATOR
    }

    fn subscriber(
        &self,
        job: SubscriberJob,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        Subscriber { job }.run()
    }

    fn publisher(
        &self,
        job: PublisherJob,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        Publisher { job }.run()
    }
}

/// Waits for `slot`, then opens a connection, counting the outcome; a
/// client whose connection failed is done with its setup (settled).
pub async fn open_at(
    slot: Instant,
    shared: &Shared,
    options: &ClientOptions,
    client_id: &str,
    who: &str,
) -> Option<Connection> {
    sleep_until(slot).await;
    match Connection::open(options, client_id).await {
        Ok((connection, took)) => {
            shared.connected(took);
            Some(connection)
        }
        Err(e) => {
            shared.connect_failed(who, e);
            shared.settle();
            None
        }
    }
}

/// Opens the connection of a client of a run, see [`open_at`].
async fn open(c: &ClientJob) -> Option<Connection> {
    open_at(c.slot, &c.shared, &c.options, &c.client_id, &c.who).await
}

/// One subscribing client.
struct Subscriber {
    job: SubscriberJob,
}

impl Subscriber {
    async fn run(mut self) {
        let Some(mut connection) = open(&self.job.common).await else {
            return;
        };
        let (shared, who) = (self.job.common.shared.clone(), self.job.common.who.clone());
        let filter = self.job.filter();
        let mut subscribed = false;
        let mut seen = Seen::new(self.job.common.workload.publishers);
        let result = self
            .receive(&mut connection, &filter, &mut subscribed, &mut seen)
            .await;
        if !subscribed {
            shared.settle();
        }
        shared.deposit(seen);
        match result {
            Ok(()) => connection.disconnect().await,
            Err(e) => shared.errors.record(format!("{who}: {e}")),
        }
    }

    /// Subscribes, then counts and acknowledges PUBLISHes until told to
    /// stop. Sets `subscribed` (and counts the client as settled) on a good SUBACK.
    async fn receive(
        &mut self,
        connection: &mut Connection,
        filter: &str,
        subscribed: &mut bool,
        seen: &mut Seen,
    ) -> Result<(), ClientError> {
        let job = &mut self.job;
        let (shared, settings) = (&job.common.shared, &job.common.settings);
        let keep_alive = settings.client.keep_alive;
        let deadline = job.deadline;
        codec::encode_subscribe(
            &mut connection.writer.buf,
            1,
            filter,
            job.common.workload.sub_qos,
        )?;
        connection.writer.flush().await?;
        let suback_deadline = Instant::now() + settings.client.timeout;
        let mut latencies = Vec::with_capacity(MAX_BATCH as usize);
        loop {
            let mut wake = connection.writer.ping_at(keep_alive).unwrap_or(deadline);
            if !*subscribed {
                wake = wake.min(suback_deadline);
            }
            tokio::select! {
                biased;
                _ = job.stop.changed() => return Ok(()),
                read = connection.reader.fill() => read?,
                _ = sleep_until(wake.min(deadline)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(());
                    }
                    if !*subscribed && now >= suback_deadline {
                        return Err(ClientError::Timeout("SUBACK"));
                    }
                    if connection.writer.ping_at(keep_alive).is_some_and(|at| now >= at) {
                        connection.writer.ping().await?;
                    }
                    continue;
                }
            }
            let now_ns = payload::now_ns();
            let mut delivered = 0;
            let mut unstamped = 0;
            while let Some(packet) = connection.reader.next_packet()? {
                let out = &mut connection.writer.buf;
                match packet {
                    Packet::Publish(publish) => {
                        delivered += 1;
                        match payload::latency_us(&publish.payload, now_ns) {
                            Some(us) => latencies.push(us),
                            None => unstamped += 1,
                        }
                        if let Some(id) = payload::message_id(&publish.payload) {
                            seen.record(id);
                        }
                        match publish.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => codec::encode_ack(out, Ack::PubAck, publish.pkid),
                            QoS::ExactlyOnce => codec::encode_ack(out, Ack::PubRec, publish.pkid),
                        }
                    }
                    Packet::PubRel(pkid) => codec::encode_ack(out, Ack::PubComp, pkid),
                    Packet::SubAck { return_codes, .. } if !*subscribed => {
                        if return_codes.first().is_some_and(|&code| code > 2) {
                            return Err(ClientError::Unexpected("SUBACK refusing the filter"));
                        }
                        *subscribed = true;
                        shared.settle();
                    }
                    Packet::PingResp => {}
                    Packet::SubAck { .. } => return Err(ClientError::Unexpected("second SUBACK")),
                    Packet::ConnAck { .. } => {
                        return Err(ClientError::Unexpected("second CONNACK"))
                    }
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                        return Err(ClientError::Unexpected(
                            "acknowledgement to a subscriber that never published",
                        ))
                    }
                }
                if latencies.len() >= MAX_BATCH as usize {
                    shared.delivered(0, 0, &mut latencies);
                }
            }
            shared.delivered(delivered, unstamped, &mut latencies);
            connection.writer.flush().await?;
        }
    }
}

/// One publishing client.
struct Publisher {
    job: PublisherJob,
}

impl Publisher {
    async fn run(mut self) {
        let Some(mut connection) = open(&self.job.common).await else {
            return;
        };
        let (shared, who) = (self.job.common.shared.clone(), self.job.common.who.clone());
        shared.settle();
        let topic = self.job.topic();
        let result = match self.wait_for_start(&mut connection).await {
            Ok(Some(start)) => self.publish(&mut connection, &topic, start).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => connection.disconnect().await,
            Err(e) => shared.errors.record(format!("{who}: {e}")),
        }
    }

    /// Waits for the common start time, keeping the connection alive.
    /// `None` if the run ended without starting.
    async fn wait_for_start(
        &mut self,
        connection: &mut Connection,
    ) -> Result<Option<Instant>, ClientError> {
        let keep_alive = self.job.common.settings.client.keep_alive;
        let deadline = Instant::now() + self.job.start_timeout();
        let start: &mut watch::Receiver<Option<Instant>> = &mut self.job.start;
        loop {
            if let Some(start) = *start.borrow_and_update() {
                return Ok(Some(start));
            }
            let wake = connection.writer.ping_at(keep_alive).unwrap_or(deadline);
            tokio::select! {
                changed = start.changed() => if changed.is_err() {
                    return Ok(*start.borrow());
                },
                read = connection.reader.fill() => {
                    read?;
                    while let Some(packet) = connection.reader.next_packet()? {
                        if packet != Packet::PingResp {
                            return Err(ClientError::Unexpected("packet before publishing"));
                        }
                    }
                }
                _ = sleep_until(wake.min(deadline)) => {
                    if Instant::now() >= deadline {
                        return Err(ClientError::Timeout("the other clients to connect"));
                    }
                    connection.writer.ping().await?;
                }
            }
        }
    }

    /// Publishes from `start` until the count or the duration is reached,
    /// then waits (at most the drain time) for outstanding acknowledgements.
    async fn publish(
        &self,
        connection: &mut Connection,
        topic: &str,
        start: Instant,
    ) -> Result<(), ClientError> {
        let c = &self.job.common;
        let (w, counters) = (&c.workload, &c.shared.counters);
        let keep_alive = c.settings.client.keep_alive;
        let qos = w.pub_qos;
        let end = start + w.duration;
        let ack_deadline = self.job.ack_deadline(start);
        let limit = w.count.unwrap_or(u64::MAX);
        let interval = w.interval();
        let publisher = u32::try_from(c.index).unwrap_or(u32::MAX);
        let mut ids = PacketIds::default();
        let mut sent = 0u64;
        sleep_until(start).await;
        loop {
            let now = Instant::now();
            let sending = sent < limit && now < end;
            if !sending && ids.is_empty() {
                return Ok(());
            }
            if now >= ack_deadline {
                return Err(ClientError::Timeout("acknowledgements (drain time over)"));
            }
            let room = if qos == QoS::AtMostOnce {
                MAX_BATCH
            } else {
                w.inflight.saturating_sub(ids.len()) as u64
            };
            let next_send = match interval {
                Some(interval) => start + interval.mul_f64(sent as f64),
                None => now,
            };
            if sending && room > 0 && next_send <= now {
                let due = match interval {
                    Some(interval) => super::Workload::due(interval, start, now, sent),
                    None => MAX_BATCH,
                };
                let batch = due.min(room).min(MAX_BATCH).min(limit - sent);
                for i in 0..batch {
                    let pkid = if qos == QoS::AtMostOnce {
                        0
                    } else {
                        ids.allocate()
                            .ok_or(ClientError::Unexpected("packet id exhaustion"))?
                    };
                    let out = &mut connection.writer.buf;
                    codec::encode_publish_header(out, topic, qos, pkid, w.payload_size)?;
                    let id = MessageId {
                        publisher,
                        seq: (sent + i) as u32,
                    };
                    payload::put_stamped(out, w.payload_size, payload::now_ns(), id);
                }
                connection.writer.flush().await?;
                sent += batch;
                counters.add_sent(batch);
                continue;
            }
            let mut wake = if sending { end } else { ack_deadline };
            if sending && room > 0 {
                wake = wake.min(next_send);
            }
            if let Some(ping_at) = connection.writer.ping_at(keep_alive) {
                wake = wake.min(ping_at);
            }
            tokio::select! {
                biased;
                read = connection.reader.fill() => {
                    read?;
                    self.handle_acks(connection, &mut ids)?;
                    connection.writer.flush().await?;
                }
                _ = sleep_until(wake) => {
                    if connection.writer.ping_at(keep_alive).is_some_and(|at| Instant::now() >= at) {
                        connection.writer.ping().await?;
                    }
                }
            }
        }
    }

    /// Processes acknowledgements: frees packet ids, queues PUBRELs.
    fn handle_acks(
        &self,
        connection: &mut Connection,
        ids: &mut PacketIds,
    ) -> Result<(), ClientError> {
        let qos = self.job.common.workload.pub_qos;
        let mut completed = 0;
        while let Some(packet) = connection.reader.next_packet()? {
            match packet {
                Packet::PubAck(id) if qos == QoS::AtLeastOnce && ids.release(id) => completed += 1,
                Packet::PubRec(id) if qos == QoS::ExactlyOnce && ids.contains(id) => {
                    codec::encode_ack(&mut connection.writer.buf, Ack::PubRel, id);
                }
                Packet::PubComp(id) if qos == QoS::ExactlyOnce && ids.release(id) => completed += 1,
                Packet::PingResp => {}
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                    return Err(ClientError::Unexpected(
                        "acknowledgement for an unknown packet id",
                    ))
                }
                _ => {
                    return Err(ClientError::Unexpected(
                        "packet other than an acknowledgement",
                    ))
                }
            }
        }
        self.job.common.shared.acked(completed);
        Ok(())
    }
}
