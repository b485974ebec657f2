//! Keep-alive deadlines of every connection on one timer.
//!
//! A timer of its own (`tokio::time::Sleep`, 112 bytes) in every
//! connection's task is a large part of what an idle connection costs.
//! Instead, a connection with a keep-alive registers its deadline here; one
//! task wakes once a second and tells the connections whose deadline has
//! come, through their mailbox ([`crate::client::Mailbox`]). A woken
//! connection looks at its own last activity and either closes (silent for
//! too long) or registers its next deadline. So each connection has one
//! registration at a time, a busy connection is woken once per keep-alive
//! period, and a tick costs only the connections due at it, never a pass
//! over all of them.
//!
//! Deadlines are rounded up to whole ticks: a silent client is closed at
//! most one tick (1 s) after its deadline, never before it. (mosquitto
//! checks keep-alives in whole seconds too.)

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::client::ClientHandle;

/// How often the wheel turns.
const TICK: Duration = Duration::from_secs(1);

/// Keep-alive deadlines, in buckets of one tick.
pub struct KeepAliveWheel {
    shared: Arc<Shared>,
}

/// Where a connection is registered, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    tick: u64,
}

struct Shared {
    /// Tick 0; tick n ends at `epoch + n × tick`.
    epoch: Instant,
    tick: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The connections to wake at the end of each tick.
    due: BTreeMap<u64, HashSet<Waiter, ahash::RandomState>>,
    /// Whether the task that turns the wheel runs. It stops when no
    /// connection is registered and starts again with the next one.
    turning: bool,
}

/// A registered connection, identified by its handle's address.
struct Waiter(Arc<ClientHandle>);

impl PartialEq for Waiter {
    fn eq(&self, other: &Waiter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Waiter {}

impl Hash for Waiter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

impl Default for KeepAliveWheel {
    fn default() -> KeepAliveWheel {
        KeepAliveWheel::with_tick(TICK)
    }
}

impl KeepAliveWheel {
    fn with_tick(tick: Duration) -> KeepAliveWheel {
        KeepAliveWheel {
            shared: Arc::new(Shared {
                epoch: Instant::now(),
                tick,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Wakes the connection of `client` (its mailbox's
    /// [`keep_alive_due`](crate::client::Mailbox::keep_alive_due)) once
    /// `deadline` has passed (at the end of the tick it falls in). A connection keeps
    /// one registration at a time: it registers again when woken, if it
    /// stays open. Must be called within a tokio runtime (the first
    /// registration starts the wheel's task).
    pub fn register(&self, deadline: Instant, client: &Arc<ClientHandle>) -> Registration {
        let shared = &self.shared;
        let tick = shared.ticks_until(deadline);
        let mut state = shared.state.lock();
        state
            .due
            .entry(tick)
            .or_default()
            .insert(Waiter(client.clone()));
        if !state.turning {
            state.turning = true;
            tokio::spawn(turn(Arc::downgrade(shared)));
        }
        Registration { tick }
    }

    /// Forgets a registration (the connection is closing), so the wheel
    /// does not keep the client's handle until the deadline. Nothing
    /// happens when the registration has already fired.
    pub fn cancel(&self, registration: Registration, client: &Arc<ClientHandle>) {
        let mut state = self.shared.state.lock();
        let waiter = Waiter(client.clone());
        if let Some(bucket) = state.due.get_mut(&registration.tick) {
            bucket.remove(&waiter);
            if bucket.is_empty() {
                state.due.remove(&registration.tick);
            }
        }
    }
}

impl Shared {
    /// The tick that `deadline` falls in (whole ticks since the epoch,
    /// rounded up).
    fn ticks_until(&self, deadline: Instant) -> u64 {
        let nanos = deadline.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos.div_ceil(self.tick.as_nanos())).unwrap_or(u64::MAX)
    }

    /// Whole ticks elapsed since the epoch (rounded down).
    fn ticks_elapsed(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos / self.tick.as_nanos()).unwrap_or(u64::MAX)
    }

    /// When the current tick ends (None past the end of time).
    fn next_end(&self) -> Option<Instant> {
        let next = self.ticks_elapsed(Instant::now()).checked_add(1)?;
        let offset = self.tick.checked_mul(u32::try_from(next).ok()?)?;
        self.epoch.checked_add(offset)
    }

    /// Takes the buckets whose tick has ended; marks the wheel stopped
    /// when nothing else is registered. Returns what to wake and whether
    /// to go on turning.
    fn take_due(&self, now: Instant) -> (Vec<HashSet<Waiter, ahash::RandomState>>, bool) {
        let elapsed = self.ticks_elapsed(now);
        let mut state = self.state.lock();
        let later = state.due.split_off(&elapsed.saturating_add(1));
        let due = std::mem::replace(&mut state.due, later);
        state.turning = !state.due.is_empty();
        (due.into_values().collect(), state.turning)
    }
}

/// The wheel's task: at the end of every tick, wakes the connections due.
/// Holds the wheel weakly, so that it ends with the broker.
async fn turn(shared: Weak<Shared>) {
    loop {
        let Some(next_end) = shared.upgrade().and_then(|shared| shared.next_end()) else {
            return;
        };
        tokio::time::sleep_until(next_end.into()).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Woken outside the lock: registering again needs it.
        let (due, turning) = shared.take_due(Instant::now());
        for waiter in due.into_iter().flatten() {
            waiter.0.mailbox.keep_alive_due();
        }
        if !turning {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT_TICK: Duration = Duration::from_millis(20);
    /// Far longer than any tick, for a machine under load.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn client() -> Arc<ClientHandle> {
        Arc::new(ClientHandle::for_tests())
    }

    async fn woken(client: &ClientHandle) -> Instant {
        let start = Instant::now();
        while !client.mailbox.take_keep_alive_due() {
            assert!(start.elapsed() < PATIENCE, "never woken");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Instant::now()
    }

    #[test]
    fn deadlines_round_up_to_the_end_of_their_tick() {
        let wheel = KeepAliveWheel::with_tick(Duration::from_secs(1));
        let shared = &wheel.shared;
        let at = |millis| shared.epoch + Duration::from_millis(millis);
        assert_eq!(shared.ticks_until(at(0)), 0);
        assert_eq!(shared.ticks_until(at(1)), 1);
        assert_eq!(shared.ticks_until(at(1000)), 1);
        assert_eq!(shared.ticks_until(at(1001)), 2);
        assert_eq!(shared.ticks_elapsed(at(999)), 0);
        assert_eq!(shared.ticks_elapsed(at(1000)), 1);
    }

    #[test]
    fn a_tick_takes_only_the_buckets_that_are_due() {
        let wheel = KeepAliveWheel::with_tick(Duration::from_secs(1));
        let shared = &wheel.shared;
        let clients: Vec<Arc<ClientHandle>> = (0..3).map(|_| client()).collect();
        {
            let mut state = shared.state.lock();
            for (tick, client) in [1, 2, 2].into_iter().zip(&clients) {
                state
                    .due
                    .entry(tick)
                    .or_default()
                    .insert(Waiter(client.clone()));
            }
        }
        let (due, turning) = shared.take_due(shared.epoch + Duration::from_millis(1500));
        assert_eq!(due.iter().map(HashSet::len).sum::<usize>(), 1);
        assert!(due[0].contains(&Waiter(clients[0].clone())));
        assert!(turning, "tick 2 is still registered");
        let (due, turning) = shared.take_due(shared.epoch + Duration::from_secs(2));
        assert_eq!(due.iter().map(HashSet::len).sum::<usize>(), 2);
        assert!(!turning, "nothing left: the task stops");
    }

    #[tokio::test]
    async fn a_connection_is_woken_after_its_deadline_and_not_before() {
        let wheel = KeepAliveWheel::with_tick(SHORT_TICK);
        let client = client();
        let deadline = Instant::now() + Duration::from_millis(50);
        wheel.register(deadline, &client);
        let at = woken(&client).await;
        assert!(at >= deadline, "woken {:?} early", deadline - at);
        // Woken once per registration.
        tokio::time::sleep(SHORT_TICK * 3).await;
        assert!(!client.mailbox.take_keep_alive_due());
    }

    #[tokio::test]
    async fn registering_again_after_the_wheel_stopped_starts_it_again() {
        let wheel = KeepAliveWheel::with_tick(SHORT_TICK);
        let client = client();
        wheel.register(Instant::now(), &client);
        woken(&client).await;
        tokio::time::sleep(SHORT_TICK * 3).await;
        assert!(!wheel.shared.state.lock().turning, "stopped when empty");
        let deadline = Instant::now() + SHORT_TICK;
        wheel.register(deadline, &client);
        assert!(woken(&client).await >= deadline);
    }

    #[tokio::test]
    async fn a_cancelled_registration_is_not_woken_and_not_kept() {
        let wheel = KeepAliveWheel::with_tick(SHORT_TICK);
        let cancelled = client();
        let kept = client();
        let deadline = Instant::now() + SHORT_TICK * 2;
        let registration = wheel.register(deadline, &cancelled);
        wheel.register(deadline, &kept);
        wheel.cancel(registration, &cancelled);
        assert_eq!(Arc::strong_count(&cancelled), 1, "the wheel let go");
        woken(&kept).await;
        assert!(!cancelled.mailbox.take_keep_alive_due());
        // Cancelling after the registration fired changes nothing.
        wheel.cancel(registration, &cancelled);
        assert!(wheel.shared.state.lock().due.is_empty());
    }
}
