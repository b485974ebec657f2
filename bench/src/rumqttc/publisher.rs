//! A rumqttc publisher, as two futures of one task: a producer that queues
//! stamped PUBLISHes into the client's request channel (at the fixed rate,
//! or flat out: as fast as the channel takes them), and a driver that polls
//! the event loop, which writes them as rumqttc's in-flight window allows
//! and reports what is written and acknowledged.
//!
//! The producer ends by queueing an UNSUBSCRIBE of its own topic (it never
//! subscribed, so it changes nothing at the broker): requests leave the
//! channel in order, so once the event loop reports that UNSUBSCRIBE
//! written, every PUBLISH before it was, and the publisher is done when
//! rumqttc has no PUBLISH in flight any more.

use std::pin::pin;
use std::time::Instant;

use ::rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet};

use super::{connect, disconnect, qos};
use crate::codec::QoS;
use crate::payload::{self, MessageId};
use crate::run::{sleep_until, PublisherJob, Workload};

/// Runs one publisher of the run.
pub async fn run(mut job: PublisherJob, capacity: usize) {
    let Some((client, mut eventloop)) = connect(&job.common, capacity).await else {
        return;
    };
    let (shared, who) = (job.common.shared.clone(), job.common.who.clone());
    shared.settle();
    let topic = job.topic();
    if topic.contains(['+', '#']) {
        shared
            .errors
            .record(format!("{who}: topic `{topic}` contains a wildcard"));
        return;
    }
    let start = match wait_for_start(&mut job, &mut eventloop).await {
        Ok(Some(start)) => start,
        Ok(None) => return disconnect(&client, &mut eventloop).await,
        Err(e) => return shared.errors.record(format!("{who}: {e}")),
    };
    let ((), driven) = tokio::join!(
        produce(&job, client.clone(), topic, start),
        drive(&job, client, eventloop, start),
    );
    if let Err(e) = driven {
        shared.errors.record(format!("{who}: {e}"));
    }
}

/// Waits for the common start time while the event loop keeps the
/// connection alive. `None` if the run ended without starting.
async fn wait_for_start(
    job: &mut PublisherJob,
    eventloop: &mut EventLoop,
) -> Result<Option<Instant>, String> {
    let mut timeout = pin!(sleep_until(Instant::now() + job.start_timeout()));
    loop {
        if let Some(start) = *job.start.borrow_and_update() {
            return Ok(Some(start));
        }
        tokio::select! {
            changed = job.start.changed() => if changed.is_err() {
                return Ok(*job.start.borrow());
            },
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::PingResp) | Event::Outgoing(Outgoing::PingReq)) => {}
                Ok(other) => return Err(format!("unexpected {other:?} before publishing")),
                Err(e) => return Err(e.to_string()),
            },
            _ = &mut timeout => return Err("timed out waiting for the other clients to connect".into()),
        }
    }
}

/// Queues PUBLISHes from `start` until the count or the duration is
/// reached, then the UNSUBSCRIBE that marks the end. Stops early, quietly,
/// if the event loop is gone (the driver reports why).
async fn produce(job: &PublisherJob, client: AsyncClient, topic: String, start: Instant) {
    let w = &job.common.workload;
    let end = start + w.duration;
    let limit = w.count.unwrap_or(u64::MAX);
    let interval = w.interval();
    let publisher = u32::try_from(job.common.index).unwrap_or(u32::MAX);
    let qos = qos(w.pub_qos);
    let mut sent = 0u64;
    sleep_until(start).await;
    while sent < limit {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = match interval {
            Some(interval) => {
                let next = start + interval.mul_f64(sent as f64);
                if next > now {
                    sleep_until(next.min(end)).await;
                    continue;
                }
                Workload::due(interval, start, now, sent)
            }
            None => 1,
        };
        for _ in 0..due.min(limit - sent) {
            let mut payload = Vec::with_capacity(w.payload_size);
            let id = MessageId {
                publisher,
                seq: sent as u32,
            };
            payload::put_stamped(&mut payload, w.payload_size, payload::now_ns(), id);
            if client
                .publish(topic.clone(), qos, false, payload)
                .await
                .is_err()
            {
                return;
            }
            sent += 1;
        }
    }
    let _ = client.unsubscribe(topic).await;
}

/// Polls the event loop, counting PUBLISHes written and acknowledged,
/// until the producer's marker is written and nothing is in flight; then
/// disconnects. The event loop is dropped on return, which ends the
/// producer if it is still waiting for room in the channel.
async fn drive(
    job: &PublisherJob,
    client: AsyncClient,
    mut eventloop: EventLoop,
    start: Instant,
) -> Result<(), String> {
    let shared = &job.common.shared;
    let qos = job.common.workload.pub_qos;
    let mut deadline = pin!(sleep_until(job.ack_deadline(start)));
    let mut all_written = false;
    let mut disconnecting = false;
    loop {
        let event = tokio::select! {
            biased;
            event = eventloop.poll() => event.map_err(|e| e.to_string())?,
            _ = &mut deadline => {
                return Err(if all_written {
                    format!(
                        "timed out waiting for acknowledgements (drain time over, {} in flight)",
                        eventloop.state.inflight()
                    )
                } else {
                    "timed out writing PUBLISHes (drain time over): the broker stopped reading them"
                        .to_string()
                });
            }
        };
        match event {
            Event::Outgoing(Outgoing::Publish(_)) => shared.counters.add_sent(1),
            Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => shared.acked(1),
            Event::Incoming(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => shared.acked(1),
            Event::Outgoing(Outgoing::Unsubscribe(_)) => all_written = true,
            Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
            Event::Incoming(Packet::Publish(_)) => {
                return Err("PUBLISH to a client that never subscribed".into());
            }
            _ => {}
        }
        if all_written && !disconnecting && eventloop.state.inflight() == 0 {
            client
                .try_disconnect()
                .map_err(|e| format!("cannot queue DISCONNECT: {e}"))?;
            disconnecting = true;
        }
    }
}
