//! CONNECT: from the first byte of a connection to its CONNACK.
//!
//! [`connect`] reads the CONNECT packet; [`negotiate`] decides, in one
//! place, whether the client is let in and on what terms (who it is:
//! [`super::login`]); then the session is attached and the CONNACK sent
//! (before the session is attached when the cluster says it may:
//! [`EarlyConnack`]). A refusal leaves through a single exit
//! ([`Refusal::send`]) that answers with the reason, logs it and closes
//! without a reset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::access::AclCache;
use crate::broker::{Attached, Broker, PublishError};
use crate::client::Control;
use crate::cluster::clients::EarlyConnack;
use crate::codec::{
    self, Connack, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion,
    ReasonCode,
};
use crate::config::Limits;
use crate::queue::QueueLimits;
use crate::ratelimit::TokenBucket;
use crate::session::Attachment;

use super::io::Io;
use super::negotiate::{negotiate, Terms};
use super::refusal::{Refusal, RefusalLog};
use super::{Connection, KeepAlive, Peer, Running};

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads CONNECT, authenticates the client and attaches its session.
/// Returns the running connection, or None when the connection was refused
/// or closed before that.
pub async fn connect<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
) -> Option<Running>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    broker.logger.new_connection(peer.addr, peer.local_port);
    let mut io = Io::new(stream);
    let read = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&peer.limits, &mut io));
    let connect = tokio::select! {
        read = read => match read {
            Ok(Ok(connect)) => connect,
            Ok(Err(early)) => {
                early.log(&broker);
                if io.wbuf.is_empty() {
                    io.finish().await;
                } else {
                    // A CONNACK tells the client why.
                    io.finish_lingering().await;
                }
                return None;
            }
            Err(_) => {
                // No CONNECT in time.
                broker.logger.connection_closed(None);
                return None;
            }
        },
        // The broker is closing: nothing was attached yet, just close.
        _ = closing(shutdown.clone()) => {
            broker.logger.connection_closed(None);
            return None;
        }
    };
    let conn = establish(broker, io, &peer, *connect).await?;
    Some(Box::pin(conn.run(shutdown)))
}

/// A failure before the session is attached.
enum EarlyClose {
    Io(std::io::Error),
    Eof,
    Decode(DecodeError),
}

impl EarlyClose {
    fn log(&self, broker: &Broker) {
        match self {
            EarlyClose::Io(e) => broker.logger.socket_error(None, e),
            EarlyClose::Eof => broker.logger.connection_closed(None),
            EarlyClose::Decode(e) => match e.reason_code() {
                ReasonCode::MALFORMED_PACKET => {
                    broker.logger.malformed_packet(None, &e.to_string())
                }
                ReasonCode::PACKET_TOO_LARGE => {
                    broker
                        .metrics
                        .quota_refusals
                        .with_label_values(&["packet_size"])
                        .inc();
                    broker.logger.oversize_packet(None)
                }
                _ => broker.logger.protocol_error(None, &e.to_string()),
            },
        }
    }
}

async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    limits: &Limits,
    io: &mut Io<S>,
) -> Result<Box<Connect>, EarlyClose> {
    let max = limits.max_packet_size;
    loop {
        // Read before decoding: the decoder consumes a packet it rejects.
        let claimed = claimed_protocol(&io.rbuf);
        match codec::decode(&mut io.rbuf, None, max) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => {
                return Err(EarlyClose::Decode(DecodeError::ExpectedConnect));
            }
            Ok(None) => match io.fill().await {
                Ok(true) => {}
                Ok(false) => return Err(EarlyClose::Eof),
                Err(e) => return Err(EarlyClose::Io(e)),
            },
            Err(e) => {
                // Answer a bad CONNECT with a CONNACK carrying the reason: in
                // 5.0 terms when the packet claims 5.0, else 3.1.1 terms
                // (return code 1 for an unsupported protocol version).
                let answer = match (&e, claimed) {
                    (DecodeError::UnsupportedProtocolVersion { .. }, _) => {
                        Some(ProtocolVersion::V311)
                    }
                    (DecodeError::ExpectedConnect, _) => None,
                    (_, Some(ProtocolVersion::V5)) => Some(ProtocolVersion::V5),
                    _ => None,
                };
                if let Some(version) = answer {
                    let connack = Packet::Connack(Connack {
                        session_present: false,
                        reason: e.reason_code(),
                        properties: Properties::default(),
                    });
                    let _ = codec::encode(&connack, version, &mut io.wbuf);
                }
                return Err(EarlyClose::Decode(e));
            }
        }
    }
}

/// The protocol version a (possibly malformed) CONNECT at the front of
/// `buf` claims: protocol name and level right after the fixed header.
fn claimed_protocol(buf: &[u8]) -> Option<ProtocolVersion> {
    let mut pos = 1;
    // Skip the remaining-length varint (at most 4 bytes).
    for _ in 0..4 {
        let byte = *buf.get(pos)?;
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let name_len = usize::from(u16::from_be_bytes([*buf.get(pos)?, *buf.get(pos + 1)?]));
    let name = buf.get(pos + 2..pos + 2 + name_len)?;
    let level = *buf.get(pos + 2 + name_len)?;
    match (name, level) {
        (b"MQTT", 5) => Some(ProtocolVersion::V5),
        (b"MQTT", 4) => Some(ProtocolVersion::V311),
        (b"MQIsdp", 3) => Some(ProtocolVersion::V31),
        _ => None,
    }
}

/// A client let in, with its session attached.
struct Accepted {
    terms: Terms,
    attached: Attached,
    /// The CONNACK went before the session was attached, with this
    /// Session Present flag ([`crate::cluster::clients::EarlyConnack`]).
    early_connack: Option<bool>,
}

/// Validates CONNECT, authenticates, attaches the session and sends
/// CONNACK. Returns None when the connection was refused (or closed right
/// after an early CONNACK).
async fn establish<S>(
    broker: Arc<Broker>,
    mut io: Io<S>,
    peer: &Peer,
    connect: Connect,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if broker.logger.verbose() {
        broker.logger.received(
            &display_id(&connect.client_id),
            &Packet::Connect(Box::new(connect.clone())),
        );
    }
    let terms = match negotiate(&broker, peer, &connect).await {
        Ok(terms) => terms,
        Err(refusal) => {
            refusal.send(&broker, &mut io, peer, connect.protocol).await;
            return None;
        }
    };
    let (attached, early_connack) =
        attach_early_connack(&broker, &mut io, peer, &connect, &terms).await;
    match attached {
        Ok(attached) => Some(Connection::start(
            broker,
            io,
            peer,
            &connect,
            Accepted {
                terms,
                attached,
                early_connack,
            },
        )),
        Err(e) if early_connack.is_some() => {
            // Let in already: a DISCONNECT (5.0: server busy) says so.
            broker.logger.error(&format!(
                "Client {} disconnected (server busy): its session cannot be attached after all: {e}.",
                terms.client_id
            ));
            if connect.protocol.is_v5() {
                let disconnect = Packet::Disconnect(Disconnect {
                    reason: ReasonCode::SERVER_BUSY,
                    properties: Properties::default(),
                });
                let _ = codec::encode(&disconnect, connect.protocol, &mut io.wbuf);
            }
            io.finish_lingering().await;
            None
        }
        Err(e) => {
            broker.logger.error(&format!(
                "Client {} refused (server unavailable): its session cannot be attached: {e}.",
                terms.client_id
            ));
            let refusal = Refusal {
                reason: ReasonCode::SERVER_UNAVAILABLE,
                text: "",
                log: RefusalLog::Unavailable,
            };
            refusal.send(&broker, &mut io, peer, connect.protocol).await;
            None
        }
    }
}

/// Attaches the session, writing the CONNACK meanwhile when the broker
/// says it may go before that is done ([`EarlyConnack`]): returns with the
/// Session Present flag it had. The client's packets are read once the
/// session is attached.
async fn attach_early_connack<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &Arc<Broker>,
    io: &mut Io<S>,
    peer: &Peer,
    connect: &Connect,
    terms: &Terms,
) -> (Result<Attached, PublishError>, Option<bool>) {
    let (early_tx, mut early_rx) = tokio::sync::oneshot::channel();
    let attaching = attach(broker, peer, connect, terms, early_tx);
    tokio::pin!(attaching);
    let mut early_connack = None;
    loop {
        tokio::select! {
            attached = &mut attaching => return (attached, early_connack),
            Ok(present) = &mut early_rx, if early_connack.is_none() => {
                early_connack = Some(present);
                let connack = Packet::Connack(Connack {
                    session_present: present,
                    reason: ReasonCode::SUCCESS,
                    properties: terms.properties.clone(),
                });
                if broker.logger.verbose() {
                    broker.logger.sending(&terms.client_id, &connack);
                }
                let _ = codec::encode(&connack, connect.protocol, &mut io.wbuf);
                let written = io.write_now();
                broker.metrics.bytes_sent.inc_by(written as u64);
            }
        }
    }
}

/// Attaches the session on the negotiated terms. `early` is told when the
/// CONNACK may go before that is done.
async fn attach(
    broker: &Arc<Broker>,
    peer: &Peer,
    connect: &Connect,
    terms: &Terms,
    early: EarlyConnack,
) -> Result<Attached, PublishError> {
    let Terms {
        connection_id,
        client,
        client_id,
        expiry,
        quotas,
        ..
    } = terms;
    let attachment = Attachment {
        connection_id: *connection_id,
        client: client.clone(),
    };
    let attached = broker
        .attach(
            client_id,
            connect.clean_start,
            *expiry,
            attachment,
            QueueLimits::from_limits(&peer.limits).with_quotas(quotas),
            connect.will.as_ref(),
            Some(early),
        )
        .await?;
    if attached.took_over {
        broker.logger.already_connected(client_id);
    }
    if let Some(device) = &client.info.fleet {
        broker.metrics.fleets.accepted(&device.fleet);
        if let Some(at) = device.expires_at.filter(|_| device.disconnect_at_expiry) {
            let expired = broker
                .metrics
                .fleets
                .disconnects
                .with_label_values(&[&device.fleet, "token_expired"]);
            broker.access.expiry().watch(at, client, expired);
        }
    }
    Ok(attached)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    /// The connection of an accepted client: its state on the terms
    /// negotiated, CONNACK queued, and what was in flight re-sent.
    fn start(
        broker: Arc<Broker>,
        io: Io<S>,
        peer: &Peer,
        connect: &Connect,
        accepted: Accepted,
    ) -> Connection<S> {
        let limits = peer.limits.clone();
        let Accepted {
            terms:
                Terms {
                    connection_id,
                    client,
                    client_id,
                    properties,
                    expiry,
                    keep_alive,
                    quotas,
                    user_slot,
                },
            attached,
            early_connack,
        } = accepted;
        let version = connect.protocol;
        let username = client.info.username.clone();
        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let publish_rate = quotas
            .publish_rate
            .map(|n| n.get())
            .unwrap_or(limits.publish_rate);
        let max_subscriptions = quotas
            .max_subscriptions
            .map(|n| n.get())
            .or((limits.max_subscriptions > 0).then_some(limits.max_subscriptions));
        let max_inbound_packet = quotas.max_packet_size.map_or(limits.max_packet_size, |n| {
            n.get().min(limits.max_packet_size)
        });
        let now = Instant::now();
        let mut conn = Connection {
            broker: broker.clone(),
            io,
            id: connection_id,
            version,
            session: attached.session,
            client: client.clone(),
            keep_alive: None,
            will: connect.will.clone().map(Box::new),
            connect_expiry: expiry,
            window: client_receive_max.min(limits.max_inflight),
            client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            aliases: None,
            client_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
            problem_info: connect.properties.request_problem_information != Some(0),
            routed: false,
            last_packet: now,
            acl: AclCache::resolve(&broker.access, &client.info, &client_id),
            publish_limit: (publish_rate > 0)
                .then(|| Box::new(TokenBucket::new(publish_rate, publish_rate, now))),
            max_inbound_packet,
            max_subscriptions,
            _user_slot: user_slot.map(Box::new),
            limits,
            hold: None,
        };
        broker
            .logger
            .client_connected(peer.addr, &client_id, connect, username.as_deref());
        if keep_alive > 0 {
            let limit = Duration::from_millis(u64::from(keep_alive) * 1500);
            let registration = broker.keep_alive.register(now + limit, &conn.client);
            conn.keep_alive = Some(KeepAlive {
                limit,
                registration,
            });
        }
        match early_connack {
            None => conn.send(&Packet::Connack(Connack {
                session_present: attached.session_present,
                reason: ReasonCode::SUCCESS,
                properties,
            })),
            Some(told) if told != attached.session_present => {
                // The client was told otherwise: it connects again and
                // is told what holds now. Not a loss of its connection:
                // no will.
                broker.logger.info(&format!(
                    "Client {client_id} disconnected: its session changed after the CONNACK said it was {}present; it may connect again.",
                    if told { "" } else { "not " }
                ));
                conn.will = None;
                conn.client
                    .mailbox
                    .send(Control::Disconnect(ReasonCode::SERVER_BUSY));
            }
            Some(_) => {}
        }
        broker.metrics.client_connected(&peer.listener);
        broker.presence(&client_id, &client.info, "connected", "");
        conn.resend_inflight();
        conn
    }
}

/// Resolves once the broker closes every connection. (A dropped sender is
/// a broker that was left running, not one that closes.)
async fn closing(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn display_id(client_id: &str) -> String {
    if client_id.is_empty() {
        "<unknown>".to_string()
    } else {
        client_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_protocol_is_read_from_a_partial_connect() {
        // Fixed header, then "MQTT" and level 5.
        let connect = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05];
        assert_eq!(claimed_protocol(&connect), Some(ProtocolVersion::V5));
        assert_eq!(claimed_protocol(&connect[..6]), None);
    }
}
