//! One listening socket: accept, apply the listener's connection limits,
//! then in a task of its own per connection (so one slow handshake never
//! stalls the others) read the PROXY header, do the TLS handshake and the
//! WebSocket upgrade, and hand the stream to the MQTT connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use crate::ratelimit::TokenBucket;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::client::Control;
use crate::config::{ListenerConfig, ListenerProtocol};
use crate::connection::{self, Peer};
use crate::reload::SharedListenerSettings;
use crate::transport::{proxy, tls::TlsReloader, ws};

/// Backlog of a listening socket (tokio's `TcpListener::bind` uses the same).
const BACKLOG: i32 = 1024;

/// How long PROXY header, TLS handshake and WebSocket upgrade may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's settings, which its connections share while they do their
/// handshakes (its socket stays with the task accepting on it, so that the
/// socket closes as soon as it stops accepting).
pub struct Listener {
    pub config: ListenerConfig,
    pub name: Arc<str>,
    pub tls: Option<Arc<TlsReloader>>,
    /// Limits and connection caps, which a configuration reload may change
    /// (`config` holds their values at start).
    pub settings: SharedListenerSettings,
}

/// Binds the socket of `listeners[index]`.
///
/// Linux makes a `[::]` socket dual-stack: it takes the IPv4 port too, so
/// `0.0.0.0:1883` plus `[::]:1883` (what mosquitto users write) would fail
/// with "Address already in use". An IPv6 listener whose port an IPv4
/// listener also binds is therefore made IPv6-only (`IPV6_V6ONLY`); a `[::]`
/// listener alone stays dual-stack and accepts both families.
pub fn bind(listeners: &[ListenerConfig], index: usize) -> std::io::Result<TcpListener> {
    let addr = listeners[index].bind;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if ipv6_only(listeners, index) {
        socket.set_only_v6(true)?;
    }
    // As tokio's `TcpListener::bind`: a restarted broker can bind at once
    // while connections of the previous process are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Whether `listeners[index]` is an IPv6 listener whose port an IPv4
/// listener also binds (port 0 is never shared).
fn ipv6_only(listeners: &[ListenerConfig], index: usize) -> bool {
    let addr = listeners[index].bind;
    addr.is_ipv6()
        && addr.port() != 0
        && listeners
            .iter()
            .any(|other| other.bind.is_ipv4() && other.bind.port() == addr.port())
}

/// The connections of one listener: how many are open, and a wake-up when
/// the last one ends. (Cheaper per connection than a `JoinSet`, which
/// keeps an entry for every task.)
#[derive(Default)]
struct Connections {
    active: AtomicU32,
    all_closed: Notify,
}

impl Connections {
    /// Waits until every connection has ended.
    async fn closed(&self) {
        loop {
            let all_closed = self.all_closed.notified();
            tokio::pin!(all_closed);
            // Registered before the count is read: a last connection that
            // ends in between still wakes us.
            all_closed.as_mut().enable();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            all_closed.await;
        }
    }
}

/// Counts one connection of a listener until it is dropped.
struct Slot(Arc<Connections>);

impl Slot {
    fn new(connections: &Arc<Connections>) -> Slot {
        connections.active.fetch_add(1, Ordering::AcqRel);
        Slot(connections.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Accepts connections on `tcp` until `stop_accepting`, then closes the
/// socket (a client that connects from then on is refused at once, and
/// tries another replica) and waits for the connections to end;
/// `close_all` is handed to every connection.
pub async fn run(
    broker: Arc<Broker>,
    tcp: TcpListener,
    listener: Listener,
    mut stop_accepting: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = Arc::new(listener);
    let connections = Arc::new(Connections::default());
    let mut limiter = RateLimiter::default();
    let port = listener.config.bind.port();
    loop {
        tokio::select! {
            // Nothing more is accepted once told to stop, even with
            // connections waiting.
            biased;
            _ = stop_accepting.changed() => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let settings = listener.settings.load();
                    let max = settings.max_connections;
                    if max > 0 && connections.active.load(Ordering::Relaxed) >= max {
                        broker.metrics.refused(&listener.name, "max_connections");
                        broker.logger.warning(&format!(
                            "Refused connection from {peer} on listener {}: connection limit {max} reached.",
                            listener.name
                        ));
                        continue;
                    }
                    if !limiter.admit(settings.max_connection_rate) {
                        broker.metrics.refused(&listener.name, "connection_rate");
                        continue;
                    }
                    let slot = Slot::new(&connections);
                    let _ = stream.set_nodelay(true);
                    let accepted = Accepted {
                        broker: broker.clone(),
                        listener: listener.clone(),
                        stream,
                        addr: peer,
                        shutdown: shutdown.clone(),
                    };
                    tokio::spawn(ConnectionTask {
                        phase: Phase::Connecting(Box::pin(handshake_and_connect(accepted))),
                        _slot: slot,
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly.
                    broker.logger.warning(&format!(
                        "Error accepting a connection on port {port}: {e}."
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Stop accepting: the socket closes here, connections drain.
    drop(tcp);
    let name = listener.name.clone();
    drop(listener);
    let mut shutdown = shutdown;
    let mut closing = false;
    let closed = connections.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = shutdown.changed(), if !closing => {
                closing = true;
                close_connections(&broker, &name);
            }
        }
    }
}

/// `max_connection_rate`: a token bucket with a burst of the rate, made
/// anew when a reload changes the rate.
#[derive(Default)]
struct RateLimiter {
    bucket: Option<(u32, TokenBucket)>,
}

impl RateLimiter {
    /// Whether a new connection is within `rate` per second (0: no limit).
    fn admit(&mut self, rate: u32) -> bool {
        if rate == 0 {
            self.bucket = None;
            return true;
        }
        let now = Instant::now();
        let bucket = match &mut self.bucket {
            Some((r, bucket)) if *r == rate => bucket,
            slot => &mut slot.insert((rate, TokenBucket::new(rate, rate, now))).1,
        };
        bucket.try_take(now).is_ok()
    }
}

/// Tells every connected client of listener `name` to close now (the drain
/// is over or out of time). Connections do not watch the shutdown signal
/// while they wait, so that an idle connection holds less; one that
/// attaches its session after this checks the signal before it waits.
fn close_connections(broker: &Broker, name: &str) {
    for (session, client) in broker.connected_clients() {
        if &*client.info.listener != name {
            continue;
        }
        session.send_control(Control::Shutdown);
    }
}

/// An accepted connection, before its handshakes.
struct Accepted {
    broker: Arc<Broker>,
    listener: Arc<Listener>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
}

/// The task of one connection. It lives as long as the connection, so it
/// holds as little as it can (an `async fn` would take more): the
/// handshakes and CONNECT run in one boxed future, freed once the client is
/// connected, and the running connection in another.
///
/// 24 bytes, so that tokio's task cell with it takes 128 bytes rather than
/// 256: `F` is the connecting future's type, so that the first phase is a
/// thin pointer and shares its space with the second's.
struct ConnectionTask<F> {
    phase: Phase<F>,
    _slot: Slot,
}

enum Phase<F> {
    Connecting(Pin<Box<F>>),
    Running(connection::Running),
}

impl<F: Future<Output = Option<connection::Running>>> Future for ConnectionTask<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.phase {
                Phase::Connecting(connecting) => match ready!(connecting.as_mut().poll(cx)) {
                    Some(running) => self.phase = Phase::Running(running),
                    None => return Poll::Ready(()),
                },
                Phase::Running(running) => return running.as_mut().poll(cx),
            }
        }
    }
}

/// Reads the PROXY header, does the TLS handshake and the WebSocket
/// upgrade as the listener says, then reads CONNECT.
async fn handshake_and_connect(accepted: Accepted) -> Option<connection::Running> {
    let Accepted {
        broker,
        listener,
        mut stream,
        mut addr,
        shutdown,
    } = accepted;
    if listener.config.proxy_protocol {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy::read_header(&mut stream)).await {
            Ok(Ok(Some(real))) => addr = real,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                broker
                    .logger
                    .warning(&format!("Bad PROXY protocol header from {addr}: {e}."));
                return None;
            }
            Err(_) => return None,
        }
    }
    let peer = Peer {
        addr,
        local_port: listener.config.bind.port(),
        listener: listener.name.clone(),
        cert_username: None,
        client_certificates: None,
        limits: listener.settings.load().limits.clone(),
    };
    // Plain TCP is handled inline; the other transports are boxed so that
    // their larger handshake state is not part of every connection's.
    match (&listener.tls, listener.config.protocol) {
        (None, ListenerProtocol::Tcp) => connection::connect(broker, stream, peer, shutdown).await,
        (None, ListenerProtocol::Ws) => {
            Box::pin(connect_ws(broker, &listener, stream, peer, shutdown)).await
        }
        (Some(tls), _) => {
            Box::pin(connect_tls(broker, &listener, tls, stream, peer, shutdown)).await
        }
        (None, ListenerProtocol::Tls | ListenerProtocol::Wss) => {
            // Configuration validation requires TLS settings for these.
            broker.logger.error("TLS listener without TLS settings.");
            None
        }
    }
}

async fn connect_ws<S>(
    broker: Arc<Broker>,
    listener: &Listener,
    stream: S,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
) -> Option<connection::Running>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_packet = peer.limits.max_packet_size as usize;
    let path = &listener.config.path;
    let ws = upgrade(&broker, &peer, stream, path, max_packet).await?;
    connection::connect(broker, ws, peer, shutdown).await
}

async fn connect_tls(
    broker: Arc<Broker>,
    listener: &Listener,
    tls: &TlsReloader,
    stream: TcpStream,
    mut peer: Peer,
    shutdown: watch::Receiver<bool>,
) -> Option<connection::Running> {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            broker.metrics.tls_handshake_failed(&listener.name);
            broker.logger.warning(&format!(
                "Client connection from {} failed: TLS handshake error: {}.",
                peer.addr,
                crate::transport::tls::describe_handshake_error(&e)
            ));
            return None;
        }
        Err(_) => return None,
    };
    let certificates = stream.get_ref().1.peer_certificates();
    peer.cert_username = certificates
        .and_then(|certs| certs.first())
        .and_then(|cert| {
            crate::transport::tls::username_from_certificate(cert, tls.username_from())
        });
    if broker.access.has_certificate_fleets() {
        peer.client_certificates = certificates.map(Arc::from);
    }
    if listener.config.protocol == ListenerProtocol::Wss {
        connect_ws(broker, listener, stream, peer, shutdown).await
    } else {
        connection::connect(broker, stream, peer, shutdown).await
    }
}

async fn upgrade<S>(
    broker: &Broker,
    peer: &Peer,
    stream: S,
    path: &str,
    max_packet: usize,
) -> Option<ws::WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, ws::accept(stream, path, max_packet)).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            broker.logger.warning(&format!(
                "WebSocket upgrade from {} failed: {e}.",
                peer.addr
            ));
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_listener_is_ipv6_only_when_an_ipv4_one_shares_its_port() {
        let listeners: Vec<ListenerConfig> = [
            "0.0.0.0:1883",
            "[::]:1883",
            "[::]:8883",
            "[::1]:1883",
            "[::]:0",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|bind| ListenerConfig::tcp(bind.parse().unwrap()))
        .collect();
        let only: Vec<bool> = (0..listeners.len())
            .map(|i| ipv6_only(&listeners, i))
            .collect();
        assert_eq!(only, [false, true, false, true, false, false]);
    }

    #[test]
    fn a_connection_task_fits_tokios_smallest_task_cell() {
        // tokio's task cell: header 32 bytes, scheduler and task id 16,
        // stage 8 + the future, trailer 48; allocated in 128-byte steps.
        type Task = ConnectionTask<std::future::Ready<Option<connection::Running>>>;
        assert!(std::mem::size_of::<Task>() <= 24);
    }
}
