//! QoS 1/2 messages between their plan and their storing, by the
//! interest-bucket revision the plan was made with.
//!
//! A node that handed a session off asks every other node whether it has
//! applied the move (a ping naming the bucket revision, see
//! [`super::Cluster::others_applied_interest`]) and then reads its own route
//! stream up to its end, before it stops following the session. A node
//! that planned a message before it applied the move could still be
//! sending it to the old node's stream at that moment, where it would
//! arrive after the old node stopped following: lost. So a node answers
//! such a ping only once no message it planned before that revision is
//! still on its way into a stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Messages planned and not yet stored, counted per revision.
///
/// The counts are kept oldest revision first: plans are made with the
/// newest revision the table applied, so a new count goes at the back (or
/// adds to it) and the queue, a few entries long, never reallocates once
/// warm: a plan costs two short critical sections, nothing more.
#[derive(Default)]
pub struct PlansInFlight {
    counts: Mutex<VecDeque<(u64, usize)>>,
    settled: Notify,
    /// Pings waiting in [`PlansInFlight::settled_before`]: a plan that
    /// ends wakes them only when there are any (most never see one).
    waiting: AtomicUsize,
}

/// One message's plan, from before it was made until what it sent is
/// stored (or given up): drop it then.
pub struct PlanGuard {
    plans: Arc<PlansInFlight>,
    revision: u64,
}

impl std::fmt::Debug for PlanGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlanGuard(revision {})", self.revision)
    }
}

impl PlansInFlight {
    /// A plan is about to be made with the table as of `applied` (the
    /// revision the table has applied). Reading the revision under the
    /// lock makes [`PlansInFlight::settled_before`] exact: a plan counted
    /// after it looked saw the newer table.
    pub fn begin(self: &Arc<Self>, applied: &AtomicU64) -> PlanGuard {
        let mut counts = self.counts.lock();
        let revision = applied.load(Ordering::Acquire);
        match counts.iter().rposition(|&(r, _)| r <= revision) {
            Some(i) if counts[i].0 == revision => counts[i].1 += 1,
            Some(i) => counts.insert(i + 1, (revision, 1)),
            None => counts.push_front((revision, 1)),
        }
        PlanGuard {
            plans: self.clone(),
            revision,
        }
    }

    /// Whether no message planned with a revision older than `revision`
    /// is still in flight.
    fn is_settled_before(&self, revision: u64) -> bool {
        self.counts
            .lock()
            .front()
            .is_none_or(|&(oldest, _)| oldest >= revision)
    }

    /// Waits until [`PlansInFlight::is_settled_before`] `revision`, or
    /// `deadline`; false when the deadline came first.
    pub async fn settled_before(&self, revision: u64, deadline: tokio::time::Instant) -> bool {
        // Counted before the first look, which takes the lock a plan
        // ending takes too: that plan then sees the count.
        let _waiting = Waiting::count(&self.waiting);
        loop {
            let settled = self.settled.notified();
            if self.is_settled_before(revision) {
                return true;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return false;
            }
        }
    }
}

/// One ping waiting, for as long as it waits (dropped with its future).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for PlanGuard {
    fn drop(&mut self) {
        let mut counts = self.plans.counts.lock();
        let Some(i) = counts.iter().rposition(|&(r, _)| r == self.revision) else {
            return;
        };
        counts[i].1 -= 1;
        if counts[i].1 == 0 {
            counts.remove(i);
            // Only the oldest revision's plans going can settle a wait.
            let wake = i == 0 && self.plans.waiting.load(Ordering::SeqCst) > 0;
            drop(counts);
            if wake {
                self.plans.settled.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn a_ping_waits_for_the_plans_made_before_its_revision_only() {
        let plans = Arc::new(PlansInFlight::default());
        let applied = AtomicU64::new(3);
        let old = plans.begin(&applied);
        applied.store(5, Ordering::Release);
        let new = plans.begin(&applied);
        assert!(
            !plans.settled_before(5, soon()).await,
            "a plan of revision 3 is in flight"
        );
        assert!(plans.settled_before(3, soon()).await, "none older than 3");
        let waiter = tokio::spawn({
            let plans = plans.clone();
            async move {
                plans
                    .settled_before(5, tokio::time::Instant::now() + Duration::from_secs(5))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(old);
        assert!(waiter.await.unwrap(), "woken when the old plan is stored");
        // Plans of the revision asked about, or newer, are not waited for.
        assert!(plans.settled_before(5, soon()).await);
        drop(new);
        assert!(plans.counts.lock().is_empty());
    }

    #[test]
    fn counts_stay_oldest_first_even_when_the_revision_goes_back() {
        let plans = Arc::new(PlansInFlight::default());
        let applied = AtomicU64::new(3);
        let three = plans.begin(&applied);
        applied.store(5, Ordering::Release);
        let five = plans.begin(&applied);
        // The table was rebuilt from an older revision.
        applied.store(4, Ordering::Release);
        let four = plans.begin(&applied);
        let revisions: Vec<u64> = plans.counts.lock().iter().map(|&(r, _)| r).collect();
        assert_eq!(revisions, vec![3, 4, 5]);
        drop(three);
        assert!(plans.is_settled_before(4));
        assert!(!plans.is_settled_before(5), "revision 4 is in flight");
        drop(four);
        assert!(plans.is_settled_before(5));
        drop(five);
        assert!(plans.counts.lock().is_empty());
    }

    #[test]
    fn plans_of_one_revision_are_counted() {
        let plans = Arc::new(PlansInFlight::default());
        let applied = AtomicU64::new(7);
        let first = plans.begin(&applied);
        let second = plans.begin(&applied);
        drop(first);
        assert!(!plans.is_settled_before(8));
        drop(second);
        assert!(plans.is_settled_before(8));
    }
}
