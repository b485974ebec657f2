//! One listening socket: accept, apply the listener's connection limits,
//! then in a task of its own per connection (so one slow handshake never
//! stalls the others) read the PROXY header, do the TLS handshake and the
//! WebSocket upgrade, and hand the stream to the MQTT connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ratelimit::TokenBucket;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerProtocol};
use crate::connection::{self, Peer};
use crate::transport::{proxy, tls::TlsReloader, ws};

/// How long PROXY header, TLS handshake and WebSocket upgrade may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listener, ready to serve.
pub struct Listener {
    pub config: ListenerConfig,
    pub name: Arc<str>,
    pub tcp: TcpListener,
    pub tls: Option<Arc<TlsReloader>>,
    /// Broker-wide limits with this listener's overrides.
    pub limits: Arc<crate::config::Limits>,
}

/// Decrements the listener's connection count when a connection ends.
struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `stop_accepting`, then waits for them to end;
/// `close_all` is handed to every connection.
pub async fn run(
    broker: Arc<Broker>,
    listener: Listener,
    mut stop_accepting: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = Arc::new(listener);
    let active = Arc::new(AtomicU32::new(0));
    let rate = listener.config.max_connection_rate;
    let limiter = (rate > 0).then(|| Mutex::new(TokenBucket::new(rate, rate, Instant::now())));
    let mut connections = JoinSet::new();
    let port = listener.config.bind.port();
    loop {
        tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let max = listener.config.max_connections;
                    if max > 0 && active.load(Ordering::Relaxed) >= max {
                        broker.metrics.refused(&listener.name, "max_connections");
                        broker.logger.warning(&format!(
                            "Refused connection from {peer} on listener {}: connection limit {max} reached.",
                            listener.name
                        ));
                        continue;
                    }
                    if limiter.as_ref().is_some_and(|l| l.lock().try_take(Instant::now()).is_err()) {
                        broker.metrics.refused(&listener.name, "connection_rate");
                        continue;
                    }
                    active.fetch_add(1, Ordering::Relaxed);
                    let slot = Slot(active.clone());
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handshake_and_serve(
                        broker.clone(),
                        listener.clone(),
                        stream,
                        peer,
                        shutdown.clone(),
                        slot,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly.
                    broker.logger.warning(&format!(
                        "Error accepting a connection on port {port}: {e}."
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop_accepting.changed() => break,
        }
    }
    // Stop accepting: the socket closes here, connections drain.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn handshake_and_serve(
    broker: Arc<Broker>,
    listener: Arc<Listener>,
    mut stream: TcpStream,
    mut addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
    _slot: Slot,
) {
    if listener.config.proxy_protocol {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy::read_header(&mut stream)).await {
            Ok(Ok(Some(real))) => addr = real,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                broker
                    .logger
                    .warning(&format!("Bad PROXY protocol header from {addr}: {e}."));
                return;
            }
            Err(_) => return,
        }
    }
    let peer = Peer {
        addr,
        local_port: listener.config.bind.port(),
        listener: listener.name.clone(),
        cert_username: None,
        limits: listener.limits.clone(),
    };
    // Plain TCP is served inline; the other transports are boxed so that
    // their larger state does not make every connection's task larger.
    match (&listener.tls, listener.config.protocol) {
        (None, ListenerProtocol::Tcp) => connection::serve(broker, stream, peer, shutdown).await,
        (None, ListenerProtocol::Ws) => {
            Box::pin(serve_ws(broker, listener.clone(), stream, peer, shutdown)).await
        }
        (Some(tls), _) => {
            let tls = tls.clone();
            Box::pin(serve_tls(
                broker,
                listener.clone(),
                tls,
                stream,
                peer,
                shutdown,
            ))
            .await
        }
        (None, ListenerProtocol::Tls | ListenerProtocol::Wss) => {
            // Configuration validation requires TLS settings for these.
            broker.logger.error("TLS listener without TLS settings.");
        }
    }
}

async fn serve_ws<S>(
    broker: Arc<Broker>,
    listener: Arc<Listener>,
    stream: S,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_packet = broker.config.limits.max_packet_size as usize;
    let path = &listener.config.path;
    if let Some(ws) = upgrade(&broker, &peer, stream, path, max_packet).await {
        connection::serve(broker, ws, peer, shutdown).await;
    }
}

async fn serve_tls(
    broker: Arc<Broker>,
    listener: Arc<Listener>,
    tls: Arc<TlsReloader>,
    stream: TcpStream,
    mut peer: Peer,
    shutdown: watch::Receiver<bool>,
) {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            broker.metrics.tls_handshake_failed(&listener.name);
            broker.logger.warning(&format!(
                "Client connection from {} failed: TLS handshake error: {e}.",
                peer.addr
            ));
            return;
        }
        Err(_) => return,
    };
    peer.cert_username = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| {
            crate::transport::tls::username_from_certificate(cert, tls.username_from())
        });
    if listener.config.protocol == ListenerProtocol::Wss {
        serve_ws(broker, listener, stream, peer, shutdown).await;
    } else {
        connection::serve(broker, stream, peer, shutdown).await;
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
