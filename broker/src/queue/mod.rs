//! A session's queue of deliveries, its limits, and back-pressure.
//!
//! A connected subscriber's queue above its high-water mark pauses the
//! publishers that feed it: each offer that lands above the mark registers
//! its publisher here ([`Enqueued::QueuedPause`]), the publisher's
//! connection stops reading PUBLISHes, and the publishers are woken once,
//! together, when the subscriber has taken the queue back under its
//! low-water mark. Below the mark an offer costs two comparisons more than
//! a plain queue.
//!
//! A subscriber that takes nothing for its stall timeout while above the
//! mark stops holding publishers back ([`Congestion::Stalled`]): it is
//! disconnected or its further messages are dropped, per its limits.
//! Offline sessions have no back-pressure: their queues are bounded by
//! `max_messages` / `max_bytes` and the queue-full policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::UserQuotas;
use crate::budget::{Level, MemoryBudget};
use crate::client::ClientHandle;
use crate::codec::QoS;
use crate::config::{Limits, QueueFullPolicy, SlowSubscriberAction};
use crate::session::Delivery;

/// How often, at most, a session's drops are logged.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The queue limits of one session, from its listener's limits and its
/// user's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Queued messages an offline session keeps.
    pub max_messages: u32,
    /// Queued messages of a connected session above which publishers wait.
    pub high_water: u32,
    /// Queued payload bytes an offline session keeps; 0: no limit.
    /// (32 bits, like the other limits: a session is in every client's
    /// memory, connected or not.)
    pub max_bytes: u32,
    /// Queued payload bytes of a connected session above which publishers
    /// wait.
    pub high_water_bytes: u32,
    /// How long a connected subscriber above its mark may take nothing.
    pub stall_timeout_ms: u32,
    pub policy: QueueFullPolicy,
    pub stall_action: SlowSubscriberAction,
}

impl QueueLimits {
    /// The queue part of a set of limits (broker-wide or a listener's).
    pub fn from_limits(limits: &Limits) -> QueueLimits {
        QueueLimits {
            max_messages: limits.max_queued_messages,
            high_water: limits.queue_high_water,
            max_bytes: u32::try_from(limits.max_queued_bytes).unwrap_or(u32::MAX),
            high_water_bytes: u32::try_from(limits.queue_high_water_bytes).unwrap_or(u32::MAX),
            stall_timeout_ms: limits.slow_subscriber_timeout_ms,
            policy: limits.queue_full,
            stall_action: limits.slow_subscriber_action,
        }
    }

    /// With a user's quotas applied.
    pub fn with_quotas(mut self, quotas: &UserQuotas) -> QueueLimits {
        if let Some(ms) = quotas.slow_subscriber_timeout_ms {
            self.stall_timeout_ms = ms.get();
        }
        if let Some(action) = quotas.slow_subscriber_action {
            self.stall_action = action;
        }
        self
    }

    /// The marks when the broker-wide budget is pressed: an eighth.
    fn pressed(&self) -> QueueLimits {
        QueueLimits {
            high_water: (self.high_water / 8).max(1),
            high_water_bytes: (self.high_water_bytes / 8).max(1),
            ..*self
        }
    }

    fn stall_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.stall_timeout_ms))
    }
}

/// Why a delivery was not queued (the `reason` label of
/// `kubemqtt_messages_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// QoS 0 for a client that is not connected.
    Offline,
    /// An offline session's queue is full (or a client's own messages to
    /// itself overflow it).
    QueueFull,
    /// A connected subscriber stopped taking messages and its action is
    /// `drop`.
    SlowSubscriber,
    /// The broker-wide budget of queued bytes is spent.
    MemoryBudget,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}

impl DropReason {
    /// Every reason, for metrics initialised at zero.
    pub const ALL: [DropReason; 5] = [
        DropReason::Offline,
        DropReason::QueueFull,
        DropReason::SlowSubscriber,
        DropReason::MemoryBudget,
        DropReason::TooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Offline => "offline",
            DropReason::QueueFull => "queue_full",
            DropReason::SlowSubscriber => "slow_subscriber",
            DropReason::MemoryBudget => "memory_budget",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// What happened to an offered delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued above the high-water mark of a connected subscriber: the
    /// publisher was registered and must stop reading PUBLISHes until it
    /// is woken.
    QueuedPause,
    /// Queued, and an older delivery (with this store sequence, 0 if none)
    /// was dropped to make room.
    QueuedDroppedOldest(u64),
    Dropped(DropReason),
}

/// Where a paused publisher stands with one subscriber's queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Congestion {
    /// The queue no longer holds publishers back.
    Released,
    /// Still above the mark; the publisher is registered to be woken, and
    /// should look again at `stall_deadline` at the latest.
    Holding { stall_deadline: Instant },
    /// The subscriber took nothing for its stall timeout: the caller that
    /// sees this (once per stall) applies `action`.
    Stalled(Stall),
}

/// A subscriber found to have stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub action: SlowSubscriberAction,
    pub queued: usize,
    pub idle: Duration,
}

/// A session's queue as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStatus {
    Flowing,
    /// Above the high-water mark: publishers wait.
    Congested,
    /// Stopped past its timeout: its further messages are dropped.
    Stalled,
}

impl FlowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Flowing => "flowing",
            FlowStatus::Congested => "congested",
            FlowStatus::Stalled => "stalled",
        }
    }
}

/// Deliveries waiting for the in-flight window or for the client to come
/// back, in order.
#[derive(Debug, Default)]
pub struct DeliveryQueue {
    items: VecDeque<Delivery>,
    /// Payload and topic bytes of `items`.
    bytes: usize,
    /// Back-pressure and drop bookkeeping; allocated the first time the
    /// queue goes above its mark or drops a message (most never do).
    flow: Option<Box<Flow>>,
}

#[derive(Debug)]
struct Flow {
    /// Above the high-water mark: publishers wait.
    congested: bool,
    /// Congested and taking nothing past its timeout: publishers no longer
    /// wait for it.
    stalled: bool,
    /// Publishers to wake when the queue is back under the low-water mark.
    waiters: Vec<Arc<ClientHandle>>,
    /// While congested: when the subscriber last took a message.
    last_progress: Instant,
    /// The limits in force when the congestion began.
    low_water: usize,
    low_water_bytes: usize,
    stall_timeout: Duration,
    action: SlowSubscriberAction,
    /// Deliveries dropped for this session since it was created.
    dropped: u64,
    /// When a drop was last logged.
    drop_logged_at: Option<Instant>,
}

impl Flow {
    fn new(limits: &QueueLimits, now: Instant) -> Flow {
        Flow {
            congested: false,
            stalled: false,
            waiters: Vec::new(),
            last_progress: now,
            low_water: (limits.high_water / 2) as usize,
            low_water_bytes: limits.high_water_bytes as usize / 2,
            stall_timeout: limits.stall_timeout(),
            action: limits.stall_action,
            dropped: 0,
            drop_logged_at: None,
        }
    }

    /// The queue went above its mark: judged from now on, on the limits in
    /// force now.
    fn begin_congestion(&mut self, limits: &QueueLimits, now: Instant) {
        let fresh = Flow::new(limits, now);
        self.congested = true;
        self.stalled = false;
        self.last_progress = now;
        self.low_water = fresh.low_water;
        self.low_water_bytes = fresh.low_water_bytes;
        self.stall_timeout = fresh.stall_timeout;
        self.action = fresh.action;
    }

    fn wake_waiters(&mut self) {
        for publisher in std::mem::take(&mut self.waiters) {
            publisher.mailbox.wake();
        }
    }
}

/// What `delivery` counts for in a queue's bytes (and the memory budget):
/// its payload and topic.
pub fn size_of(delivery: &Delivery) -> usize {
    delivery.msg.payload.len() + delivery.msg.topic.len()
}

impl DeliveryQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues `deliveries` (QoS 1 and 2; `bytes` together, as [`size_of`]
    /// counts) after what is queued, for a subscriber that is not
    /// connected, when all of them fit the limits and the memory budget is
    /// not pressed: what [`DeliveryQueue::offer`] would do with each, at
    /// once. Gives them back otherwise (none queued).
    pub fn offer_all(
        &mut self,
        deliveries: VecDeque<Delivery>,
        bytes: usize,
        limits: &QueueLimits,
        budget: &MemoryBudget,
    ) -> Result<(), VecDeque<Delivery>> {
        let fits = budget.level() == Level::Normal
            && self.items.len() + deliveries.len() <= limits.max_messages as usize
            && (limits.max_bytes == 0 || self.bytes + bytes <= limits.max_bytes as usize);
        debug_assert!(deliveries.iter().all(|d| d.qos != QoS::AtMostOnce));
        if !fits {
            return Err(deliveries);
        }
        self.bytes += bytes;
        budget.add(bytes);
        if self.items.is_empty() {
            self.items = deliveries;
        } else {
            self.items.extend(deliveries);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Payload and topic bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    /// Offers a delivery. `online`: a connection is attached.
    /// `publisher`: the client whose PUBLISH this is, when it can be
    /// paused (not the broker's own messages, nor a client's messages to
    /// itself).
    pub fn offer(
        &mut self,
        delivery: Delivery,
        limits: &QueueLimits,
        online: bool,
        publisher: Option<&Arc<ClientHandle>>,
        budget: &MemoryBudget,
    ) -> Enqueued {
        if delivery.qos == QoS::AtMostOnce && !online {
            return Enqueued::Dropped(DropReason::Offline);
        }
        let pressed = match budget.level() {
            Level::Full => return Enqueued::Dropped(DropReason::MemoryBudget),
            Level::Pressed if !online => return Enqueued::Dropped(DropReason::MemoryBudget),
            Level::Pressed => true,
            Level::Normal => false,
        };
        // Under memory pressure, connected subscribers hold their
        // publishers back sooner.
        let limits = &if pressed { limits.pressed() } else { *limits };
        let size = size_of(&delivery);
        if online && self.above_mark(limits) {
            if self.flow.as_ref().is_some_and(|f| f.stalled) {
                return Enqueued::Dropped(DropReason::SlowSubscriber);
            }
            if let Some(publisher) = publisher {
                self.push(delivery, size, budget);
                let flow = self
                    .flow
                    .get_or_insert_with(|| Box::new(Flow::new(limits, Instant::now())));
                if !flow.congested {
                    flow.begin_congestion(limits, Instant::now());
                }
                if !flow.waiters.iter().any(|w| Arc::ptr_eq(w, publisher)) {
                    flow.waiters.push(publisher.clone());
                }
                return Enqueued::QueuedPause;
            }
        }
        if online && publisher.is_some() {
            // Under the mark, a connected subscriber takes what it is sent.
            self.push(delivery, size, budget);
            return Enqueued::Queued;
        }
        // Offline, or a message nobody can be paused for: the queue limits.
        let full = |q: &DeliveryQueue| {
            q.items.len() >= limits.max_messages as usize
                || (limits.max_bytes > 0 && q.bytes + size > limits.max_bytes as usize)
        };
        let mut dropped_seq = None;
        if full(self) {
            match limits.policy {
                QueueFullPolicy::DropNew => return Enqueued::Dropped(DropReason::QueueFull),
                QueueFullPolicy::DropOldest => {
                    let Some(old) = self.items.pop_front() else {
                        return Enqueued::Dropped(DropReason::QueueFull);
                    };
                    let old_size = size_of(&old);
                    self.bytes -= old_size;
                    budget.remove(old_size);
                    dropped_seq = Some(old.seq);
                    if full(self) {
                        return Enqueued::Dropped(DropReason::QueueFull);
                    }
                }
            }
        }
        self.push(delivery, size, budget);
        match dropped_seq {
            Some(seq) => Enqueued::QueuedDroppedOldest(seq),
            None => Enqueued::Queued,
        }
    }

    fn above_mark(&self, limits: &QueueLimits) -> bool {
        self.items.len() >= limits.high_water as usize
            || self.bytes >= limits.high_water_bytes as usize
    }

    fn push(&mut self, delivery: Delivery, size: usize, budget: &MemoryBudget) {
        self.bytes += size;
        budget.add(size);
        self.items.push_back(delivery);
    }

    /// Takes the first delivery: the subscriber made progress. Publishers
    /// waiting on this queue are woken once it is under its low-water mark.
    pub fn pop(&mut self, now: Instant, budget: &MemoryBudget) -> Option<Delivery> {
        let delivery = self.items.pop_front()?;
        let size = size_of(&delivery);
        self.bytes -= size;
        budget.remove(size);
        if let Some(flow) = self.flow.as_deref_mut().filter(|f| f.congested) {
            flow.last_progress = now;
            if self.items.len() <= flow.low_water && self.bytes <= flow.low_water_bytes {
                flow.congested = false;
                flow.stalled = false;
                flow.wake_waiters();
            }
        }
        Some(delivery)
    }

    /// Appends a delivery recovered from the store (no limits: it was
    /// accepted before the restart).
    pub fn restore(&mut self, delivery: Delivery, budget: &MemoryBudget) {
        let size = size_of(&delivery);
        self.push(delivery, size, budget);
    }

    /// Forgets every delivery.
    pub fn clear(&mut self, budget: &MemoryBudget) {
        budget.remove(self.bytes);
        self.items.clear();
        self.bytes = 0;
        self.release_publishers();
    }

    /// Takes out, in order, the deliveries `take` selects.
    pub fn take_where(
        &mut self,
        take: impl Fn(&Delivery) -> bool,
        budget: &MemoryBudget,
    ) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.items.len());
        for delivery in self.items.drain(..) {
            if take(&delivery) {
                let size = size_of(&delivery);
                self.bytes -= size;
                budget.remove(size);
                taken.push(delivery);
            } else {
                kept.push_back(delivery);
            }
        }
        self.items = kept;
        taken
    }

    /// The connection changed (attached or gone): no publisher waits for
    /// this queue any more, and a new connection starts unjudged.
    pub fn release_publishers(&mut self) {
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.congested = false;
            flow.stalled = false;
            flow.wake_waiters();
        }
    }

    /// For a publisher paused on this queue: whether it must go on
    /// waiting (and then it is registered to be woken).
    pub fn hold(&mut self, publisher: &Arc<ClientHandle>, now: Instant) -> Congestion {
        let Some(flow) = self.flow.as_deref_mut() else {
            return Congestion::Released;
        };
        if !flow.congested || flow.stalled {
            return Congestion::Released;
        }
        let stall_deadline = flow.last_progress + flow.stall_timeout;
        if now >= stall_deadline {
            flow.stalled = true;
            flow.wake_waiters();
            return Congestion::Stalled(Stall {
                action: flow.action,
                queued: self.items.len(),
                idle: now.saturating_duration_since(flow.last_progress),
            });
        }
        if !flow.waiters.iter().any(|w| Arc::ptr_eq(w, publisher)) {
            flow.waiters.push(publisher.clone());
        }
        Congestion::Holding { stall_deadline }
    }

    /// Counts a dropped delivery; returns the count when a log line is due
    /// (the first drop, then at most one per [`DROP_LOG_INTERVAL`]).
    pub fn note_drop(&mut self, now: Instant, limits: &QueueLimits) -> Option<u64> {
        let flow = self
            .flow
            .get_or_insert_with(|| Box::new(Flow::new(limits, now)));
        flow.dropped += 1;
        let due = flow
            .drop_logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DROP_LOG_INTERVAL);
        if due {
            flow.drop_logged_at = Some(now);
        }
        due.then_some(flow.dropped)
    }

    /// Deliveries dropped for this session so far.
    pub fn dropped(&self) -> u64 {
        self.flow.as_ref().map_or(0, |f| f.dropped)
    }

    pub fn status(&self) -> FlowStatus {
        match self.flow.as_deref() {
            Some(f) if f.stalled => FlowStatus::Stalled,
            Some(f) if f.congested => FlowStatus::Congested,
            _ => FlowStatus::Flowing,
        }
    }
}

#[cfg(test)]
mod tests;
