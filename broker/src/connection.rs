//! One client connection: the MQTT protocol state machine from CONNECT to
//! the close of the socket.
//!
//! A single task per connection reads packets, handles them, and writes
//! what the session has queued, so an idle connection costs one task and
//! two small buffers. The session (not the connection) owns queued and
//! in-flight messages, which is what makes takeover and persistence simple.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::access::UserSlot;
use crate::auth::ClientAcl;
use crate::broker::{Broker, ClientKey};
use crate::codec::{
    self, Connack, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion,
    PubResponse, Publish, PublishProperties, PublishRef, QoS, ReasonCode, Suback, Subscribe,
    Unsuback, Unsubscribe, Will,
};
use crate::config::{Limits, RateLimitAction};
use crate::keepalive::Registration;
use crate::message::Message;
use crate::ratelimit::TokenBucket;
use crate::session::{
    Attachment, ClientHandle, ClientInfo, Control, Delivery, QueueLimits, Session,
};
use crate::store::Record;
use crate::topic;

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Stop pulling from the session queue while this much is unsent.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Most bytes taken from the socket in one read.
const READ_CHUNK: usize = 8 * 1024;
/// How long to try to flush a final packet before closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// DISCONNECT received; `with_will` for 5.0 reason 0x04.
    ClientDisconnect {
        with_will: bool,
    },
    /// The peer closed the socket without DISCONNECT.
    Eof,
    SocketError(std::io::Error),
    KeepAlive,
    /// We close because the client broke the protocol.
    Protocol(ReasonCode, String),
    TakenOver(tokio::sync::oneshot::Sender<()>),
    /// The session no longer lists this connection (a takeover that timed out).
    Detached,
    /// Administrative disconnect.
    Server(ReasonCode),
    Shutdown,
}

/// Where a connection comes from, after PROXY protocol and TLS.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address (from the PROXY header when there is one).
    pub addr: SocketAddr,
    pub local_port: u16,
    /// Name of the listener, for metrics and the admin API.
    pub listener: Arc<str>,
    /// User name taken from a verified client certificate.
    pub cert_username: Option<String>,
    /// The limits of the listener (broker-wide limits with its overrides).
    pub limits: Arc<Limits>,
}

/// A connection past CONNECT, running until it closes.
///
/// Boxed: the task that awaits it then does not carry the larger state of
/// the handshakes and the CONNECT phase, and idle connections are what the
/// broker holds most of.
pub type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

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
                io.finish().await;
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
    let conn = Connection::establish(broker, io, &peer, *connect).await?;
    Some(Box::pin(conn.run(shutdown)))
}

/// The socket and its buffers. Both buffers are empty, without memory,
/// while the connection is idle.
struct Io<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Written since the last flush (TLS and WebSocket streams buffer).
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    fn new(stream: S) -> Io<S> {
        Io {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            unflushed: false,
        }
    }

    /// Reads what the socket has and appends it to the read buffer;
    /// Ready(Ok(0)) at the end of the stream.
    ///
    /// The bytes land on the stack first and are copied into the read
    /// buffer: a connection waiting for data then holds no read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        self.rbuf.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Reads more bytes; Ok(false) on end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        Ok(std::future::poll_fn(|cx| self.poll_fill(cx)).await? > 0)
    }

    /// Writes as much of the write buffer as the socket takes without
    /// waiting, then flushes once it is empty. Returns the bytes written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> io::Result<usize> {
        let mut written = 0;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(written),
            }
        }
        if self.unflushed {
            if let Poll::Ready(result) = Pin::new(&mut self.stream).poll_flush(cx) {
                result?;
                self.unflushed = false;
            }
        }
        Ok(written)
    }

    /// Flushes what is buffered, bounded in time; used before closing.
    async fn finish(&mut self) {
        let stream = &mut self.stream;
        let buf = &mut self.wbuf;
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
            while !buf.is_empty() {
                if stream.write_buf(buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
            let _ = stream.shutdown().await;
        })
        .await;
    }

    /// Gives back buffer memory once a buffer is empty, so idle
    /// connections stay small. An empty read buffer may have no capacity
    /// left and still hold on to the allocation that decoded packets were
    /// split from, so it is replaced whatever its capacity.
    fn shrink(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }
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

/// Everything about the client that the CONNECT negotiated.
struct Connection<S> {
    broker: Arc<Broker>,
    io: Io<S>,
    id: u64,
    version: ProtocolVersion,
    /// The session holds the client id (`session.client_id`).
    session: Arc<Session>,
    /// Who the client is, and the mailbox the broker reaches it through.
    client: Arc<ClientHandle>,
    keep_alive: Option<KeepAlive>,
    /// Boxed, like the other fields most clients do not use: idle
    /// connections are many.
    will: Option<Box<Will>>,
    /// Session expiry requested at CONNECT (for the DISCONNECT rule).
    connect_expiry: u32,
    /// Client's Receive Maximum capped by ours: our in-flight window.
    window: usize,
    /// Client's Maximum Packet Size.
    client_max_packet: u32,
    /// 5.0 topic aliases, from the first one on.
    aliases: Option<Box<TopicAliases>>,
    /// How many topic aliases the client accepts from us.
    client_alias_max: u16,
    /// Whether the client wants reason strings and user properties on
    /// failures (5.0 Request Problem Information).
    problem_info: bool,
    /// A message from this client was queued for other sessions since the
    /// last write: let their connections write before this one's
    /// acknowledgements go out.
    routed: bool,
    last_packet: Instant,
    /// The client's topic rules, for the ACL generation they were resolved in.
    acl: (u64, Arc<ClientAcl>),
    /// Publish rate quota.
    publish_limit: Option<Box<TokenBucket>>,
    /// Largest packet this client may send (per-user quota or the limit).
    max_inbound_packet: u32,
    max_subscriptions: Option<u32>,
    /// The user's connection slot, released when the connection ends.
    _user_slot: Option<Box<UserSlot>>,
    /// The listener's limits.
    limits: Arc<Limits>,
}

/// The keep-alive the client asked for (or the server imposed), and where
/// the connection waits on the broker's keep-alive wheel.
struct KeepAlive {
    /// The longest silence allowed: 1.5 times the keep-alive.
    limit: Duration,
    registration: Registration,
}

/// 5.0 topic aliases of one connection.
#[derive(Default)]
struct TopicAliases {
    /// Set by the client (client -> server).
    inbound: HashMap<u16, Arc<str>>,
    /// Set by us (server -> client).
    outbound: HashMap<Arc<str>, u16>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    /// Validates CONNECT, authenticates, attaches the session and sends
    /// CONNACK. Returns None when the connection was refused.
    async fn establish(
        broker: Arc<Broker>,
        mut io: Io<S>,
        peer: &Peer,
        connect: Connect,
    ) -> Option<Connection<S>> {
        let addr = peer.addr;
        let version = connect.protocol;
        let limits = peer.limits.clone();
        if broker.logger.verbose() {
            broker.logger.received(
                &display_id(&connect.client_id),
                &Packet::Connect(Box::new(connect.clone())),
            );
        }
        let refuse = |io: &mut Io<S>, reason: ReasonCode, text: &str| {
            let mut properties = Properties::default();
            if version.is_v5() && !text.is_empty() {
                properties.reason_string = Some(text.to_string());
            }
            let connack = Packet::Connack(Connack {
                session_present: false,
                reason,
                properties,
            });
            // mosquitto names a refused client by its address.
            broker.logger.sending(&addr.ip().to_string(), &connack);
            let _ = codec::encode(&connack, version, &mut io.wbuf);
        };

        // Enhanced authentication is not configured on this broker.
        if version.is_v5() && connect.properties.authentication_method.is_some() {
            refuse(&mut io, ReasonCode::BAD_AUTHENTICATION_METHOD, "");
            broker.logger.not_authorised(None);
            io.finish().await;
            return None;
        }

        // Who is this? A verified client certificate names the user when
        // the listener says so; otherwise CONNECT's user name and password.
        let (username, cert_authenticated) = match &peer.cert_username {
            Some(name) => (Some(name.clone()), true),
            None => (connect.username.clone(), false),
        };
        let checked = match (&username, cert_authenticated) {
            (Some(name), true) if !broker.access.certificate_user_allowed(name) => {
                Err((ReasonCode::NOT_AUTHORIZED, "unknown_user"))
            }
            (_, true) => Ok(()),
            (_, false) => authenticate(&broker, username.as_deref(), &connect),
        };
        if let Err((reason, label)) = checked {
            broker
                .metrics
                .auth_failures
                .with_label_values(&[label])
                .inc();
            if let Some(name) = &username {
                broker.logger.info(&format!(
                    "Login refused for user {name} from {addr}: {}.",
                    label.replace('_', " ")
                ));
            }
            refuse(&mut io, reason, "");
            broker.logger.not_authorised(None);
            io.finish().await;
            return None;
        }
        let quotas = username
            .as_deref()
            .and_then(|name| broker.access.authenticator().quotas(name).copied())
            .unwrap_or_default();
        let user_slot = match &username {
            Some(name) => {
                let max = quotas.connections.map(|n| n.get());
                match broker.access.acquire_user_slot(name, max) {
                    Some(slot) => Some(slot),
                    None => {
                        broker
                            .metrics
                            .quota_refusals
                            .with_label_values(&["connections"])
                            .inc();
                        refuse(
                            &mut io,
                            ReasonCode::QUOTA_EXCEEDED,
                            "connection quota of this user reached",
                        );
                        broker.logger.not_authorised(None);
                        io.finish().await;
                        return None;
                    }
                }
            }
            None => None,
        };

        let mut assigned = None;
        let client_id: ClientKey = if connect.client_id.is_empty() {
            let allowed = match version {
                ProtocolVersion::V5 => true,
                ProtocolVersion::V311 => connect.clean_start,
                ProtocolVersion::V31 => false,
            };
            if !allowed {
                refuse(&mut io, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "");
                broker.logger.protocol_error(None, "empty client id");
                io.finish().await;
                return None;
            }
            let id = generate_client_id(&broker);
            assigned = Some(id.clone());
            Arc::from(id.as_str())
        } else {
            if connect.client_id.len() > usize::from(limits.max_client_id_len) {
                refuse(
                    &mut io,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "client identifier too long",
                );
                broker
                    .logger
                    .protocol_error(Some(&connect.client_id), "client id too long");
                io.finish().await;
                return None;
            }
            Arc::from(connect.client_id.as_str())
        };

        // Session expiry: 3.1.1 clean session false means "never expires".
        let requested_expiry = match version {
            ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => u32::MAX,
        };
        let expiry = requested_expiry.min(limits.max_session_expiry);
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        // Keepalive 0 ("never") is fine unless an upper bound is configured.
        let too_long = keep_alive > limits.max_keepalive
            || (keep_alive == 0 && limits.max_keepalive < u16::MAX);
        if too_long && version.is_v5() {
            keep_alive = limits.max_keepalive;
            server_keep_alive = Some(keep_alive);
        } else if too_long && keep_alive != 0 {
            // 3.x cannot be told another value; mosquitto refuses the same way.
            refuse(&mut io, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "");
            broker
                .logger
                .protocol_error(Some(&connect.client_id), "keepalive too long");
            io.finish().await;
            return None;
        }

        let id = broker.next_connection_id();
        let username: Option<Arc<str>> = username.as_deref().map(Arc::from);
        let client = Arc::new(ClientHandle::new(ClientInfo {
            address: addr,
            username: username.clone(),
            cert_authenticated,
            protocol: version,
            keep_alive,
            listener: peer.listener.clone(),
            connected_at: SystemTime::now(),
        }));
        let attached = match broker
            .attach(
                &client_id,
                connect.clean_start,
                expiry,
                Attachment {
                    connection_id: id,
                    client: client.clone(),
                },
                QueueLimits::from_limits(&limits),
            )
            .await
        {
            Ok(a) => a,
            Err(e) => {
                broker
                    .logger
                    .error(&format!("Error persisting session: {e}."));
                refuse(&mut io, ReasonCode::SERVER_UNAVAILABLE, "");
                io.finish().await;
                return None;
            }
        };
        if attached.took_over {
            broker.logger.already_connected(&client_id);
        }

        let mut properties = Properties::default();
        if version.is_v5() {
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            if limits.receive_maximum != u16::MAX {
                properties.receive_maximum = Some(limits.receive_maximum);
            }
            properties.maximum_packet_size = Some(limits.max_packet_size);
            if limits.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
            }
            properties.assigned_client_identifier = assigned;
            properties.server_keep_alive = server_keep_alive;
        }
        let connack = Packet::Connack(Connack {
            session_present: attached.session_present,
            reason: ReasonCode::SUCCESS,
            properties,
        });
        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let acl = broker.access.acl().client(username.as_deref(), &client_id);
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
        let window = usize::from(client_receive_max.min(limits.max_inflight));
        let mut conn = Connection {
            broker: broker.clone(),
            io,
            id,
            version,
            session: attached.session,
            client: client.clone(),
            keep_alive: None,
            will: connect.will.clone().map(Box::new),
            connect_expiry: expiry,
            window,
            client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            aliases: None,
            client_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
            problem_info: connect.properties.request_problem_information != Some(0),
            routed: false,
            last_packet: Instant::now(),
            acl: (broker.access.generation(), acl),
            publish_limit: (publish_rate > 0)
                .then(|| Box::new(TokenBucket::new(publish_rate, publish_rate, Instant::now()))),
            max_inbound_packet,
            max_subscriptions,
            _user_slot: user_slot.map(Box::new),
            limits: limits.clone(),
        };
        broker
            .logger
            .client_connected(addr, &client_id, &connect, username.as_deref());
        if keep_alive > 0 {
            let limit = Duration::from_millis(u64::from(keep_alive) * 1500);
            let registration = broker
                .keep_alive
                .register(conn.last_packet + limit, &conn.client);
            conn.keep_alive = Some(KeepAlive {
                limit,
                registration,
            });
        }
        conn.send(&connack);
        broker.metrics.client_connected(&peer.listener);
        broker.presence(&client_id, &client.info, "connected", "");
        conn.resend_inflight();
        Some(conn)
    }

    /// Serves the connection until it closes.
    ///
    /// Not an `async fn`: that would keep `self` twice in the future (the
    /// argument and its copy in the body); the block uses it in place. The
    /// event loop is written out here rather than in a method of its own,
    /// whose future would be kept beside `self` while the connection waits.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, shutdown: watch::Receiver<bool>) -> impl Future<Output = ()> + Send {
        async move {
            let close = loop {
                if *shutdown.borrow() {
                    break Close::Shutdown;
                }
                self.pull_queue();
                self.io.shrink();
                let read = match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                    Ok(read) => read,
                    Err(close) => break close,
                };
                if read {
                    // Boxed: the handlers' state is large and only needed
                    // while a packet is being handled, not while idle.
                    if let Err(close) = Box::pin(self.handle_input()).await {
                        break close;
                    }
                    if std::mem::take(&mut self.routed) {
                        // The subscribers' connections were woken; they run
                        // before this task writes its PUBACKs, so a delivery
                        // does not wait behind them (nor behind the publisher
                        // waking up to read them).
                        tokio::task::yield_now().await;
                    }
                }
            };
            // Boxed: closing needs more state than waiting does.
            Box::pin(self.close(close)).await;
        }
    }

    /// Does the I/O that needs no waiting and tells what needs handling:
    /// Ok(true) when bytes were read, Ok(false) when bytes were written or
    /// messages were queued (there may be more to send). Pending while
    /// there is nothing to do; every source has registered the task's
    /// waker then.
    ///
    /// Polling by hand, rather than with `select!` over futures, keeps the
    /// idle connection's state out of its task: nothing is pinned while
    /// it waits (the keep-alive timer is the broker's wheel).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Close>> {
        if let Poll::Ready(control) = self.client.mailbox.poll_recv(cx) {
            return Poll::Ready(Err(Close::from(control)));
        }
        if self.client.mailbox.take_keep_alive_due() {
            if let Some(keep_alive) = &mut self.keep_alive {
                // Decided before this poll's read, on the packets handled so far.
                let deadline = self.last_packet + keep_alive.limit;
                if deadline <= Instant::now() {
                    return Poll::Ready(Err(Close::KeepAlive));
                }
                keep_alive.registration = self.broker.keep_alive.register(deadline, &self.client);
            }
        }
        let written = match self.io.poll_write_out(cx) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(Close::SocketError(e))),
        };
        if written > 0 {
            self.broker.metrics.bytes_sent.inc_by(written as u64);
        }
        match self.io.poll_fill(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(Close::Eof)),
            Poll::Ready(Ok(n)) => {
                self.broker.metrics.bytes_received.inc_by(n as u64);
                return Poll::Ready(Ok(true));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Close::SocketError(e))),
            Poll::Pending => {}
        }
        // Queued messages matter only while there is room to write them;
        // otherwise the write side wakes the task.
        let queued = self.io.wbuf.len() < WRITE_HIGH_WATER
            && self.session.notify.poll_notified(cx).is_ready();
        if queued || written > 0 {
            Poll::Ready(Ok(false))
        } else {
            Poll::Pending
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    async fn handle_input(&mut self) -> Result<(), Close> {
        let max = self.max_inbound_packet;
        // One clock read per batch of packets read together.
        let mut stamped = false;
        loop {
            // The most frequent packet under QoS 1 load, handled without
            // building a `Packet` (unless every packet is being logged).
            if let Some(packet_id) =
                codec::short_puback(&self.io.rbuf).filter(|_| !self.broker.logger.verbose())
            {
                self.io.rbuf.advance(4);
                if !stamped {
                    self.last_packet = Instant::now();
                    stamped = true;
                }
                self.on_complete(packet_id, QoS::AtLeastOnce);
                continue;
            }
            let packet = match codec::decode(&mut self.io.rbuf, Some(self.version), max) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Close::Protocol(e.reason_code(), e.to_string())),
            };
            if !stamped {
                self.last_packet = Instant::now();
                stamped = true;
            }
            if self.broker.logger.verbose() {
                self.broker
                    .logger
                    .received(&self.session.client_id, &packet);
            }
            self.handle_packet(packet).await?;
        }
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::Puback(r) => {
                self.on_complete(r.packet_id, QoS::AtLeastOnce);
                Ok(())
            }
            Packet::Pubrec(r) => self.on_pubrec(r).await,
            Packet::Pubrel(r) => {
                self.on_pubrel(r);
                Ok(())
            }
            Packet::Pubcomp(r) => {
                self.on_complete(r.packet_id, QoS::ExactlyOnce);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u).await,
            Packet::Pingreq => {
                self.send(&Packet::Pingresp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Auth(_) => Err(protocol_error("AUTH without an authentication method")),
            Packet::Connect(_) => Err(protocol_error("second CONNECT")),
            other => Err(protocol_error(&format!(
                "{} is not sent by clients",
                other.name()
            ))),
        }
    }

    async fn on_publish(&mut self, mut p: Publish) -> Result<(), Close> {
        self.broker.metrics.received(p.qos);
        self.check_publish_rate().await?;
        let topic = self.resolve_topic(&mut p)?;
        let packet_id = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce {
            let mut state = self.session.state.lock();
            if state.inbound_qos2.contains(&packet_id) {
                // A retransmission of a message we already have: acknowledge
                // again, route nothing.
                drop(state);
                self.send(&Packet::Pubrec(PubResponse::new(
                    packet_id,
                    ReasonCode::SUCCESS,
                )));
                return Ok(());
            }
            if state.inbound_qos2.len() >= usize::from(self.limits.receive_maximum) {
                self.broker
                    .metrics
                    .quota_refusals
                    .with_label_values(&["receive_maximum"])
                    .inc();
                return Err(Close::Protocol(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded".into(),
                ));
            }
            state.inbound_qos2.insert(packet_id);
        }
        let qos = p.qos;
        let reason = if topic.starts_with("$SYS") || !self.client_acl().can_publish(&topic) {
            // Only the broker publishes under $SYS.
            self.broker
                .metrics
                .acl_denials
                .with_label_values(&["publish"])
                .inc();
            ReasonCode::NOT_AUTHORIZED
        } else {
            let msg = Arc::new(Message::from_publish(p, topic));
            match self
                .broker
                .publish(msg, Some(&self.session.client_id))
                .await
            {
                Ok(0) => ReasonCode::NO_MATCHING_SUBSCRIBERS,
                Ok(_) => {
                    // QoS 0 has no acknowledgement to hold back.
                    self.routed |= qos != QoS::AtMostOnce;
                    ReasonCode::SUCCESS
                }
                Err(e) => {
                    self.broker
                        .logger
                        .error(&format!("Error persisting message: {e}."));
                    return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
                }
            }
        };
        let reason = if self.version.is_v5() {
            reason
        } else {
            ReasonCode::SUCCESS
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.send(&Packet::Puback(PubResponse::new(packet_id, reason)));
            }
            QoS::ExactlyOnce => {
                if reason.is_error() {
                    // A failed QoS 2 exchange ends here (no PUBREL follows).
                    self.session.state.lock().inbound_qos2.remove(&packet_id);
                } else if self.session.state.lock().persistent {
                    let record = Record::InboundQos2 {
                        client_id: self.session.client_id.to_string(),
                        packet_id,
                    };
                    if let Err(e) = self.broker.persist(vec![record]).await {
                        self.broker.logger.error(&format!("Error persisting: {e}."));
                        return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
                    }
                }
                self.send(&Packet::Pubrec(PubResponse::new(packet_id, reason)));
            }
        }
        Ok(())
    }

    /// The client's topic rules, re-resolved after an ACL reload.
    fn client_acl(&mut self) -> &ClientAcl {
        let generation = self.broker.access.generation();
        if self.acl.0 != generation {
            let acl = self.broker.access.acl().client(
                self.client.info.username.as_deref(),
                &self.session.client_id,
            );
            self.acl = (generation, acl);
        }
        &self.acl.1
    }

    /// Applies the publish-rate quota: disconnect, or wait (back-pressure:
    /// nothing is read from the client meanwhile).
    async fn check_publish_rate(&mut self) -> Result<(), Close> {
        let Some(bucket) = &mut self.publish_limit else {
            return Ok(());
        };
        let Err(wait) = bucket.try_take(Instant::now()) else {
            return Ok(());
        };
        self.broker
            .metrics
            .quota_refusals
            .with_label_values(&["publish_rate"])
            .inc();
        match self.limits.publish_rate_action {
            RateLimitAction::Disconnect => Err(Close::Protocol(
                ReasonCode::MESSAGE_RATE_TOO_HIGH,
                "publish rate quota exceeded".into(),
            )),
            RateLimitAction::Throttle => {
                tokio::time::sleep(wait).await;
                let _ = bucket.try_take(Instant::now());
                Ok(())
            }
        }
    }

    /// Applies 5.0 topic aliases and returns the message's topic.
    fn resolve_topic(&mut self, p: &mut Publish) -> Result<Arc<str>, Close> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(Close::Protocol(
                    ReasonCode::TOPIC_NAME_INVALID,
                    "empty topic".into(),
                ));
            }
            return Ok(p.topic.clone());
        };
        let max = self.limits.topic_alias_maximum;
        if alias == 0 || alias > max {
            return Err(Close::Protocol(
                ReasonCode::TOPIC_ALIAS_INVALID,
                format!("topic alias {alias} out of range"),
            ));
        }
        if p.topic.is_empty() {
            match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                Some(topic) => Ok(topic.clone()),
                None => Err(Close::Protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    format!("unknown topic alias {alias}"),
                )),
            }
        } else {
            let topic = p.topic.clone();
            self.aliases
                .get_or_insert_with(Box::default)
                .inbound
                .insert(alias, topic.clone());
            Ok(topic)
        }
    }

    fn on_pubrel(&mut self, r: PubResponse) {
        let known = self.session.state.lock().inbound_qos2.remove(&r.packet_id);
        if known {
            let persistent = self.session.state.lock().persistent;
            if persistent {
                self.broker.persist_nowait(vec![Record::InboundQos2Done {
                    client_id: self.session.client_id.to_string(),
                    packet_id: r.packet_id,
                }]);
            }
        }
        let reason = if known || !self.version.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::Pubcomp(PubResponse::new(r.packet_id, reason)));
    }

    async fn on_pubrec(&mut self, r: PubResponse) -> Result<(), Close> {
        if r.reason.is_error() {
            // 5.0: the receiver refused the message; the exchange is over.
            self.on_complete(r.packet_id, QoS::ExactlyOnce);
            return Ok(());
        }
        let released = self.session.state.lock().release(r.packet_id);
        let reason = match released {
            Some(seq) => {
                if seq != 0 {
                    // Stored before the PUBREL goes out: once the client
                    // has seen a PUBREL, a restarted broker must send the
                    // PUBREL again, never the PUBLISH ([MQTT-4.4.0-1]).
                    let record = Record::Released {
                        client_id: self.session.client_id.to_string(),
                        seq,
                    };
                    if let Err(e) = self.broker.persist(vec![record]).await {
                        self.broker.logger.error(&format!("Error persisting: {e}."));
                        return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
                    }
                }
                ReasonCode::SUCCESS
            }
            None if self.version.is_v5() => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            None => ReasonCode::SUCCESS,
        };
        self.send(&Packet::Pubrel(PubResponse::new(r.packet_id, reason)));
        Ok(())
    }

    /// PUBACK or PUBCOMP: the outbound delivery is done.
    fn on_complete(&mut self, packet_id: u16, expected: QoS) {
        let done = {
            let mut state = self.session.state.lock();
            match state.inflight.get(packet_id) {
                Some(entry) if entry.delivery.qos == expected => state.complete(packet_id),
                _ => None,
            }
        };
        if let Some(entry) = done {
            if entry.delivery.seq != 0 {
                self.broker.persist_nowait(vec![Record::Dequeue {
                    client_id: self.session.client_id.to_string(),
                    seq: entry.delivery.seq,
                }]);
            }
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let identifier = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut records = Vec::new();
        let mut retained_for = Vec::new();
        for (filter, options) in &s.filters {
            let shared = match topic::SharedFilter::parse(filter) {
                Ok(shared) => shared,
                Err(_) => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            let inner = shared.as_ref().map_or(filter.as_str(), |s| s.filter);
            if !topic::valid_topic_filter(inner) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if shared.is_some() && options.no_local {
                return Err(protocol_error("no local on a shared subscription"));
            }
            if !self.client_acl().can_subscribe(filter) {
                self.broker
                    .metrics
                    .acl_denials
                    .with_label_values(&["subscribe"])
                    .inc();
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            if let Some(max) = self.max_subscriptions {
                let state = self.session.state.lock();
                let replacing = state.subscriptions.contains_key(filter.as_str());
                if !replacing && state.subscriptions.len() >= max as usize {
                    drop(state);
                    self.broker
                        .metrics
                        .quota_refusals
                        .with_label_values(&["subscriptions"])
                        .inc();
                    reasons.push(ReasonCode::QUOTA_EXCEEDED);
                    continue;
                }
            }
            let is_new =
                self.broker
                    .subscribe(&self.session, filter, *options, identifier, &mut records);
            reasons.push(ReasonCode(options.qos.as_u8()));
            let send_retained = shared.is_none()
                && match options.retain_handling {
                    0 => true,
                    1 => is_new,
                    _ => false,
                };
            if send_retained {
                retained_for.push((filter.clone(), options.qos));
            }
        }
        if let Err(e) = self.broker.persist(records).await {
            self.broker.logger.error(&format!("Error persisting: {e}."));
            return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
        }
        self.send(&Packet::Suback(Suback {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        // Retained messages follow the SUBACK.
        let mut records = Vec::new();
        let limits = QueueLimits::from_limits(&self.limits);
        for (filter, qos) in retained_for {
            for (_, msg) in self.broker.retained.matching(&filter) {
                if msg.is_expired(Instant::now()) {
                    continue;
                }
                self.broker.enqueue(
                    &self.session,
                    &msg,
                    msg.qos.min(qos),
                    true,
                    identifier.into_iter().collect(),
                    limits,
                    &mut records,
                );
            }
        }
        if let Err(e) = self.broker.persist(records).await {
            self.broker.logger.error(&format!("Error persisting: {e}."));
            return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut records = Vec::new();
        let reasons = u
            .filters
            .iter()
            .map(|filter| {
                if self.broker.unsubscribe(&self.session, filter, &mut records) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        if let Err(e) = self.broker.persist(records).await {
            self.broker.logger.error(&format!("Error persisting: {e}."));
            return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
        }
        self.send(&Packet::Unsuback(Unsuback {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry == 0 && expiry != 0 {
                return Err(protocol_error(
                    "session expiry set on DISCONNECT after 0 at CONNECT",
                ));
            }
            let expiry = expiry.min(self.limits.max_session_expiry);
            self.session.state.lock().expiry_interval = expiry;
        }
        Err(Close::ClientDisconnect {
            with_will: d.reason == ReasonCode::DISCONNECT_WITH_WILL,
        })
    }

    /// Re-sends, after a reconnect, what was in flight: PUBLISH with DUP for
    /// unacknowledged messages, PUBREL for QoS 2 messages already received.
    fn resend_inflight(&mut self) {
        let pending: Vec<(u16, Delivery, bool)> = {
            let state = self.session.state.lock();
            state
                .inflight
                .in_send_order()
                .into_iter()
                .map(|(id, i)| (id, i.delivery.clone(), i.released))
                .collect()
        };
        for (packet_id, delivery, released) in pending {
            if released {
                self.send(&Packet::Pubrel(PubResponse::new(
                    packet_id,
                    ReasonCode::SUCCESS,
                )));
            } else {
                let publish = self.build_publish(&delivery, Some(packet_id), true, Instant::now());
                self.send(&Packet::Publish(publish));
                self.broker.metrics.sent(delivery.qos);
            }
        }
    }

    /// Moves queued deliveries into the write buffer as far as the in-flight
    /// window and the buffer's high-water mark allow.
    fn pull_queue(&mut self) {
        let now = Instant::now();
        let mut records = Vec::new();
        let mut expired = Vec::new();
        while self.io.wbuf.len() < WRITE_HIGH_WATER {
            let next = self
                .session
                .state
                .lock()
                .next_to_send(self.window, now, &mut expired);
            let Some((packet_id, delivery)) = next else {
                break;
            };
            if !self.write_delivery(&delivery, packet_id, now) {
                // Too large for this client: discard as if delivered.
                self.broker.metrics.drop("too_large");
                if let Some(id) = packet_id {
                    self.session.state.lock().complete(id);
                }
                if delivery.seq != 0 {
                    expired.push(delivery.seq);
                }
                continue;
            }
            if let (Some(id), true) = (packet_id, delivery.seq != 0) {
                records.push(Record::Inflight {
                    client_id: self.session.client_id.to_string(),
                    seq: delivery.seq,
                    packet_id: id,
                });
            }
            self.broker.metrics.sent(delivery.qos);
            self.broker.metrics.delivery_latency.observe(
                now.saturating_duration_since(delivery.msg.received_at)
                    .as_secs_f64(),
            );
        }
        for seq in expired {
            records.push(Record::Dequeue {
                client_id: self.session.client_id.to_string(),
                seq,
            });
        }
        self.broker.persist_nowait(records);
    }

    /// Encodes a delivery into the write buffer; false (and nothing
    /// written) when it exceeds the client's 5.0 Maximum Packet Size.
    fn write_delivery(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<u16>,
        now: Instant,
    ) -> bool {
        if self.version.is_v5() || self.broker.logger.verbose() {
            let packet = Packet::Publish(self.build_publish(delivery, packet_id, false, now));
            if self.version.is_v5()
                && codec::encoded_len(&packet, self.version) > self.client_max_packet as usize
            {
                return false;
            }
            self.send(&packet);
            return true;
        }
        // MQTT 3.x carries no properties: the PUBLISH is encoded straight
        // from the message, without building a packet.
        let msg = &delivery.msg;
        let publish = PublishRef {
            dup: false,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: &msg.topic,
            packet_id,
            properties: &PublishProperties::default(),
            payload: &msg.payload,
        };
        if let Err(e) = codec::encode_publish(&publish, self.version, &mut self.io.wbuf) {
            self.encode_failed("PUBLISH", &e);
        }
        true
    }

    fn build_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: Instant,
    ) -> Publish {
        let msg = &delivery.msg;
        let mut topic = msg.topic.clone();
        let mut properties = PublishProperties::default();
        if self.version.is_v5() {
            properties = msg.properties.clone();
            properties.subscription_identifiers = delivery.subscription_identifiers.clone();
            properties.message_expiry_interval = msg.remaining_expiry(now);
            if self.client_alias_max > 0 {
                let outbound = &mut self.aliases.get_or_insert_with(Box::default).outbound;
                if let Some(alias) = outbound.get(&msg.topic) {
                    properties.topic_alias = Some(*alias);
                    topic = Arc::from("");
                } else if outbound.len() < usize::from(self.client_alias_max) {
                    let alias = (outbound.len() + 1) as u16;
                    outbound.insert(msg.topic.clone(), alias);
                    properties.topic_alias = Some(alias);
                }
            }
        }
        Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            properties,
            payload: msg.payload.clone(),
        }
    }

    /// Encodes a packet into the write buffer.
    fn send(&mut self, packet: &Packet) {
        if self.broker.logger.verbose() {
            self.broker.logger.sending(&self.session.client_id, packet);
        }
        if let Err(e) = codec::encode(packet, self.version, &mut self.io.wbuf) {
            self.encode_failed(packet.name(), &e);
        }
    }

    fn encode_failed(&self, packet: &str, e: &codec::EncodeError) {
        self.broker.logger.warning(&format!(
            "Cannot encode {packet} for {}: {e}.",
            self.session.client_id
        ));
    }

    async fn close(mut self, close: Close) {
        self.client.mailbox.close();
        if let Some(keep_alive) = &self.keep_alive {
            self.broker
                .keep_alive
                .cancel(keep_alive.registration, &self.client);
        }
        let reason_label = close.label();
        let mut publish_will = true;
        let mut ack = None;
        match close {
            Close::ClientDisconnect { with_will } => {
                publish_will = with_will;
                self.broker.logger.disconnected(&self.session.client_id);
            }
            Close::Eof => self
                .broker
                .logger
                .connection_closed(Some(&self.session.client_id)),
            Close::SocketError(e) => self
                .broker
                .logger
                .socket_error(Some(&self.session.client_id), &e),
            Close::KeepAlive => {
                self.broker
                    .logger
                    .keepalive_timeout(&self.session.client_id);
                self.disconnect_v5(ReasonCode::KEEP_ALIVE_TIMEOUT, None);
            }
            Close::Protocol(reason, text) => {
                let id = Some(&*self.session.client_id);
                match reason {
                    ReasonCode::MALFORMED_PACKET => self.broker.logger.malformed_packet(id, &text),
                    ReasonCode::PACKET_TOO_LARGE => {
                        self.broker
                            .metrics
                            .quota_refusals
                            .with_label_values(&["packet_size"])
                            .inc();
                        self.broker.logger.oversize_packet(id)
                    }
                    _ => self.broker.logger.protocol_error(id, &text),
                }
                self.disconnect_v5(reason, Some(text));
            }
            Close::TakenOver(tx) => {
                self.disconnect_v5(ReasonCode::SESSION_TAKEN_OVER, None);
                ack = Some(tx);
            }
            Close::Detached => {
                self.disconnect_v5(ReasonCode::SESSION_TAKEN_OVER, None);
            }
            Close::Server(reason) => {
                self.broker.logger.disconnected(&self.session.client_id);
                self.disconnect_v5(reason, None);
            }
            Close::Shutdown => {
                publish_will = false;
                self.disconnect_v5(ReasonCode::SERVER_SHUTTING_DOWN, None);
            }
        }
        let mut will = if publish_will {
            self.will.take().map(|w| *w)
        } else {
            None
        };
        if let Some(w) = &will {
            if w.topic.starts_with("$SYS") || !self.client_acl().can_publish(&w.topic) {
                self.broker
                    .metrics
                    .acl_denials
                    .with_label_values(&["will"])
                    .inc();
                will = None;
            }
        }
        self.broker.detach(&self.session, self.id, will);
        self.broker.presence(
            &self.session.client_id,
            &self.client.info,
            "disconnected",
            reason_label,
        );
        self.broker
            .metrics
            .client_disconnected(&self.client.info.listener);
        if let Some(tx) = ack {
            let _ = tx.send(());
        }
        self.io.finish().await;
    }

    /// Server-initiated DISCONNECT (5.0 only; 3.x connections just close).
    fn disconnect_v5(&mut self, reason: ReasonCode, text: Option<String>) {
        if !self.version.is_v5() {
            return;
        }
        let mut properties = Properties::default();
        if self.problem_info {
            properties.reason_string = text;
        }
        self.send(&Packet::Disconnect(Disconnect { reason, properties }));
    }
}

impl From<Control> for Close {
    /// Every control message ends the connection.
    fn from(control: Control) -> Close {
        match control {
            Control::TakenOver(ack) => Close::TakenOver(ack),
            Control::Disconnect(reason) => Close::Server(reason),
            Control::Shutdown => Close::Shutdown,
            Control::Detached => Close::Detached,
        }
    }
}

impl Close {
    /// A short name for presence events and metrics.
    fn label(&self) -> &'static str {
        match self {
            Close::ClientDisconnect { .. } => "normal",
            Close::Eof => "closed",
            Close::SocketError(_) => "socket_error",
            Close::KeepAlive => "keepalive_timeout",
            Close::Protocol(..) => "protocol_error",
            Close::TakenOver(_) | Close::Detached => "taken_over",
            Close::Server(_) => "kicked",
            Close::Shutdown => "shutdown",
        }
    }
}

/// Checks CONNECT's credentials. Err carries the CONNACK reason and the
/// metrics label of the refusal.
fn authenticate(
    broker: &Broker,
    username: Option<&str>,
    connect: &Connect,
) -> Result<(), (ReasonCode, &'static str)> {
    let Some(name) = username else {
        return if broker.config.allow_anonymous {
            Ok(())
        } else {
            Err((ReasonCode::NOT_AUTHORIZED, "anonymous"))
        };
    };
    if !broker.access.has_user_files() {
        // No users are configured: a user name means nothing, and the
        // client counts as anonymous.
        return if broker.config.allow_anonymous {
            Ok(())
        } else {
            Err((ReasonCode::NOT_AUTHORIZED, "no_users"))
        };
    }
    let password = connect.password.as_deref().unwrap_or(&[]);
    broker
        .access
        .authenticator()
        .authenticate(name, password, SystemTime::now())
        .map_err(|e| {
            let label = match e {
                crate::auth::LoginError::UnknownUser => "unknown_user",
                crate::auth::LoginError::BadPassword => "bad_password",
                crate::auth::LoginError::Expired => "password_expired",
            };
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, label)
        })
}

/// Resolves once the broker closes every connection. (A dropped sender is
/// a broker that was left running, not one that closes.)
async fn closing(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn protocol_error(text: &str) -> Close {
    Close::Protocol(ReasonCode::PROTOCOL_ERROR, text.to_string())
}

fn display_id(client_id: &str) -> String {
    if client_id.is_empty() {
        "<unknown>".to_string()
    } else {
        client_id.to_string()
    }
}

/// An identifier for a client that sent an empty one (`auto-` and 32 hex
/// digits, like mosquitto's).
fn generate_client_id(broker: &Broker) -> String {
    use std::hash::{BuildHasher, Hasher};
    let seed = ahash::RandomState::new();
    let mut h1 = seed.build_hasher();
    h1.write_u64(broker.next_connection_id());
    let mut h2 = seed.build_hasher();
    h2.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("auto-{:016x}{:016x}", h1.finish(), h2.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // Idle connections are what the broker holds most of: keep what
        // each one holds while it waits (see docs/benchmarks.md, memory
        // per connection) from growing unnoticed. With the shutdown signal
        // and the event loop's own state, 272 bytes make a 312-byte task,
        // within the allocator's 320-byte size class.
        // Debug builds lay the state out 8 bytes larger; the
        // release build is what runs and what the memory figures measure.
        let limit = if cfg!(debug_assertions) { 280 } else { 272 };
        let size = std::mem::size_of::<Connection<tokio::net::TcpStream>>();
        assert!(size <= limit, "the connection's state is {size} bytes");
    }

    #[test]
    fn a_claimed_protocol_is_read_from_a_partial_connect() {
        // Fixed header, then "MQTT" and level 5.
        let connect = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05];
        assert_eq!(claimed_protocol(&connect), Some(ProtocolVersion::V5));
        assert_eq!(claimed_protocol(&connect[..6]), None);
    }
}
