//! What reaches a persistent session's queue in the cluster after this
//! node loaded it ([`Broker::load_from_cluster`]): messages other nodes
//! still wrote there before they saw that this node has the client, and
//! what the node it left still forwards until it says it is done.
//!
//! Each message there was acknowledged to its publisher, so none is left
//! behind while the client is online here: every NATS call of the
//! hand-over is tried again (with a growing pause) until it works or the
//! session is no longer this node's (the node that has it then reads the
//! rest).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::backoff::Backoff;
use crate::cluster::clients::LateRelease;
use crate::cluster::queue::{LoadedSession, QueueTail};
use crate::cluster::sessions::{HANDOVER_GRACE, LATE_WRITE_WINDOW};
use crate::cluster::{Cluster, ClusterError};
use crate::queue::QueueLimits;
use crate::router::SubscriptionTable;
use crate::session::Session;

use super::Broker;

/// How long the node a client went to reads what the previous node
/// forwards, at most (a little more than that node may take).
const FORWARDING_WAIT: Duration = Duration::from_secs(60);

/// When the queue is looked at again after the first read (which comes
/// [`HANDOVER_GRACE`] after the session interest went), counted from when
/// it went: the last one after [`LATE_WRITE_WINDOW`]. A look that finds
/// nothing new costs one request.
const LATE_LOOKS: [Duration; 2] = [Duration::from_secs(8), LATE_WRITE_WINDOW];

/// How long the follow-up of a load waits, at most, for the client to
/// take what was loaded ([`Broker::loaded_backlog_taken`]).
const BACKLOG_WAIT: Duration = Duration::from_secs(1);

/// How often that wait looks at the session.
const BACKLOG_LOOK_EVERY: Duration = Duration::from_millis(2);

/// The first pause before a failed NATS call of the hand-over is tried
/// again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A session being loaded from the cluster, for the follow-up passes.
pub(super) struct Loading {
    pub cluster: Arc<Cluster>,
    pub session: Arc<Session>,
    /// Claimed without a word to NATS: the revision of the client's entry
    /// to check ([`crate::cluster::clients::Claimed::unconfirmed`]).
    pub unconfirmed: Option<u64>,
    /// Its subscriptions, to give queued messages their QoS and flags.
    pub matcher: SubscriptionTable<u8>,
    /// Cluster ids of the messages it has.
    pub seen: HashSet<u64>,
    /// Its number in [`crate::cluster::handover::Given`].
    pub handover: u64,
    /// The queue's stream sequence read up to.
    pub read_up_to: u64,
    /// It was loaded from this node's copy of its queue alone: what the
    /// queue holds beyond `read_up_to` is still to be read.
    pub tail_unread: bool,
    pub limits: QueueLimits,
    /// The previous node (`<node>/<run>`), until it has said it stopped
    /// forwarding.
    pub previous: Option<String>,
    /// The filters of the record it was loaded with (its session interest
    /// in the cluster).
    pub filters: Vec<String>,
}

/// Counts the failed attempts at one step of the hand-over, logs the
/// first failure and the recovery.
struct Attempts<'a> {
    broker: &'a Broker,
    /// What the step does, for the log ("read the queue of c1").
    what: String,
    failures: u32,
    backoff: Backoff,
}

impl<'a> Attempts<'a> {
    fn new(broker: &'a Broker, what: String) -> Attempts<'a> {
        Attempts {
            broker,
            what,
            failures: 0,
            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
        }
    }

    /// Notes a failure and waits before the next attempt; false (no
    /// waiting) when the session is no longer this node's.
    async fn failed(&mut self, loading: &Loading, e: &ClusterError) -> bool {
        self.failures += 1;
        if self.failures == 1 {
            self.broker.logger.warning(&format!(
                "Cluster: cannot {} yet: {e}; trying again until it works.",
                self.what
            ));
        }
        if !self.broker.holds_loaded(loading, |_| ()).await {
            self.broker.logger.info(&format!(
                "Cluster: stopped trying to {}: the client moved on.",
                self.what
            ));
            return false;
        }
        self.backoff.wait().await;
        true
    }

    /// Runs `op` until it succeeds (its value), or until the session is
    /// no longer this node's (`None`).
    async fn retry<T, F, Fut>(&mut self, loading: &Loading, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        loop {
            match op().await {
                Ok(value) => {
                    self.succeeded();
                    return Some(value);
                }
                Err(e) => {
                    if !self.failed(loading, &e).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Notes a success: logs the recovery after failures, and the next
    /// failure starts afresh.
    fn succeeded(&mut self) {
        if self.failures > 0 {
            self.broker.logger.info(&format!(
                "Cluster: could {} after {} failed attempt(s).",
                self.what, self.failures
            ));
            self.failures = 0;
            self.backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        }
    }
}

impl Broker {
    /// The follow-up of [`Broker::load_from_cluster`]: the session
    /// interest gives way to this node's; after [`HANDOVER_GRACE`], what
    /// other nodes queued meanwhile joins the session; then, when the
    /// previous node may still forward messages to it, its late hand-over
    /// and what it forwards until it says it is done; and a last look or
    /// two at the queue until [`LATE_WRITE_WINDOW`] has passed.
    pub(super) async fn finish_loading(
        self: Arc<Self>,
        mut loading: Loading,
        late: Option<LateRelease>,
    ) {
        Self::loaded_backlog_taken(&loading.session).await;
        loading.cluster.interest().release_held(&loading.filters);
        self.follow_up(&mut loading, late).await;
        // A message another node both queued for the session and routed
        // here (it had not yet seen the session interest go) may still be
        // on its way through the route stream, held up by JetStream, when
        // its copy from the queue was given: the hand-over, which leaves
        // out the second copy, lasts until what was routed here is
        // delivered.
        if !loading.cluster.routed_caught_up(FORWARDING_WAIT).await {
            self.logger.warning(&format!(
                "Cluster: messages routed here while {} came back are still on their way after {} s; one it got from its queue may reach it twice.",
                loading.session.client_id,
                FORWARDING_WAIT.as_secs()
            ));
        }
        loading
            .cluster
            .given()
            .end(&loading.session.client_id, loading.handover);
    }

    /// Resolves once the client has taken what was loaded (the session's
    /// queue and in-flight window are empty: a session handed off again
    /// has emptied them too), or after [`BACKLOG_WAIT`]. The follow-up's JetStream work (a consumer on the
    /// queue, interest and purge writes, each replicated on every
    /// nats-server) waits for it: where the nats-servers share the
    /// broker's CPUs, that work would hold up the delivery of the backlog
    /// (a 10,000-message catch-up took twice as long). Meanwhile other
    /// nodes keep queueing the client's new messages in the cluster, which
    /// the follow-up reads: they come after the backlog all the same.
    async fn loaded_backlog_taken(session: &Session) {
        let deadline = tokio::time::Instant::now() + BACKLOG_WAIT;
        loop {
            let taken = {
                let state = session.state.lock();
                state.queue.is_empty() && state.inflight.is_empty()
            };
            if taken || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(BACKLOG_LOOK_EVERY).await;
        }
    }

    /// The passes of [`Broker::finish_loading`], until the last one or
    /// until the session is no longer this node's.
    async fn follow_up(&self, loading: &mut Loading, late: Option<LateRelease>) {
        if let Some(revision) = loading.unconfirmed.take() {
            if !self.claim_confirmed(loading, revision).await {
                return;
            }
        }
        // Loaded from this node's copy alone: what the queue holds beyond
        // it goes after the copy's entries, before the session interest
        // gives way (a message routed here while it is read can come
        // before it: docs/clustering.md, "Known limits"). Removed from the
        // queue with the late writes.
        if std::mem::take(&mut loading.tail_unread)
            && self.take_late_writes(loading, false).await.is_none()
        {
            return;
        }
        if !self.give_up_session_interest(loading).await {
            return;
        }
        self.logger.info(&format!(
            "Session of {}: the other nodes now route its messages here.",
            loading.session.client_id
        ));
        let interest_gone = tokio::time::Instant::now();
        tokio::time::sleep(HANDOVER_GRACE).await;
        let Some(ended) = self.take_late_writes(loading, true).await else {
            return;
        };
        if let Some(late) = late {
            late.await;
            if !self.after_late_hand_off(loading).await {
                return;
            }
        }
        if let Some(previous) = loading.previous.take() {
            if ended.contains(&previous) {
                self.logger.info(&format!(
                    "Session of {}: what node {previous} forwarded came with the rest (it is done).",
                    loading.session.client_id
                ));
            } else if !self.follow_forwarding(loading, &previous).await {
                return;
            }
        }
        for look in LATE_LOOKS {
            tokio::time::sleep_until(interest_gone + look).await;
            let last = loading
                .cluster
                .queue_last_seq(&loading.session.client_id)
                .await;
            if last.is_ok_and(|last| last <= loading.read_up_to) {
                continue;
            }
            // Something new, or no answer: read (which tries until it can).
            if self.take_late_writes(loading, true).await.is_none() {
                return;
            }
        }
    }

    /// Checks a claim made without a word to NATS: the client's entry is
    /// still the one this node wrote as it kept the client's offline
    /// session (at `revision`). Then the session's record says it is
    /// connected (written only now, so as not to hold up the delivery).
    /// Otherwise another node claimed the client without asking this one
    /// (it took this node for gone, or this node answered too late): the
    /// session here is not the client's any more; it ends here, nothing of
    /// it written to the cluster, and the connection is closed (5.0:
    /// 0x8E). Returns whether the session goes on here.
    async fn claim_confirmed(&self, loading: &Loading, revision: u64) -> bool {
        let client_id = loading.session.client_id.clone();
        let mut attempts = Attempts::new(
            self,
            format!("check that client {client_id} is still this node's"),
        );
        let held = attempts
            .retry(loading, || {
                loading.cluster.still_held_here(&client_id, revision)
            })
            .await;
        match held {
            Some(true) => {
                self.holds_loaded(loading, |session| {
                    if session.is_online() {
                        self.save_session_in_cluster(session);
                    }
                })
                .await
            }
            Some(false) => {
                let ended = self
                    .holds_loaded(loading, |session| {
                        let mut ignored = Vec::new();
                        self.remove_session(session, &mut ignored);
                    })
                    .await;
                if ended {
                    self.logger.warning(&format!(
                        "Client {client_id} was claimed by another node while it came back here on this node's copy of its session; the session here ends (what it got here may reach it again there)."
                    ));
                    let (tx, _) = tokio::sync::oneshot::channel();
                    loading
                        .session
                        .send_control(crate::client::Control::TakenOver(tx));
                }
                false
            }
            None => false,
        }
    }

    /// The previous node handed the session off late, after this node had
    /// loaded it: that hand-off wrote the session interest again (so other
    /// nodes would queue the client's messages in the cluster for good)
    /// and an offline session record (which expiry would act on). Both
    /// give way to this node's again. Returns false when the session is no
    /// longer this node's.
    async fn after_late_hand_off(&self, loading: &mut Loading) -> bool {
        // The hand-off wrote one key per filter of the session it had; the
        // filters the client has here cover what it subscribed since.
        let current: Vec<String> = loading
            .session
            .state
            .lock()
            .subscriptions
            .keys()
            .cloned()
            .collect();
        for filter in current {
            if !loading.filters.contains(&filter) {
                loading.filters.push(filter);
            }
        }
        if !self.give_up_session_interest(loading).await {
            return false;
        }
        self.save_session_in_cluster(&loading.session);
        self.logger.info(&format!(
            "Session of {}: its late hand-off is undone (the other nodes route its messages here).",
            loading.session.client_id
        ));
        true
    }

    /// Removes the session interest the client's last hand-off wrote, once
    /// this node's own interest is in the bucket, so other nodes route to
    /// this node instead of the queue. Returns false when the session is no
    /// longer this node's (then the interest stays for the node that has
    /// it).
    async fn give_up_session_interest(&self, loading: &Loading) -> bool {
        let client_id = &loading.session.client_id;
        let mut attempts = Attempts::new(self, format!("remove the session interest of {client_id} (other nodes queue its messages in the cluster meanwhile)"));
        let removed = attempts
            .retry(loading, || async {
                let written = loading.cluster.interest_written_revision().await?;
                if !self.holds_loaded(loading, |_| ()).await {
                    return Ok(false);
                }
                loading
                    .cluster
                    .remove_session_interest_up_to(client_id, &loading.filters, written)
                    .await?;
                Ok(true)
            })
            .await;
        removed == Some(true)
    }

    /// Reads what was written into the session's queue after
    /// `loading.read_up_to` into the session, then, with `remove`, removes
    /// it from the queue (and everything the session read before). Returns
    /// the forwarding ends read, or `None` when the session is no longer
    /// this node's (what was read stays for the node that has it).
    async fn take_late_writes(&self, loading: &mut Loading, remove: bool) -> Option<Vec<String>> {
        let client_id = loading.session.client_id.clone();
        let mut late = LoadedSession::default();
        let mut attempts = Attempts::new(
            self,
            format!("read what was written to the queue of {client_id} while it moved"),
        );
        loop {
            let read = loading
                .cluster
                .read_late(&client_id, &mut loading.seen, &mut late, loading.read_up_to)
                .await;
            match read {
                Ok(()) => break,
                Err(e) => {
                    if !attempts.failed(loading, &e).await {
                        return None;
                    }
                }
            }
        }
        attempts.succeeded();
        let read_up_to = late.last_seq;
        let written = late.entries.len();
        let kept = self
            .holds_loaded(loading, |session| {
                loading.cluster.note_consumed(&session.client_id, read_up_to);
                if written > 0 {
                    let restored = self.restore_entries(
                        session,
                        &loading.matcher,
                        late.entries,
                        &loading.limits,
                    );
                    self.logger.info(&format!(
                        "Session of {client_id}: {written} message(s) written to its queue while it moved ({restored})."
                    ));
                }
            })
            .await;
        if !kept || (remove && !self.remove_consumed(loading).await) {
            return None;
        }
        loading.read_up_to = read_up_to;
        Some(late.forwarding_ended)
    }

    /// Reads what node `previous` (`<node>/<run>`) still forwards into the
    /// session's queue, into the session, until that node says it is done
    /// ([`Broker::finish_forwarding`]), dies, or [`FORWARDING_WAIT`]
    /// passes. Returns false when the client moved on meanwhile (the next
    /// node reads the rest).
    async fn follow_forwarding(&self, loading: &mut Loading, previous: &str) -> bool {
        let client_id = loading.session.client_id.clone();
        let deadline = tokio::time::Instant::now() + FORWARDING_WAIT;
        let mut attempts = Attempts::new(
            self,
            format!("follow what node {previous} still forwards to {client_id}"),
        );
        let mut tail: Option<QueueTail> = None;
        // Where a tail made again (after a failure) starts.
        let mut followed_up_to = loading.read_up_to;
        let mut read = 0;
        let mut ended = false;
        let mut kept = true;
        while tokio::time::Instant::now() < deadline {
            let next = match &mut tail {
                Some(tail) => tail.next(&mut loading.seen, &self.logger).await,
                None => match loading
                    .cluster
                    .tail_queue(&client_id, followed_up_to, previous.to_string())
                    .await
                {
                    Ok(new) => {
                        tail = Some(new);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            let entries;
            (entries, ended) = match next {
                Ok(next) => next,
                Err(e) => {
                    // Its consumer may be gone with a server: a new one
                    // goes on from where this one got.
                    if let Some(tail) = tail.take() {
                        followed_up_to = followed_up_to.max(tail.last_seq);
                    }
                    kept = attempts.failed(loading, &e).await;
                    if !kept {
                        break;
                    }
                    continue;
                }
            };
            attempts.succeeded();
            read += entries.len();
            let tail_read_up_to = tail.as_ref().map_or(0, |tail| tail.last_seq);
            kept = self
                .holds_loaded(loading, |session| {
                    loading
                        .cluster
                        .note_consumed(&session.client_id, tail_read_up_to);
                    if !entries.is_empty() {
                        let restored = self.restore_entries(
                            session,
                            &loading.matcher,
                            entries,
                            &loading.limits,
                        );
                        self.logger.info(&format!(
                            "Session of {client_id}: forwarded by node {previous}: {restored}."
                        ));
                    }
                })
                .await;
            if ended || !kept || !loading.cluster.is_holder_alive(previous) {
                break;
            }
        }
        let how = if ended {
            "it is done"
        } else if !kept {
            "the client moved on"
        } else if tokio::time::Instant::now() >= deadline {
            self.logger.warning(&format!(
                "Cluster: node {previous} did not say within {} s that it stopped forwarding to {client_id}; what it writes later is read at the next look or load.",
                FORWARDING_WAIT.as_secs()
            ));
            "it is late"
        } else {
            "it is gone"
        };
        self.logger.info(&format!(
            "Session of {client_id}: {read} message(s) node {previous} forwarded read ({how})."
        ));
        if !kept {
            return false;
        }
        let read_up_to = tail.map_or(followed_up_to, |tail| tail.last_seq.max(followed_up_to));
        loading.read_up_to = loading.read_up_to.max(read_up_to);
        self.remove_consumed(loading).await
    }

    /// Removes from the session's queue what the session now has
    /// ([`Cluster::note_consumed`]), trying until it works or the session
    /// is no longer this node's (its hand-off removes them first). Returns
    /// whether it still is.
    async fn remove_consumed(&self, loading: &Loading) -> bool {
        let client_id = &loading.session.client_id;
        let mut attempts = Attempts::new(
            self,
            format!("remove from the queue of {client_id} what the session has"),
        );
        attempts
            .retry(loading, || loading.cluster.purge_consumed(client_id))
            .await
            .is_some()
    }

    /// Runs `then` with the loaded session and returns true when this node
    /// still holds it (not replaced, not handed off again), under the
    /// connect lock so no hand-off runs in between.
    async fn holds_loaded(&self, loading: &Loading, then: impl FnOnce(&Arc<Session>)) -> bool {
        let session = &loading.session;
        let shard = self.shard(&session.client_id);
        let _serial = self.connect_locks[shard].lock().await;
        let current = self
            .session(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(&s, session));
        if !current || loading.cluster.is_forwarding(&session.client_id) {
            return false;
        }
        then(session);
        true
    }
}

#[cfg(test)]
mod tests;
