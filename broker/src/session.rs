//! A client session: what survives between connections of one client id
//! (subscriptions, queued and in-flight messages, inbound QoS 2 state) and
//! the bookkeeping of the connection currently attached to it.
//!
//! Every session has its own lock; publishing to many sessions takes each
//! lock briefly and never a global one. The attached connection is woken
//! through [`Session::notify`] when new messages are queued.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::auth::ClientAcl;
use crate::codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use crate::config::QueueFullPolicy;
use crate::inflight::InflightWindow;
use crate::message::Message;

/// A message waiting in a session's queue or in flight to its client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// Effective QoS: min(published QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag as it will be sent.
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// Sequence number in the durable store; 0 when not persisted.
    pub seq: u64,
}

/// A QoS 1/2 delivery sent to the client and not yet completed.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub delivery: Delivery,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
}

/// What a session's subscription remembers (the router holds the same data
/// for matching; this copy lets us clean the router up and persist it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSubscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

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
    /// The session was handed to a new connection after this one did not
    /// answer a takeover in time.
    Detached,
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
/// ([`SessionState::last_client`]).
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

/// The connection attached to a session.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub connection_id: u64,
    pub client: Arc<ClientHandle>,
}

/// Queue limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub policy: QueueFullPolicy,
}

impl QueueLimits {
    /// The queue part of a set of limits (broker-wide or a listener's).
    pub fn from_limits(limits: &crate::config::Limits) -> QueueLimits {
        QueueLimits {
            max_messages: limits.max_queued_messages as usize,
            max_bytes: usize::try_from(limits.max_queued_bytes).unwrap_or(usize::MAX),
            policy: limits.queue_full,
        }
    }
}

/// What happened to an offered delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued, and an older delivery (with this store sequence, 0 if none)
    /// was dropped to make room.
    QueuedDroppedOldest(u64),
    /// Not queued: the queue is full or QoS 0 for an offline client.
    Dropped,
}

#[derive(Debug, Default)]
pub struct SessionState {
    pub attachment: Option<Attachment>,
    /// Session Expiry Interval in seconds (0: ends with the connection;
    /// u32::MAX: never expires).
    pub expiry_interval: u32,
    /// Whether the session is written to the durable store.
    pub persistent: bool,
    /// Set while no connection is attached; used for expiry.
    pub disconnected_at: Option<Instant>,
    /// Incremented on each attach/detach so timers can tell whether the
    /// session they were started for is still in the same state.
    pub epoch: u64,
    /// By filter. (A B-tree: 24 bytes, where a hash map takes 48; clients
    /// have few subscriptions, and the router does the matching.)
    pub subscriptions: BTreeMap<String, SessionSubscription>,
    pub queue: VecDeque<Delivery>,
    queued_bytes: usize,
    /// Sent and not yet acknowledged, by packet id.
    pub inflight: InflightWindow,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids we sent PUBREC for and await PUBREL.
    /// (A B-tree: 24 bytes while empty, where a hash set takes 48.)
    pub inbound_qos2: BTreeSet<u16>,
    /// Next durable-store sequence number.
    pub next_seq: u64,
    /// Token of a pending delayed will; cleared when the client comes back.
    pub pending_will: Option<u64>,
    /// The client last attached; kept while offline so queued deliveries
    /// are still checked against its ACL. `None` for sessions restored from
    /// the store until their client returns (their subscriptions were
    /// authorised when made).
    pub last_client: Option<Arc<ClientHandle>>,
    /// The read rules of `last_client`, resolved for an ACL generation.
    pub acl: Option<(u64, Arc<ClientAcl>)>,
    /// Queue limits of the listener the client last connected through;
    /// `None` (broker-wide limits) for sessions restored from the store.
    pub queue_limits: Option<QueueLimits>,
}

pub struct Session {
    pub client_id: Arc<str>,
    pub state: Mutex<SessionState>,
    /// Wakes the attached connection when messages are queued.
    pub notify: Wakeup,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32, persistent: bool) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState {
                expiry_interval,
                persistent,
                next_packet_id: 1,
                next_seq: 1,
                ..SessionState::default()
            }),
            notify: Wakeup::default(),
        }
    }

    pub fn is_online(&self) -> bool {
        self.state.lock().attachment.is_some()
    }

    /// Sends `control` to the connection attached to this session; false
    /// when none is attached or it has already ended. The session's lock
    /// is not held while sending.
    pub fn send_control(&self, control: Control) -> bool {
        self.attached_client()
            .is_some_and(|client| client.mailbox.send(control))
    }

    /// The client attached now, if any (taken out of the session's lock).
    pub fn attached_client(&self) -> Option<Arc<ClientHandle>> {
        self.state
            .lock()
            .attachment
            .as_ref()
            .map(|a| a.client.clone())
    }
}

impl SessionState {
    /// Offers a delivery to the queue. QoS 0 deliveries are only kept for an
    /// attached client.
    pub fn enqueue(&mut self, delivery: Delivery, limits: QueueLimits) -> Enqueued {
        if delivery.qos == QoS::AtMostOnce && self.attachment.is_none() {
            return Enqueued::Dropped;
        }
        let size = delivery.msg.payload.len() + delivery.msg.topic.len();
        let full = |s: &SessionState| {
            s.queue.len() >= limits.max_messages
                || (limits.max_bytes > 0 && s.queued_bytes + size > limits.max_bytes)
        };
        let mut dropped_seq = None;
        if full(self) {
            match limits.policy {
                QueueFullPolicy::DropNew => return Enqueued::Dropped,
                QueueFullPolicy::DropOldest => {
                    match self.queue.pop_front() {
                        Some(old) => {
                            self.queued_bytes -= old.msg.payload.len() + old.msg.topic.len();
                            dropped_seq = Some(old.seq);
                        }
                        None => return Enqueued::Dropped,
                    }
                    if full(self) {
                        return Enqueued::Dropped;
                    }
                }
            }
        }
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        match dropped_seq {
            Some(seq) => Enqueued::QueuedDroppedOldest(seq),
            None => Enqueued::Queued,
        }
    }

    /// Takes the next delivery to send, if the in-flight window allows it.
    /// QoS 1/2 deliveries get a packet id and move to `inflight`; expired
    /// messages are discarded on the way (returned in `expired` so their
    /// store entries can be removed).
    pub fn next_to_send(
        &mut self,
        window: usize,
        now: Instant,
        expired: &mut Vec<u64>,
    ) -> Option<(Option<u16>, Delivery)> {
        loop {
            let front = self.queue.front()?;
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                return None;
            }
            let delivery = self.queue.pop_front()?;
            self.queued_bytes -= delivery.msg.payload.len() + delivery.msg.topic.len();
            if delivery.msg.is_expired(now) {
                if delivery.seq != 0 {
                    expired.push(delivery.seq);
                }
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                return Some((None, delivery));
            }
            let packet_id = self.allocate_packet_id()?;
            self.inflight.insert(
                packet_id,
                Inflight {
                    delivery: delivery.clone(),
                    released: false,
                },
            );
            return Some((Some(packet_id), delivery));
        }
    }

    fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.inflight.contains(id) {
                return Some(id);
            }
        }
        None
    }

    /// Restores an in-flight entry recovered from the store.
    pub fn restore_inflight(&mut self, packet_id: u16, delivery: Delivery, released: bool) {
        self.inflight
            .insert(packet_id, Inflight { delivery, released });
        if packet_id >= self.next_packet_id {
            self.next_packet_id = packet_id.checked_add(1).unwrap_or(1);
        }
    }

    /// Restores a queued entry recovered from the store (no limits applied:
    /// it was accepted before the restart).
    pub fn restore_queued(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.msg.payload.len() + delivery.msg.topic.len();
        self.queue.push_back(delivery);
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the delivery is complete.
    pub fn complete(&mut self, packet_id: u16) -> Option<Inflight> {
        self.inflight.remove(packet_id)
    }

    /// PUBREC: the QoS 2 delivery moves to its PUBREL phase. Returns the
    /// store sequence number, or None for an unknown packet id.
    pub fn release(&mut self, packet_id: u16) -> Option<u64> {
        let entry = self.inflight.get_mut(packet_id)?;
        if entry.delivery.qos != QoS::ExactlyOnce {
            return None;
        }
        entry.released = true;
        Some(entry.delivery.seq)
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Forgets every message (clean start on an existing session).
    pub fn clear_messages(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        self.inbound_qos2.clear();
    }

    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        let mut msg = Message::internal("t", payload, false);
        msg.qos = qos;
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            subscription_identifiers: vec![],
            seq: 0,
        }
    }

    fn limits(max: usize, policy: QueueFullPolicy) -> QueueLimits {
        QueueLimits {
            max_messages: max,
            max_bytes: 0,
            policy,
        }
    }

    fn attached() -> SessionState {
        SessionState {
            attachment: Some(Attachment {
                connection_id: 1,
                client: Arc::new(ClientHandle::for_tests()),
            }),
            next_packet_id: 1,
            ..SessionState::default()
        }
    }

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

    #[test]
    fn a_session_stays_small() {
        // Every client has one, connected or not; 304 bytes make 320 with
        // the Arc's counts, an allocator size class (see docs/benchmarks.md,
        // memory per connection).
        assert!(std::mem::size_of::<Session>() <= 304);
    }

    #[test]
    fn qos0_is_dropped_for_offline_client_but_qos1_queued() {
        let mut s = SessionState::default();
        let l = limits(10, QueueFullPolicy::DropNew);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, "a"), l),
            Enqueued::Dropped
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "b"), l),
            Enqueued::Queued
        );
        assert_eq!(s.queue_len(), 1);
    }

    #[test]
    fn full_queue_drops_new_or_oldest() {
        let mut s = attached();
        let l = limits(2, QueueFullPolicy::DropNew);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), l);
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), l);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "3"), l),
            Enqueued::Dropped
        );
        let l = limits(2, QueueFullPolicy::DropOldest);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "4"), l),
            Enqueued::QueuedDroppedOldest(0)
        );
        let payloads: Vec<_> = s.queue.iter().map(|d| d.msg.payload.clone()).collect();
        assert_eq!(payloads, vec!["2", "4"]);
    }

    #[test]
    fn byte_limit_applies() {
        let mut s = attached();
        let l = QueueLimits {
            max_messages: 100,
            max_bytes: 8,
            policy: QueueFullPolicy::DropNew,
        };
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "abc"), l),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "abc"), l),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "abc"), l),
            Enqueued::Dropped
        );
    }

    #[test]
    fn window_limits_inflight_and_qos0_bypasses_it() {
        let mut s = attached();
        let l = limits(10, QueueFullPolicy::DropNew);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), l);
        s.enqueue(delivery(QoS::ExactlyOnce, "2"), l);
        let now = Instant::now();
        let mut expired = vec![];
        let (pid, _) = s.next_to_send(1, now, &mut expired).unwrap();
        assert_eq!(pid, Some(1));
        assert!(s.next_to_send(1, now, &mut expired).is_none());
        s.complete(1).unwrap();
        let (pid, d) = s.next_to_send(1, now, &mut expired).unwrap();
        assert_eq!((pid, d.qos), (Some(2), QoS::ExactlyOnce));
        assert_eq!(s.release(2), Some(0));
        assert!(s.inflight.get(2).is_some_and(|i| i.released));
        assert!(s.complete(2).is_some());
        assert!(s.complete(2).is_none());
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = attached();
        s.next_packet_id = u16::MAX;
        let l = limits(10, QueueFullPolicy::DropNew);
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce, "x"), l);
        }
        let now = Instant::now();
        let mut e = vec![];
        let ids: Vec<_> = (0..3)
            .map(|_| s.next_to_send(10, now, &mut e).unwrap().0.unwrap())
            .collect();
        assert_eq!(ids, vec![u16::MAX, 1, 2]);
    }

    #[test]
    fn expired_messages_are_skipped() {
        let mut s = attached();
        let mut msg = Message::internal("t", "old", false);
        msg.qos = QoS::AtLeastOnce;
        msg.expires_at = Some(Instant::now());
        let d = Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_identifiers: vec![],
            seq: 7,
        };
        s.enqueue(d, limits(10, QueueFullPolicy::DropNew));
        let mut expired = vec![];
        assert!(s
            .next_to_send(
                10,
                Instant::now() + std::time::Duration::from_millis(1),
                &mut expired
            )
            .is_none());
        assert_eq!(expired, vec![7]);
    }
}
