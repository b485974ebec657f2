//! A publisher of the `rolling` scenario: QoS 1 at a fixed rate from the
//! run's start, through lost connections.
//!
//! Message `seq` is due at `start + seq / rate`; whatever fell due while
//! the publisher had no connection goes out as soon as it has one again
//! (within its window). Messages written but not acknowledged when a
//! connection is lost are sent again, first, on the next connection, as
//! new PUBLISHes (new packet ids, Clean Session on) carrying the same
//! identity.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{ClientError, Connection, PacketIds};
use crate::codec::{self, Packet, QoS};
use crate::payload::{self, MessageId};
use crate::run::sleep_until;

use super::{Dialer, Run};

/// Most PUBLISHes encoded into one write.
const MAX_BATCH: usize = 64;

/// How often a publisher with nothing to do looks at the run's state.
const IDLE: Duration = Duration::from_millis(100);

/// A publisher's messages across its connections.
struct Outbox {
    index: usize,
    topic: String,
    /// When message 0 was due.
    start: Instant,
    /// The next sequence number never sent.
    next_seq: u32,
    /// Sent, not acknowledged yet, in any connection so far.
    unacked: BTreeSet<u32>,
}

/// Why a connection's session ended.
enum Ended {
    /// Publishing is over and everything acknowledged, or the drain ran
    /// out.
    Done,
    /// The connection was lost.
    Lost(ClientError),
}

/// Runs publisher `index` until publishing stopped and every message was
/// acknowledged, or the drain ran out.
pub async fn run(run: Arc<Run>, index: usize, start: Instant) {
    let client_id = run.client_id('p', index);
    let mut outbox = Outbox {
        index,
        start,
        topic: run.topic(index),
        next_seq: 0,
        unacked: BTreeSet::new(),
    };
    let mut dialer = Dialer::new(index);
    let mut lost_at: Option<Instant> = None;
    loop {
        let drain_end = run.drain_end();
        if drain_end.is_some() && outbox.unacked.is_empty() {
            return;
        }
        let deadline = drain_end.unwrap_or(run.hard_deadline);
        let Some(opened) = dialer.dial(&run, &client_id, true, deadline).await else {
            return;
        };
        if let Some(at) = lost_at.take() {
            run.gaps.record(at.elapsed());
            run.publisher_reconnects.fetch_add(1, Ordering::Relaxed);
            run.event(format_args!(
                "publisher {index}: connected to {} after {:.3} s ({} failed attempts, CONNACK in {:.3} s), {} to send again",
                dialer.last.map_or("?".into(), |a| a.to_string()),
                at.elapsed().as_secs_f64(),
                dialer.failures,
                opened.took.as_secs_f64(),
                outbox.unacked.len(),
            ));
        }
        let mut connection = opened.connection;
        match session(&run, &mut connection, &mut outbox).await {
            Ended::Done => {
                connection.disconnect().await;
                return;
            }
            Ended::Lost(e) => {
                lost_at = Some(Instant::now());
                run.event(format_args!(
                    "publisher {index}: connection to {} lost: {e}",
                    dialer.last.map_or("?".into(), |a| a.to_string()),
                ));
                if !matches!(e, ClientError::Closed | ClientError::Io(_)) {
                    run.errors.record(format!("publisher {index}: {e}"));
                }
            }
        }
    }
}

/// Publishes on one connection until it is lost or the work is done.
async fn session(run: &Run, connection: &mut Connection, outbox: &mut Outbox) -> Ended {
    // What the last connection left unacknowledged goes first.
    let mut again: VecDeque<u32> = outbox.unacked.iter().copied().collect();
    let mut in_flight: HashMap<u16, u32> = HashMap::new();
    let mut ids = PacketIds::default();
    let keep_alive = run.settings.client.keep_alive;
    let interval = Duration::from_secs_f64(1.0 / run.rate);
    loop {
        let now = Instant::now();
        let drain_end = run.drain_end();
        if drain_end.is_some_and(|end| now >= end)
            || (drain_end.is_some() && outbox.unacked.is_empty())
        {
            return Ended::Done;
        }
        // Messages due by now: slots 0..=elapsed/interval.
        let due = if drain_end.is_none() {
            let elapsed = now.saturating_duration_since(outbox.start).as_secs_f64();
            (elapsed * run.rate) as u64 + 1
        } else {
            u64::from(outbox.next_seq)
        };
        let mut written = 0;
        while written < MAX_BATCH && ids.len() < run.inflight {
            let (seq, resend) = match again.pop_front() {
                Some(seq) if outbox.unacked.contains(&seq) => (seq, true),
                Some(_) => continue,
                None if u64::from(outbox.next_seq) < due => (outbox.next_seq, false),
                None => break,
            };
            let Some(pkid) = ids.allocate() else { break };
            let out = &mut connection.writer.buf;
            if let Err(e) =
                codec::encode_publish_header(out, &outbox.topic, QoS::AtLeastOnce, pkid, run.size)
            {
                return Ended::Lost(e.into());
            }
            let id = MessageId {
                publisher: u32::try_from(outbox.index).unwrap_or(u32::MAX),
                seq,
            };
            payload::put_stamped(out, run.size, payload::now_ns(), id);
            in_flight.insert(pkid, seq);
            if resend {
                run.resent.fetch_add(1, Ordering::Relaxed);
            } else {
                outbox.unacked.insert(seq);
                outbox.next_seq += 1;
                run.published[outbox.index].fetch_add(1, Ordering::Relaxed);
            }
            written += 1;
        }
        if written > 0 {
            if let Err(e) = connection.writer.flush().await {
                return Ended::Lost(e);
            }
            run.counters.add_sent(written as u64);
            continue;
        }
        // Nothing to write now: wait for acknowledgements, the next slot,
        // a ping, or a change of the run's state.
        let mut wake = now + IDLE;
        if drain_end.is_none() && ids.len() < run.inflight {
            let next_slot = outbox.start + interval.mul_f64(f64::from(outbox.next_seq));
            wake = wake.min(next_slot.max(now));
        }
        if let Some(ping_at) = connection.writer.ping_at(keep_alive) {
            wake = wake.min(ping_at);
        }
        let mut stop = run.stop.clone();
        tokio::select! {
            biased;
            read = connection.reader.fill() => {
                if let Err(e) = read {
                    return Ended::Lost(e);
                }
                if let Err(e) = take_acks(run, connection, outbox, &mut in_flight, &mut ids) {
                    return Ended::Lost(e);
                }
            }
            _ = stop.changed() => {}
            _ = sleep_until(wake) => {
                if connection.writer.ping_at(keep_alive).is_some_and(|at| Instant::now() >= at) {
                    if let Err(e) = connection.writer.ping().await {
                        return Ended::Lost(e);
                    }
                }
            }
        }
    }
}

/// Takes the PUBACKs received: their messages are acknowledged.
fn take_acks(
    run: &Run,
    connection: &mut Connection,
    outbox: &mut Outbox,
    in_flight: &mut HashMap<u16, u32>,
    ids: &mut PacketIds,
) -> Result<(), ClientError> {
    let mut acked = 0;
    while let Some(packet) = connection.reader.next_packet()? {
        match packet {
            Packet::PubAck(pkid) => {
                let Some(seq) = in_flight.remove(&pkid) else {
                    return Err(ClientError::Unexpected("PUBACK for an unknown packet id"));
                };
                ids.release(pkid);
                if outbox.unacked.remove(&seq) {
                    acked += 1;
                    run.acked[outbox.index].lock().record(MessageId {
                        publisher: u32::try_from(outbox.index).unwrap_or(u32::MAX),
                        seq,
                    });
                }
            }
            Packet::PingResp => {}
            _ => return Err(ClientError::Unexpected("packet other than PUBACK")),
        }
    }
    if acked > 0 {
        run.counters.acked.fetch_add(acked, Ordering::Relaxed);
    }
    Ok(())
}
