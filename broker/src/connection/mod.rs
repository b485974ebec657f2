//! One client connection: the MQTT protocol state machine from CONNECT to
//! the close of the socket.
//!
//! A single task per connection reads packets, handles them, and writes
//! what the session has queued, so an idle connection costs one task and
//! two small buffers. The session (not the connection) owns queued and
//! in-flight messages, which is what makes takeover and persistence simple.
//!
//! The rooms:
//! - [`io`]: the socket, its read and write buffers, the lingering close;
//! - [`connect`](mod@connect): CONNECT, from the first byte to CONNACK (or a refusal);
//!   who the client is ([`login`]) and how a refusal is sent ([`refusal`]);
//! - this module: the connection's state and its event loop;
//! - [`inbound`]: the handlers of the packets a client sends;
//! - [`outbound`]: deliveries from the session's queue, with the in-flight
//!   window and topic aliases;
//! - [`pause`]: a publisher held back while its subscribers catch up;
//! - [`close`]: why a connection ends, the will, and the last packet.

mod close;
mod connect;
mod inbound;
mod io;
mod login;
mod negotiate;
mod outbound;
mod pause;
mod refusal;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::access::{AclCache, UserSlot};
use crate::broker::Broker;
use crate::client::ClientHandle;
use crate::codec::{ProtocolVersion, Will};
use crate::config::Limits;
use crate::keepalive::Registration;
use crate::ratelimit::TokenBucket;
use crate::session::Session;

use self::close::Close;
use self::io::Io;
use self::pause::Hold;

pub use self::connect::connect;

/// Stop pulling from the session queue while this much is unsent.
const WRITE_HIGH_WATER: usize = 64 * 1024;

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
    /// The verified client certificate chain (leaf first), when a fleet
    /// may claim it ([`crate::auth::fleet`]).
    pub client_certificates: Option<Arc<[rustls_pki_types::CertificateDer<'static>]>>,
    /// The limits of the listener (broker-wide limits with its overrides).
    pub limits: Arc<Limits>,
}

/// A connection past CONNECT, running until it closes.
///
/// Boxed: the task that awaits it then does not carry the larger state of
/// the handshakes and the CONNECT phase, and idle connections are what the
/// broker holds most of.
pub type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    window: u16,
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
    /// The client's topic rules, for publishing and its will.
    acl: AclCache,
    /// Publish rate quota.
    publish_limit: Option<Box<TokenBucket>>,
    /// Largest packet this client may send (per-user quota or the limit).
    max_inbound_packet: u32,
    max_subscriptions: Option<u32>,
    /// The user's connection slot, released when the connection ends.
    _user_slot: Option<Box<UserSlot>>,
    /// The listener's limits.
    limits: Arc<Limits>,
    /// Set while paused for subscribers that fell behind, and until the
    /// packets read meanwhile are handled.
    hold: Option<Box<Hold>>,
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
            let paused = self.is_paused();
            if let Some(keep_alive) = &mut self.keep_alive {
                // Decided before this poll's read, on the packets handled so
                // far. A paused client is not read from: it is not silent.
                let now = Instant::now();
                if paused {
                    self.last_packet = now;
                }
                let deadline = self.last_packet + keep_alive.limit;
                if deadline <= now {
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
        if self.poll_pause(cx) {
            // Handle what was held, and what is buffered, before reading on.
            self.last_packet = Instant::now();
            return Poll::Ready(Ok(true));
        }
        if !self.hold.as_ref().is_none_or(|h| h.can_read()) {
            // Paused, with enough held: TCP holds the client back now.
        } else {
            match self.io.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Close::Eof)),
                Poll::Ready(Ok(n)) => {
                    self.broker.metrics.bytes_received.inc_by(n as u64);
                    return Poll::Ready(Ok(true));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Close::SocketError(e))),
                Poll::Pending => {}
            }
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
}
