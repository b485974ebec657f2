//! A client session: what survives between connections of one client id
//! (subscriptions, queued and in-flight messages, inbound QoS 2 state) and
//! the bookkeeping of the connection currently attached to it.
//!
//! Every session has its own lock; publishing to many sessions takes each
//! lock briefly and never a global one. The attached connection is woken
//! through [`Session::notify`] when new messages are queued.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::access::AclCache;
use crate::budget::MemoryBudget;
use crate::client::{ClientHandle, Control, Wakeup};
use crate::codec::{QoS, SubscriptionOptions};
use crate::inflight::{Inflight, InflightWindow};
use crate::message::Message;
use crate::queue::{DeliveryQueue, Enqueued, QueueLimits};
use crate::store::Record;

/// A message waiting in a session's queue or in flight to its client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// Effective QoS: min(published QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag as it will be sent.
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// The shared subscription (share name) it was given through: if the
    /// client leaves without acknowledging it, another member gets it.
    pub shared_group: Option<Arc<str>>,
    /// Sequence number in the durable store; 0 when not persisted.
    pub seq: u64,
}

/// A shared-subscription message its client left without acknowledging,
/// with the packet id it was sent with (None: it was still queued).
#[derive(Debug)]
pub struct Unacknowledged {
    pub packet_id: Option<u16>,
    pub delivery: Delivery,
}

/// What one subscription makes of a message it delivers.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFlags {
    /// min(published QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag as it will be sent.
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// The shared subscription it comes through, if any.
    pub shared_group: Option<Arc<str>>,
}

/// What a session's subscription remembers (the router holds the same data
/// for matching; this copy lets us clean the router up and persist it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSubscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// The connection attached to a session.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub connection_id: u64,
    pub client: Arc<ClientHandle>,
}

/// Yes-or-no facts about a session, one bit each (every client has a
/// session: its size counts, see `a_session_stays_small`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionFlags(u8);

impl SessionFlags {
    /// In-flight deliveries were restored while a connection was attached
    /// (read late from the cluster): it sends them
    /// ([`InflightWindow::take_restored`]).
    pub const RESTORED_INFLIGHT: u8 = 1;
    /// The cluster holds nothing of this session, nor of any earlier one
    /// of its client: it started afresh here and was never persistent
    /// since (a take-over elsewhere has nothing to delete there). Unset
    /// whenever that is not known.
    pub const NOTHING_IN_CLUSTER: u8 = 2;
    /// Another node took the client over: the session goes there, and no
    /// copy of its queue is kept here ([`crate::cluster::mirror`]).
    pub const MOVED_AWAY: u8 = 4;

    pub fn get(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    pub fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// Whether `flag` was set; unset now.
    pub fn take(&mut self, flag: u8) -> bool {
        let was = self.get(flag);
        self.set(flag, false);
        was
    }
}

#[derive(Debug, Default)]
pub struct SessionState {
    pub attachment: Option<Attachment>,
    /// Session Expiry Interval in seconds (0: ends with the connection;
    /// u32::MAX: never expires).
    pub expiry_interval: u32,
    /// Whether the session is written to the durable store.
    pub persistent: bool,
    /// [`SessionFlags`].
    pub flags: SessionFlags,
    /// Set while no connection is attached; used for expiry.
    pub disconnected_at: Option<Instant>,
    /// Incremented on each attach/detach so timers can tell whether the
    /// session they were started for is still in the same state.
    pub epoch: u64,
    /// By filter. (A B-tree: 24 bytes, where a hash map takes 48; clients
    /// have few subscriptions, and the router does the matching.)
    pub subscriptions: BTreeMap<String, SessionSubscription>,
    /// Deliveries behind the in-flight window, or waiting for the client.
    pub queue: DeliveryQueue,
    /// Sent and not yet acknowledged, by packet id.
    pub inflight: InflightWindow,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids we sent PUBREC for and await PUBREL.
    /// (A B-tree: 24 bytes while empty, where a hash set takes 48.)
    pub inbound_qos2: BTreeSet<u16>,
    /// Next durable-store sequence number.
    pub next_seq: u64,
    /// Token of a pending delayed will; cleared when the client comes back.
    pub pending_will: Option<NonZeroU64>,
    /// The client last attached; kept while offline so queued deliveries
    /// are still checked against its ACL. `None` for sessions restored from
    /// the store until their client returns (their subscriptions were
    /// authorised when made).
    pub last_client: Option<Arc<ClientHandle>>,
    /// The read rules of `last_client`.
    pub acl: Option<AclCache>,
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

    // ----- inbound QoS 2 (client -> broker) ---------------------------------

    /// A QoS 2 PUBLISH arrived with `packet_id`: remembers it until its
    /// PUBREL, unless it is a retransmission or one too many (`max`
    /// exchanges open at once, our Receive Maximum).
    pub fn begin_inbound_qos2(&self, packet_id: u16, max: usize) -> InboundQos2 {
        let mut state = self.state.lock();
        if state.inbound_qos2.contains(&packet_id) {
            InboundQos2::Duplicate
        } else if state.inbound_qos2.len() >= max {
            InboundQos2::OverLimit
        } else {
            state.inbound_qos2.insert(packet_id);
            InboundQos2::New
        }
    }

    /// The QoS 2 exchange `packet_id` failed (refused message): no PUBREL
    /// will follow.
    pub fn abandon_inbound_qos2(&self, packet_id: u16) {
        self.state.lock().inbound_qos2.remove(&packet_id);
    }

    /// The store record of an accepted inbound QoS 2 message, for a durable
    /// session (written before PUBREC, so a restart still knows it).
    pub fn inbound_qos2_record(&self, packet_id: u16) -> Option<Record> {
        self.state.lock().persistent.then(|| Record::InboundQos2 {
            client_id: self.client_id.to_string(),
            packet_id,
        })
    }

    /// PUBREL: the inbound QoS 2 exchange `packet_id` is over.
    pub fn finish_inbound_qos2(&self, packet_id: u16) -> Acked {
        let mut state = self.state.lock();
        if !state.inbound_qos2.remove(&packet_id) {
            return Acked::Unknown;
        }
        Acked::Applied(state.persistent.then(|| Record::InboundQos2Done {
            client_id: self.client_id.to_string(),
            packet_id,
        }))
    }

    // ----- outbound deliveries (broker -> client) ---------------------------

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for the delivery `packet_id`,
    /// which must be of the `expected` QoS.
    pub fn complete_delivery(&self, packet_id: u16, expected: QoS) -> Acked {
        let mut state = self.state.lock();
        let done = match state.inflight.get(packet_id) {
            Some(entry) if entry.delivery.qos == expected => state.complete(packet_id),
            _ => None,
        };
        match done {
            Some(entry) => Acked::Applied(self.dequeue_record(entry.delivery.seq)),
            None => Acked::Unknown,
        }
    }

    /// PUBREC for the QoS 2 delivery `packet_id`: it moves to its PUBREL
    /// phase.
    pub fn release_delivery(&self, packet_id: u16) -> Acked {
        let seq = self.state.lock().release(packet_id);
        match seq {
            Some(seq) => Acked::Applied((seq != 0).then(|| Record::Released {
                client_id: self.client_id.to_string(),
                seq,
            })),
            None => Acked::Unknown,
        }
    }

    /// The record that removes a stored delivery (`seq` 0: not stored).
    pub fn dequeue_record(&self, seq: u64) -> Option<Record> {
        (seq != 0).then(|| Record::Dequeue {
            client_id: self.client_id.to_string(),
            seq,
        })
    }

    /// What was in flight when the client last left, in send order, with
    /// whether each QoS 2 delivery was already released (PUBREL sent).
    pub fn inflight_in_send_order(&self) -> Vec<(u16, Delivery, bool)> {
        self.state
            .lock()
            .inflight
            .in_send_order()
            .into_iter()
            .map(|(id, i)| (id, i.delivery.clone(), i.released))
            .collect()
    }

    // ----- subscriptions and expiry ----------------------------------------

    /// Whether one more subscription on `filter` stays within `max`
    /// (replacing an existing one always does).
    pub fn subscription_fits(&self, filter: &str, max: u32) -> bool {
        let state = self.state.lock();
        state.subscriptions.contains_key(filter) || state.subscriptions.len() < max as usize
    }

    /// Sets the session expiry interval (5.0 DISCONNECT may change it).
    pub fn set_expiry_interval(&self, seconds: u32) {
        self.state.lock().expiry_interval = seconds;
    }
}

/// What an inbound QoS 2 PUBLISH is to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundQos2 {
    /// A new exchange: route the message, answer PUBREC.
    New,
    /// A retransmission of a message already received: answer PUBREC
    /// again, route nothing.
    Duplicate,
    /// More exchanges open than our Receive Maximum allows.
    OverLimit,
}

/// What an acknowledgement from the client did.
#[derive(Debug, PartialEq)]
pub enum Acked {
    /// No exchange with that packet id is in that state.
    Unknown,
    /// Applied; the record to store for a durable session, if any.
    Applied(Option<Record>),
}

impl SessionState {
    /// Offers a delivery to the queue. `publisher` is the client whose
    /// PUBLISH it is, if any; it is paused when this session's connected
    /// client falls behind (unless it is that client itself).
    pub fn enqueue(
        &mut self,
        delivery: Delivery,
        limits: &QueueLimits,
        publisher: Option<&Arc<ClientHandle>>,
        budget: &MemoryBudget,
    ) -> Enqueued {
        let attached = self.attachment.as_ref().map(|a| &a.client);
        // A client is never paused for its own subscriptions: the
        // acknowledgements that drain them come through its own socket.
        let pausable = publisher.filter(|p| attached.is_none_or(|own| !Arc::ptr_eq(p, own)));
        self.queue
            .offer(delivery, limits, attached.is_some(), pausable, budget)
    }

    /// Takes the next delivery to send, if the in-flight window allows it.
    /// QoS 1/2 deliveries get a packet id and move to `inflight`; expired
    /// messages are discarded on the way (returned in `expired` so their
    /// store entries can be removed).
    pub fn next_to_send(
        &mut self,
        window: usize,
        now: Instant,
        budget: &MemoryBudget,
        expired: &mut Vec<u64>,
    ) -> Option<(Option<u16>, Delivery)> {
        loop {
            let front = self.queue.front()?;
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                return None;
            }
            let delivery = self.queue.pop(now, budget)?;
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
        let inflight = Inflight { delivery, released };
        if self.attachment.is_some() {
            // The connection sent what was in flight when it attached.
            self.inflight.insert_restored(packet_id, inflight);
            self.flags.set(SessionFlags::RESTORED_INFLIGHT, true);
        } else {
            self.inflight.insert(packet_id, inflight);
        }
        if packet_id >= self.next_packet_id {
            self.next_packet_id = packet_id.checked_add(1).unwrap_or(1);
        }
    }

    /// Restores a queued entry recovered from the store (no limits applied:
    /// it was accepted before the restart).
    pub fn restore_queued(&mut self, delivery: Delivery, budget: &MemoryBudget) {
        self.queue.restore(delivery, budget);
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

    /// Takes out what came through shared subscriptions and the client did
    /// not acknowledge (in flight, not yet released, then queued), in
    /// order: another member of the group gets it.
    pub fn take_shared_unacknowledged(&mut self, budget: &MemoryBudget) -> Vec<Unacknowledged> {
        let mut taken = Vec::new();
        let in_flight: Vec<u16> = self
            .inflight
            .in_send_order()
            .into_iter()
            .filter(|(_, i)| i.delivery.shared_group.is_some() && !i.released)
            .map(|(id, _)| id)
            .collect();
        for id in in_flight {
            if let Some(entry) = self.inflight.remove(id) {
                taken.push(Unacknowledged {
                    packet_id: Some(id),
                    delivery: entry.delivery,
                });
            }
        }
        taken.extend(
            self.queue
                .take_where(|d| d.shared_group.is_some(), budget)
                .into_iter()
                .map(|delivery| Unacknowledged {
                    packet_id: None,
                    delivery,
                }),
        );
        taken
    }

    /// Takes back a message [`Self::take_shared_unacknowledged`] took out
    /// and no other member wanted. While its client is away, a message it
    /// was sent goes back in flight under its packet id, so the client
    /// gets it again with DUP set, as if it had never left; otherwise it
    /// is queued.
    pub fn keep_unacknowledged(&mut self, message: Unacknowledged, budget: &MemoryBudget) {
        match message.packet_id {
            Some(id) if self.attachment.is_none() && !self.inflight.contains(id) => {
                self.restore_inflight(id, message.delivery, false);
            }
            _ => self.queue.restore(message.delivery, budget),
        }
    }

    /// Forgets every message (clean start on an existing session).
    /// The messages it holds (in flight in send order, then queued), taken
    /// out: the session keeps none.
    pub fn take_messages(&mut self, budget: &MemoryBudget) -> Vec<Arc<Message>> {
        let messages = self
            .inflight
            .in_send_order()
            .into_iter()
            .map(|(_, i)| i.delivery.msg.clone())
            .chain(self.queue.iter().map(|d| d.msg.clone()))
            .collect();
        self.clear_messages(budget);
        messages
    }

    pub fn clear_messages(&mut self, budget: &MemoryBudget) {
        self.queue.clear(budget);
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
mod tests;
