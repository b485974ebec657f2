//! A publisher held back for its subscribers (back-pressure).
//!
//! When a PUBLISH lands in the queue of a connected subscriber above its
//! high-water mark, the publisher's connection pauses: further PUBLISHes (and everything else
//! but acknowledgements and PINGREQ) are held, unanswered, in the order
//! they came; once a few are held, nothing more is read from the socket, so
//! TCP and the client's own in-flight window slow the client down.
//! Acknowledgements are still handled while paused: they are what drains
//! the queues of a client that both publishes and subscribes, and two such
//! clients paused on each other would otherwise wait for ever.
//!
//! The pause ends when every subscriber it waits for has room again (its
//! queue wakes the connection once, through the mailbox) or has been found
//! stalled: one that took nothing for its timeout no longer holds anyone
//! back ([`crate::queue`]). A timer wakes the connection at the first such
//! deadline.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use crate::broker::Routed;
use crate::client::ClientHandle;
use crate::codec::Packet;
use crate::queue::{Congestion, Stall};
use crate::session::Session;

use super::Connection;

/// Packets held while paused before the socket is no longer read.
const HELD_PACKETS: usize = 256;
/// Bytes held while paused before the socket is no longer read.
const HELD_BYTES: usize = 64 * 1024;

/// What a paused connection waits for, and what it read meanwhile.
pub(super) struct Hold {
    /// Subscribers above their high-water mark.
    sessions: Vec<Arc<Session>>,
    /// Packets read while paused, to handle once the pause is over.
    held: VecDeque<Packet>,
    held_bytes: usize,
    /// Wakes the connection at the first subscriber's stall deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Hold {
    fn is_paused(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Whether more may be read from the socket.
    pub(super) fn can_read(&self) -> bool {
        self.held.len() < HELD_PACKETS && self.held_bytes < HELD_BYTES
    }

    fn add(&mut self, routed: Routed) {
        for session in routed.congested {
            if !self.sessions.iter().any(|s| Arc::ptr_eq(s, &session)) {
                self.sessions.push(session);
            }
        }
    }

    /// Looks at every subscriber waited for: drops those with room again,
    /// returns those found stalled (each reported once, to whoever looks
    /// first), and arms the timer for the next stall deadline.
    fn refresh(
        &mut self,
        me: &Arc<ClientHandle>,
        cx: &mut Context<'_>,
    ) -> Vec<(Arc<Session>, Stall)> {
        let mut stalls = Vec::new();
        loop {
            let now = Instant::now();
            let mut next_deadline: Option<Instant> = None;
            self.sessions
                .retain(|session| match session.state.lock().queue.hold(me, now) {
                    Congestion::Released => false,
                    Congestion::Holding { stall_deadline } => {
                        next_deadline =
                            Some(next_deadline.map_or(stall_deadline, |d| d.min(stall_deadline)));
                        true
                    }
                    Congestion::Stalled(stall) => {
                        stalls.push((session.clone(), stall));
                        false
                    }
                });
            let Some(deadline) = next_deadline else {
                self.timer = None;
                return stalls;
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return stalls;
            }
            // The deadline passed while looking: look again.
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    /// Pauses after a PUBLISH that landed above a subscriber's mark.
    pub(super) fn pause(&mut self, routed: Routed) {
        if routed.congested.is_empty() {
            return;
        }
        let hold = self.hold.get_or_insert_with(|| {
            Box::new(Hold {
                sessions: Vec::new(),
                held: VecDeque::new(),
                held_bytes: 0,
                timer: None,
            })
        });
        if !hold.is_paused() {
            self.broker.metrics.publisher_paused();
        }
        hold.add(routed);
    }

    /// Whether the connection is paused now.
    pub(super) fn is_paused(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.is_paused())
    }

    /// Keeps a packet read while paused, to handle after the pause.
    pub(super) fn hold_packet(&mut self, packet: Packet, size: usize) {
        if let Some(hold) = &mut self.hold {
            hold.held.push_back(packet);
            hold.held_bytes += size;
        }
    }

    /// The next packet held during a pause that is over; forgets the hold
    /// once it is empty.
    pub(super) fn take_held(&mut self) -> Option<Packet> {
        let hold = self.hold.as_mut().filter(|h| !h.is_paused())?;
        let packet = hold.held.pop_front();
        if packet.is_none() {
            self.hold = None;
        }
        packet
    }

    /// While paused: looks whether the subscribers have room again, and
    /// deals with those that stopped. Returns true when the pause just
    /// ended.
    pub(super) fn poll_pause(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(hold) = self.hold.as_mut().filter(|h| h.is_paused()) else {
            return false;
        };
        let stalls = hold.refresh(&self.client, cx);
        let ended = !hold.is_paused();
        for (session, stall) in stalls {
            self.broker.slow_subscriber(&session, stall);
        }
        if ended {
            self.broker.metrics.publisher_resumed();
        }
        ended
    }

    /// The connection ends while paused.
    pub(super) fn end_pause(&mut self) {
        if self.hold.take().is_some_and(|h| h.is_paused()) {
            self.broker.metrics.publisher_resumed();
        }
    }
}
