//! Disconnecting devices when their token expires (JWT fleets with
//! `disconnect_at_expiry`): one timer task for all of them, woken at the
//! earliest deadline. A device that left before its deadline costs nothing
//! but its entry (a weak reference), dropped when the deadline comes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::{ClientHandle, Control};
use crate::codec::ReasonCode;

struct Entry {
    at: Instant,
    client: Weak<ClientHandle>,
    counter: IntCounter,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

#[derive(Default)]
struct Inner {
    deadlines: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Notify,
}

/// The deadlines of connected devices.
#[derive(Default, Clone)]
pub struct ExpiryWatch {
    inner: Arc<Inner>,
    started: Arc<std::sync::atomic::AtomicBool>,
}

impl ExpiryWatch {
    /// Disconnects `client` at `at` (5.0: DISCONNECT 0xA0 Maximum connect
    /// time) and counts it. Call from within the runtime.
    pub fn watch(
        &self,
        at: std::time::SystemTime,
        client: &Arc<ClientHandle>,
        counter: IntCounter,
    ) {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(&self.inner)));
        }
        let mut deadlines = self.inner.deadlines.lock();
        let earliest = deadlines.peek().map(|Reverse(e)| e.at);
        let at = Instant::now() + left;
        deadlines.push(Reverse(Entry {
            at,
            client: Arc::downgrade(client),
            counter,
        }));
        drop(deadlines);
        if earliest.is_none_or(|earliest| at < earliest) {
            self.inner.changed.notify_one();
        }
    }

    /// Deadlines not yet reached (left devices included until then).
    pub fn pending(&self) -> usize {
        self.inner.deadlines.lock().len()
    }
}

async fn run(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let next = inner.deadlines.lock().peek().map(|Reverse(e)| e.at);
        let changed = inner.changed.notified();
        match next {
            Some(at) if at <= Instant::now() => {
                let due = inner.deadlines.lock().pop();
                if let Some(Reverse(entry)) = due {
                    if let Some(client) = entry.client.upgrade() {
                        if client
                            .mailbox
                            .send(Control::Disconnect(ReasonCode::MAXIMUM_CONNECT_TIME))
                        {
                            entry.counter.inc();
                        }
                    }
                }
                continue;
            }
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}
