//! Scenarios for a broker that runs as several nodes (a cluster), where a
//! client may leave one node and come back on another:
//!
//! - [`catchup`]: messages queued for an offline persistent session,
//!   delivered when its client comes back (on another node);
//! - [`takeover`]: how long a second connection with the same client id,
//!   on another node, waits for its CONNACK, and how long the first one
//!   takes to be closed;
//! - [`rolling`]: publishers and persistent subscribers that reconnect
//!   whenever their connection is lost, counting what a rolling restart
//!   of the nodes loses (acknowledged but never delivered) and duplicates.
//!
//! Each counts deliveries at the subscriber (distinct messages by the
//! identity stamped in the payload, duplicates apart), never what was sent.
//! Clients use the crate's own MQTT 3.1.1 client ([`crate::client`]).

pub mod catchup;
pub mod rolling;
pub mod takeover;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{ClientError, ClientOptions, Connection, Opened, PacketIds};
use crate::codec::{self, Ack, Packet, QoS};
use crate::payload::{self, MessageId};

/// Packet identifier of the one SUBSCRIBE a client sends.
const SUBSCRIBE_ID: u16 = 1;

/// Most PUBLISHes encoded into one write.
const MAX_BATCH: usize = 64;

/// `base` connecting to `addr` with the Clean Session flag `clean`.
pub fn options_at(base: &ClientOptions, addr: SocketAddr, clean: bool) -> ClientOptions {
    ClientOptions {
        addr,
        clean_session: clean,
        ..base.clone()
    }
}

/// Connects with Clean Session and disconnects: the broker forgets any
/// session `client_id` had.
pub async fn wipe_session(
    base: &ClientOptions,
    addr: SocketAddr,
    client_id: &str,
) -> Result<(), ClientError> {
    let (connection, _) = Connection::open(&options_at(base, addr, true), client_id).await?;
    connection.disconnect().await;
    Ok(())
}

/// Opens a persistent session (Clean Session off) for `client_id` at
/// `addr`, fresh (any earlier one wiped first), subscribed to `filter`.
pub async fn fresh_subscription(
    base: &ClientOptions,
    addr: SocketAddr,
    client_id: &str,
    filter: &str,
    qos: QoS,
) -> Result<Connection, ClientError> {
    wipe_session(base, addr, client_id).await?;
    let Opened { mut connection, .. } =
        Connection::open_session(&options_at(base, addr, false), client_id).await?;
    subscribe(&mut connection, filter, qos, base.timeout).await?;
    Ok(connection)
}

/// Subscribes to `filter` and waits (at most `timeout`) for the SUBACK. A
/// session that is fresh receives nothing before it, so any other packet
/// is an error.
pub async fn subscribe(
    connection: &mut Connection,
    filter: &str,
    qos: QoS,
    timeout: Duration,
) -> Result<(), ClientError> {
    codec::encode_subscribe(&mut connection.writer.buf, SUBSCRIBE_ID, filter, qos)?;
    connection.writer.flush().await?;
    let answer = tokio::time::timeout(timeout, connection.reader.read_packet())
        .await
        .map_err(|_| ClientError::Timeout("SUBACK"))??;
    check_suback(&answer)
}

/// Whether `packet` is a SUBACK granting the one filter.
pub fn check_suback(packet: &Packet) -> Result<(), ClientError> {
    match packet {
        Packet::SubAck { return_codes, .. } if return_codes.first().is_some_and(|&c| c <= 2) => {
            Ok(())
        }
        Packet::SubAck { .. } => Err(ClientError::Unexpected("SUBACK refusing the filter")),
        _ => Err(ClientError::Unexpected("packet other than SUBACK")),
    }
}

/// What a burst of QoS 1/2 messages came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// PUBLISHes written.
    pub sent: u64,
    /// Of those, acknowledged (PUBACK, or PUBCOMP at QoS 2).
    pub acked: u64,
    /// From the first PUBLISH to the last acknowledgement.
    pub took: Duration,
}

/// Publishes `count` stamped messages (publisher index 0, sequence
/// numbers from 0) of `size` bytes on `topic` at QoS 1 or 2, at most
/// `window` unacknowledged, and waits for every acknowledgement until
/// `deadline`. Stops at the first error, returning it with what was
/// counted so far.
pub async fn publish_burst(
    connection: &mut Connection,
    topic: &str,
    qos: QoS,
    count: u64,
    size: usize,
    window: usize,
    deadline: Instant,
) -> (Burst, Result<(), ClientError>) {
    let started = Instant::now();
    let mut burst = Burst {
        sent: 0,
        acked: 0,
        took: Duration::ZERO,
    };
    let result = publish_burst_inner(
        connection, topic, qos, count, size, window, deadline, &mut burst,
    )
    .await;
    burst.took = started.elapsed();
    (burst, result)
}

#[allow(clippy::too_many_arguments)] // the pieces of one burst, in one place
async fn publish_burst_inner(
    connection: &mut Connection,
    topic: &str,
    qos: QoS,
    count: u64,
    size: usize,
    window: usize,
    deadline: Instant,
    burst: &mut Burst,
) -> Result<(), ClientError> {
    let mut ids = PacketIds::default();
    while burst.acked < count {
        let room = window.saturating_sub(ids.len()).min(MAX_BATCH) as u64;
        let batch = room.min(count - burst.sent);
        for _ in 0..batch {
            let pkid = ids
                .allocate()
                .ok_or(ClientError::Unexpected("packet id exhaustion"))?;
            let out = &mut connection.writer.buf;
            codec::encode_publish_header(out, topic, qos, pkid, size)?;
            let id = MessageId {
                publisher: 0,
                seq: u32::try_from(burst.sent).unwrap_or(u32::MAX),
            };
            payload::put_stamped(out, size, payload::now_ns(), id);
            burst.sent += 1;
        }
        connection.writer.flush().await?;
        let read = tokio::time::timeout_at(deadline.into(), connection.reader.fill());
        read.await
            .map_err(|_| ClientError::Timeout("acknowledgements"))??;
        while let Some(packet) = connection.reader.next_packet()? {
            match packet {
                Packet::PubAck(id) if qos == QoS::AtLeastOnce && ids.release(id) => {
                    burst.acked += 1;
                }
                Packet::PubRec(id) if qos == QoS::ExactlyOnce && ids.contains(id) => {
                    codec::encode_ack(&mut connection.writer.buf, Ack::PubRel, id);
                }
                Packet::PubComp(id) if qos == QoS::ExactlyOnce && ids.release(id) => {
                    burst.acked += 1;
                }
                Packet::PingResp => {}
                _ => {
                    return Err(ClientError::Unexpected(
                        "packet other than an acknowledgement",
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Acknowledges a PUBLISH received at `qos` (nothing at QoS 0).
pub fn acknowledge(out: &mut bytes::BytesMut, qos: QoS, pkid: u16) {
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => codec::encode_ack(out, Ack::PubAck, pkid),
        QoS::ExactlyOnce => codec::encode_ack(out, Ack::PubRec, pkid),
    }
}

/// Milliseconds in `d`, as a float for reports.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suback_must_grant_the_filter() {
        let granted = Packet::SubAck {
            pkid: 1,
            return_codes: vec![1],
        };
        assert!(check_suback(&granted).is_ok());
        let refused = Packet::SubAck {
            pkid: 1,
            return_codes: vec![0x80],
        };
        assert!(check_suback(&refused).is_err());
        assert!(check_suback(&Packet::PingResp).is_err());
    }

    #[test]
    fn options_at_changes_only_the_address_and_the_clean_flag() {
        let base = ClientOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            keep_alive: 7,
            clean_session: true,
            username: Some("u".into()),
            password: Some("p".into()),
            timeout: Duration::from_secs(3),
            max_packet_size: 99,
        };
        let other = SocketAddr::from(([127, 0, 0, 1], 2));
        let o = options_at(&base, other, false);
        assert_eq!((o.addr, o.clean_session), (other, false));
        assert_eq!(
            (o.keep_alive, o.timeout, o.max_packet_size),
            (7, base.timeout, 99)
        );
        assert_eq!((o.username, o.password), (base.username, base.password));
    }
}
