//! A subscriber of the `rolling` scenario: a persistent session (Clean
//! Session off) that reconnects whenever its connection is lost, and
//! subscribes again if it comes back to no session.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::client::{ClientError, Connection};
use crate::codec::{self, Ack, Packet, QoS};
use crate::payload::{self, MessageId};
use crate::run::sleep_until;

use super::super::{acknowledge, check_suback};
use super::{Dialer, Run};

/// Packet identifier of the SUBSCRIBE.
const SUBSCRIBE_ID: u16 = 1;

/// Why a connection's session ended.
enum Ended {
    /// The run told the subscribers to leave.
    Done,
    /// The connection was lost.
    Lost(ClientError),
}

/// Runs subscriber `index` until the run tells it to leave.
pub async fn run(run: Arc<Run>, index: usize) {
    let client_id = run.client_id('s', index);
    let filter = run.topic(index);
    let mut dialer = Dialer::new(index);
    let Some(mut connection) = setup(&run, &mut dialer, &client_id, &filter, index).await else {
        return;
    };
    run.subscribed.fetch_add(1, Ordering::Relaxed);
    let mut subscribe = false;
    loop {
        match receive(&run, &mut connection, index, &filter, subscribe).await {
            Ended::Done => {
                connection.disconnect().await;
                return;
            }
            Ended::Lost(e) => {
                run.event(format_args!(
                    "subscriber {index}: connection to {} lost: {e}",
                    dialer.last.map_or("?".into(), |a| a.to_string()),
                ));
                if !matches!(e, ClientError::Closed | ClientError::Io(_)) {
                    run.errors.record(format!("subscriber {index}: {e}"));
                }
            }
        }
        let lost_at = Instant::now();
        let deadline = run.drain_end().unwrap_or(run.hard_deadline);
        let Some(opened) = dialer.dial(&run, &client_id, false, deadline).await else {
            return;
        };
        run.gaps.record(lost_at.elapsed());
        run.subscriber_reconnects.fetch_add(1, Ordering::Relaxed);
        run.event(format_args!(
            "subscriber {index}: connected to {} after {:.3} s ({} failed attempts, CONNACK in {:.3} s), session present: {}",
            dialer.last.map_or("?".into(), |a| a.to_string()),
            lost_at.elapsed().as_secs_f64(),
            dialer.failures,
            opened.took.as_secs_f64(),
            opened.session_present,
        ));
        subscribe = !opened.session_present;
        if subscribe {
            run.sessions_lost.fetch_add(1, Ordering::Relaxed);
        }
        connection = opened.connection;
    }
}

/// A fresh persistent session subscribed to `filter`: any earlier session
/// of the client id wiped, then Clean Session off. Tries until the run's
/// setup deadline.
async fn setup(
    run: &Run,
    dialer: &mut Dialer,
    client_id: &str,
    filter: &str,
    index: usize,
) -> Option<Connection> {
    loop {
        let attempt = async {
            let wiped = dialer
                .dial(run, client_id, true, run.setup_deadline)
                .await?;
            wiped.connection.disconnect().await;
            let mut opened = dialer
                .dial(run, client_id, false, run.setup_deadline)
                .await?;
            let subscribed = super::super::subscribe(
                &mut opened.connection,
                filter,
                QoS::AtLeastOnce,
                run.settings.client.timeout,
            );
            Some(subscribed.await.map(|()| opened.connection))
        };
        match attempt.await {
            None => {
                run.errors
                    .record(format!("subscriber {index}: not subscribed in time"));
                return None;
            }
            Some(Ok(connection)) => return Some(connection),
            Some(Err(e)) => run.errors.record(format!("subscriber {index}: {e}")),
        }
        if Instant::now() >= run.setup_deadline {
            return None;
        }
    }
}

/// Takes and acknowledges messages on one connection (subscribing first if
/// `subscribe`) until it is lost or the run tells the subscribers to leave.
async fn receive(
    run: &Run,
    connection: &mut Connection,
    index: usize,
    filter: &str,
    subscribe: bool,
) -> Ended {
    match receive_inner(run, connection, index, filter, subscribe).await {
        Ok(()) => Ended::Done,
        Err(e) => Ended::Lost(e),
    }
}

async fn receive_inner(
    run: &Run,
    connection: &mut Connection,
    index: usize,
    filter: &str,
    subscribe: bool,
) -> Result<(), ClientError> {
    if subscribe {
        codec::encode_subscribe(
            &mut connection.writer.buf,
            SUBSCRIBE_ID,
            filter,
            QoS::AtLeastOnce,
        )?;
        connection.writer.flush().await?;
    }
    let keep_alive = run.settings.client.keep_alive;
    let mut finish = run.finish.clone();
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    loop {
        // What is already buffered first: the messages a resumed session
        // gets may arrive in the same segment as its CONNACK.
        let now_ns = payload::now_ns();
        let mut delivered = 0;
        while let Some(packet) = connection.reader.next_packet()? {
            let out = &mut connection.writer.buf;
            match packet {
                Packet::Publish(publish) => {
                    delivered += 1;
                    acknowledge(out, publish.qos, publish.pkid);
                    if let Some(us) = payload::latency_us(&publish.payload, now_ns) {
                        latencies.push(us);
                    }
                    if let Some(id) = payload::message_id(&publish.payload) {
                        ids.push(id);
                    }
                }
                Packet::PubRel(pkid) => codec::encode_ack(out, Ack::PubComp, pkid),
                Packet::SubAck { .. } => check_suback(&packet)?,
                Packet::PingResp => {}
                _ => {
                    return Err(ClientError::Unexpected(
                        "packet a subscriber does not expect",
                    ))
                }
            }
        }
        record(run, index, delivered, &mut ids, &mut latencies);
        connection.writer.flush().await?;
        if *finish.borrow_and_update() {
            return Ok(());
        }
        let wake = connection
            .writer
            .ping_at(keep_alive)
            .unwrap_or(run.hard_deadline)
            .min(run.hard_deadline);
        tokio::select! {
            biased;
            _ = finish.changed() => return Ok(()),
            read = connection.reader.fill() => read?,
            _ = sleep_until(wake) => {
                if Instant::now() >= run.hard_deadline {
                    return Ok(());
                }
                connection.writer.ping().await?;
            }
        }
    }
}

/// Counts a read's `delivered` PUBLISHes, their identities and latencies.
fn record(
    run: &Run,
    index: usize,
    delivered: u64,
    ids: &mut Vec<MessageId>,
    latencies: &mut Vec<u64>,
) {
    if !latencies.is_empty() {
        run.latencies.record_us(latencies);
        latencies.clear();
    }
    if delivered > 0 {
        run.counters.add_delivered(delivered);
    }
    if ids.is_empty() {
        return;
    }
    let mut received = run.received[index].lock();
    for id in ids.drain(..) {
        received.record(id);
    }
}
