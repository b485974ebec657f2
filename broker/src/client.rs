//! A connected client as the rest of the broker sees it: who it is
//! ([`ClientInfo`]) and how to reach its connection task ([`Mailbox`],
//! [`Control`]), in one allocation per connection ([`ClientHandle`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::codec::{ProtocolVersion, ReasonCode};

/// Messages to the connection task attached to a session.
#[derive(Debug)]
pub enum Control {
    /// Another connection took over this client id; stop and confirm.
    TakenOver(tokio::sync::oneshot::Sender<()>),
    /// Server-initiated disconnect with a reason (admin action, a user
    /// removed from the credentials). The will is published.
    Disconnect(ReasonCode),
    /// The broker is draining: close with 0x8B (5.0), keep the session,
    /// publish no will.
    Shutdown,
    /// Reconnect to another node of the cluster (draining, shedding
    /// connections): 5.0 DISCONNECT 0x9C Use another server; the session is
    /// kept (and handed to the cluster), no will is published.
    Relocate,
    /// The session was handed to a new connection after this one did not
    /// answer a takeover in time.
    Detached,
    /// Another node of the cluster took the client over while this one was
    /// cut off from it (it took this node for dead and published the
    /// will): 5.0 DISCONNECT 0x8E, no will; the session here is gone
    /// already, nothing of it is handed to the cluster.
    ClaimedElsewhere,
}

/// Who is (or was last) connected to a session: for logs, ACLs, presence
/// events and the admin API.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub address: SocketAddr,
    pub username: Option<Arc<str>>,
    /// The user name came from a verified client certificate.
    pub cert_authenticated: bool,
    pub protocol: ProtocolVersion,
    pub keep_alive: u16,
    pub listener: Arc<str>,
    pub connected_at: SystemTime,
    /// The device and its fleet, for a device of a fleet
    /// ([`crate::auth::fleet`]).
    pub fleet: Option<Arc<crate::auth::fleet::FleetDevice>>,
}

/// Wakes the one task that waits on it, and remembers a wake-up that
/// arrives while nobody waits (like [`tokio::sync::Notify::notify_one`]).
///
/// The waiter polls it (no future of its own): idle connections are many,
/// and a `Notified` future would add its waiter node to each connection's
/// task for as long as it is idle.
#[derive(Debug, Default)]
pub struct Wakeup {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wakeup {
    /// Wakes the waiting task, or the next one to poll.
    pub fn notify_one(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (and consumed) when a wake-up is pending; otherwise registers
    /// the task's waker.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake-up between the check and the registration is not lost.
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Waits for a wake-up.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }
}

/// Control messages to one connection. Lighter than a channel (idle
/// connections are many): a short queue and a wake-up. The keep-alive
/// wheel also wakes the connection through it.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Control>>,
    wakeup: Wakeup,
    closed: AtomicBool,
    /// The connection's keep-alive deadline has passed: it should check
    /// its last activity ([`crate::keepalive`]).
    keep_alive_due: AtomicBool,
}

impl Mailbox {
    /// Delivers `control`; false when the connection has already ended.
    pub fn send(&self, control: Control) -> bool {
        let mut queue = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        queue.push_back(control);
        drop(queue);
        self.wakeup.notify_one();
        true
    }

    /// The next control message, if one is waiting; otherwise the task is
    /// woken when one arrives. A message is taken only when it is returned.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Control> {
        loop {
            if let Some(control) = self.queue.lock().pop_front() {
                return Poll::Ready(control);
            }
            std::task::ready!(self.wakeup.poll_notified(cx));
        }
    }

    /// The next control message. Cancel-safe: a message is taken only when
    /// it is returned.
    pub async fn recv(&self) -> Control {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Wakes the connection without a message, to look at its state again
    /// (a paused publisher whose subscribers have room again).
    pub fn wake(&self) {
        self.wakeup.notify_one();
    }

    /// Tells the connection that its keep-alive deadline has passed, and
    /// wakes it.
    pub fn keep_alive_due(&self) {
        self.keep_alive_due.store(true, Ordering::Release);
        self.wakeup.notify_one();
    }

    /// Whether the keep-alive deadline passed since the last call. Polled
    /// after [`Mailbox::poll_recv`], which registers the task's waker.
    pub fn take_keep_alive_due(&self) -> bool {
        self.keep_alive_due.swap(false, Ordering::AcqRel)
    }

    /// Refuses further messages; the connection is ending. Pending
    /// messages are dropped, so a takeover waiting for this connection's
    /// confirmation learns at once that it is gone, and the queue's memory
    /// is freed (the session may keep the mailbox, see [`ClientHandle`]).
    pub fn close(&self) {
        let mut queue = self.queue.lock();
        self.closed.store(true, Ordering::Release);
        *queue = VecDeque::new();
    }
}

/// A connected client as the rest of the broker sees it: who it is, and
/// the mailbox of its connection. One allocation per connection (idle
/// connections are many), shared by the connection, its session and the
/// keep-alive wheel; the session keeps it after the connection ends
/// ([`SessionState::last_client`](crate::session::SessionState::last_client)).
#[derive(Debug)]
pub struct ClientHandle {
    pub info: ClientInfo,
    pub mailbox: Mailbox,
}

impl ClientHandle {
    pub fn new(info: ClientInfo) -> ClientHandle {
        ClientHandle {
            info,
            mailbox: Mailbox::default(),
        }
    }
}

#[cfg(test)]
impl ClientHandle {
    /// An anonymous 5.0 client on 127.0.0.1.
    pub(crate) fn for_tests() -> ClientHandle {
        ClientHandle::new(ClientInfo {
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            username: None,
            cert_authenticated: false,
            protocol: ProtocolVersion::V5,
            keep_alive: 60,
            listener: Arc::from("tcp-1883"),
            connected_at: SystemTime::now(),
            fleet: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_context() -> Context<'static> {
        Context::from_waker(futures_util::task::noop_waker_ref())
    }

    #[tokio::test]
    async fn a_wakeup_wakes_the_waiting_task_once() {
        let wakeup = Arc::new(Wakeup::default());
        let waiter = tokio::spawn({
            let wakeup = wakeup.clone();
            async move { wakeup.notified().await }
        });
        // Let the waiter register before the wake-up.
        tokio::task::yield_now().await;
        wakeup.notify_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiting task was woken")
            .unwrap();
        // Consumed: nothing is pending any more.
        assert!(wakeup.poll_notified(&mut noop_context()).is_pending());
    }

    #[test]
    fn a_wakeup_without_a_waiter_is_kept_for_the_next_poll() {
        let wakeup = Wakeup::default();
        wakeup.notify_one();
        wakeup.notify_one();
        assert!(wakeup.poll_notified(&mut noop_context()).is_ready());
        assert!(wakeup.poll_notified(&mut noop_context()).is_pending());
    }

    #[tokio::test]
    async fn a_mailbox_delivers_in_order_and_wakes_its_reader() {
        let mailbox = Arc::new(Mailbox::default());
        assert!(mailbox.poll_recv(&mut noop_context()).is_pending());
        let reader = tokio::spawn({
            let mailbox = mailbox.clone();
            async move {
                let first = mailbox.recv().await;
                let second = mailbox.recv().await;
                (first, second)
            }
        });
        tokio::task::yield_now().await;
        assert!(mailbox.send(Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION)));
        assert!(mailbox.send(Control::Shutdown));
        let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert!(matches!(
            first,
            Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION)
        ));
        assert!(matches!(second, Control::Shutdown));
    }

    #[test]
    fn closing_a_mailbox_drops_pending_messages_and_refuses_new_ones() {
        let mailbox = Mailbox::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        assert!(mailbox.send(Control::TakenOver(tx)));
        mailbox.close();
        // The waiting side learns at once that nobody will confirm.
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        assert!(!mailbox.send(Control::Shutdown));
        // The session may keep a closed mailbox: it holds no queue memory.
        assert_eq!(mailbox.queue.lock().capacity(), 0);
    }
}
