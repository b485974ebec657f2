//! Which nodes are alive: each node writes its key in the nodes bucket
//! every third of `node_timeout_secs` (the bucket forgets keys older than
//! the timeout). Every node watches the bucket and notes when it saw each
//! key written; a node whose key was not written for the timeout is dead
//! (unless it answers a ping): one survivor (the first to claim each of
//! its clients) publishes the wills of its clients, and its filters leave
//! the interest bucket.
//!
//! Watching, rather than listing the keys at every beat, costs NATS no new
//! consumer per look: listing made one each time, and while JetStream was
//! busy electing leaders a listing could take longer than the timeout, so
//! a dead node went unnoticed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::RwLock;

use crate::broker::Broker;

use super::Cluster;

/// How long a node whose liveness key lapsed has to answer a ping before
/// it is taken for dead.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The nodes seen alive at the last look.
#[derive(Debug, Default)]
pub struct Nodes {
    alive: RwLock<HashSet<Arc<str>>>,
    /// The run of each live node, as its key says (keys written before
    /// runs were recorded say none).
    runs: RwLock<std::collections::HashMap<Arc<str>, u64>>,
    /// When this node's own key was last written (unix milliseconds): a
    /// node that cannot write its own key cannot judge the others.
    own_beat_ms: std::sync::atomic::AtomicU64,
    /// When each node's key was last seen written.
    beats: parking_lot::Mutex<Beats>,
    /// A key of a node not yet taken for alive was seen: judge at once.
    newcomer: tokio::sync::Notify,
}

/// When each node's key was last seen written, by this node's clock.
#[derive(Debug, Default)]
struct Beats {
    seen: HashMap<Arc<str>, Instant>,
}

impl Beats {
    /// `node`'s key was written at `at` (never moves back in time).
    fn saw(&mut self, node: Arc<str>, at: Instant) {
        let seen = self.seen.entry(node).or_insert(at);
        *seen = (*seen).max(at);
    }

    /// `node`'s key was deleted: it left on purpose.
    fn forget(&mut self, node: &str) {
        self.seen.remove(node);
    }

    /// The nodes whose key was written within `timeout` before `now`.
    fn alive(&self, now: Instant, timeout: Duration) -> HashSet<Arc<str>> {
        self.seen
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) < timeout)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// How long ago `node`'s key was last seen written.
    fn age(&self, node: &str, now: Instant) -> Option<Duration> {
        self.seen
            .get(node)
            .map(|at| now.saturating_duration_since(*at))
    }
}

impl Nodes {
    pub fn is_alive(&self, node: &str) -> bool {
        self.alive.read().contains(node)
    }

    /// Whether `node` is alive in run `run`: false once it died or
    /// restarted (when its key names its run).
    pub fn is_alive_in_run(&self, node: &str, run: u64) -> bool {
        self.is_alive(node) && self.runs.read().get(node).is_none_or(|r| *r == run)
    }

    pub fn alive_count(&self) -> usize {
        self.alive.read().len()
    }

    /// Replaces the set; returns the nodes that joined it and those that
    /// left it.
    fn update(&self, now: HashSet<Arc<str>>) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let mut alive = self.alive.write();
        let joined = now.difference(&alive).cloned().collect();
        let gone = alive.difference(&now).cloned().collect();
        *alive = now;
        (joined, gone)
    }
}

impl Cluster {
    fn beat(&self) -> Duration {
        Duration::from_secs(self.config.node_timeout_secs) / 3
    }

    /// Keeps this node's key fresh; once it is written again after it
    /// lapsed, lets go of what the others took over meanwhile
    /// ([`Cluster::rejoin_after_lapse`]).
    pub(super) async fn heartbeat(self: Arc<Self>, broker: Arc<Broker>) {
        let mut tick = tokio::time::interval(self.beat());
        loop {
            tick.tick().await;
            match self.write_liveness().await {
                Ok(Some(lapse)) => {
                    tokio::spawn(self.clone().rejoin_after_lapse(broker.clone(), lapse));
                }
                Ok(None) => {}
                Err(e) => {
                    if self.is_connected() {
                        self.logger
                            .warning(&format!("Cluster: cannot renew this node's liveness: {e}."));
                    }
                }
            }
        }
    }

    /// Writes this node's key (`<unix ms> <run>`) once. Returns how long
    /// it had gone unwritten when that was the node timeout or more: the
    /// other nodes may have taken this one for dead meanwhile.
    pub(super) async fn write_liveness(&self) -> Result<Option<Duration>, super::ClusterError> {
        let buckets = self.buckets()?;
        let now = crate::message::now_ms();
        let value = format!("{now} {}", self.run);
        buckets
            .nodes
            .put(&*self.node, value.into())
            .await
            .map_err(super::ClusterError::nats)?;
        let before = self
            .nodes
            .own_beat_ms
            .swap(now, std::sync::atomic::Ordering::AcqRel);
        let half_timeout_ms = self.config.node_timeout_secs * 1000 / 2;
        let unwritten_ms = if before > 0 {
            now.saturating_sub(before)
        } else {
            0
        };
        if unwritten_ms >= half_timeout_ms {
            // Others may have taken this node for gone meanwhile.
            self.interruptions
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok((unwritten_ms >= self.config.node_timeout_secs * 1000)
            .then(|| Duration::from_millis(unwritten_ms)))
    }

    /// This node's key was written lately (within two beats): no other
    /// node takes it for gone.
    pub(super) fn liveness_current(&self) -> bool {
        let own = self
            .nodes
            .own_beat_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        crate::message::now_ms().saturating_sub(own) < self.beat().as_millis() as u64 * 2
    }

    /// How many times so far this node may have missed what other nodes
    /// sent it, or been taken for gone (the field's description says
    /// when).
    pub(super) fn interruptions(&self) -> u64 {
        self.interruptions
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `node`, taken for gone, has a key again (it restarted, or
    /// it was only slow): then what it writes is its own business.
    pub(super) async fn is_back(&self, node: &str) -> bool {
        let Ok(buckets) = self.buckets() else {
            return false;
        };
        matches!(buckets.nodes.get(node).await, Ok(Some(_)))
    }

    /// Whether `node` answers a ping within [`PING_TIMEOUT`].
    async fn answers_ping(&self, node: &str) -> bool {
        let request = self.client.request(self.names.ping(node), Bytes::new());
        matches!(tokio::time::timeout(PING_TIMEOUT, request).await, Ok(Ok(_)))
    }

    /// Answers other nodes' pings (with this node's run). A ping that
    /// names an interest-bucket revision is answered once this node's
    /// table has applied it and every QoS 1/2 message planned with an
    /// older table is stored ([`super::plans`]); or not at all, after
    /// [`PING_TIMEOUT`].
    pub(super) async fn answer_pings(self: Arc<Self>) {
        let mut pings = match self.client.subscribe(self.names.ping(&self.node)).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                self.logger
                    .error(&format!("Cluster: cannot answer liveness pings: {e}."));
                return;
            }
        };
        while let Some(ping) = pings.next().await {
            let Some(reply) = ping.reply else { continue };
            let revision: Option<u64> = std::str::from_utf8(&ping.payload)
                .ok()
                .and_then(|r| r.parse().ok());
            let cluster = self.clone();
            tokio::spawn(async move {
                if let Some(revision) = revision {
                    if !cluster.interest_settled_here(revision, PING_TIMEOUT).await {
                        return;
                    }
                }
                let _ = cluster
                    .client
                    .publish(reply, Bytes::from(cluster.run.to_string()))
                    .await;
            });
        }
    }

    /// Waits (at most `limit`) until this node's table has applied
    /// interest-bucket revision `revision` and every QoS 1/2 message
    /// planned here with an older table is stored ([`super::plans`]):
    /// from then on what this node routes follows that revision. True
    /// when both happened in time.
    pub async fn interest_settled_here(&self, revision: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        self.interest_applied_up_to(revision, limit).await
            && self.plans.settled_before(revision, deadline).await
    }

    /// Waits (at most `limit`) until this node's table has applied
    /// interest-bucket revision `revision`.
    pub(super) async fn interest_applied_up_to(&self, revision: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.interest_applied_changed.notified();
            if self
                .interest_applied
                .load(std::sync::atomic::Ordering::Acquire)
                >= revision
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until every other live node's table has applied
    /// interest-bucket revision `revision`, each asked with a ping; true
    /// when all answered within [`PING_TIMEOUT`].
    pub async fn others_applied_interest(&self, revision: u64) -> bool {
        let others: Vec<Arc<str>> = self
            .nodes
            .alive
            .read()
            .iter()
            .filter(|n| **n != self.node)
            .cloned()
            .collect();
        let asks = others.iter().map(|node| {
            let request = self
                .client
                .request(self.names.ping(node), Bytes::from(revision.to_string()));
            async move { matches!(tokio::time::timeout(PING_TIMEOUT, request).await, Ok(Ok(_))) }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .all(|answered| answered)
    }

    /// Follows the nodes bucket: when each key was written, and the run it
    /// names. Starts over when the watch ends (NATS went away).
    pub(super) async fn watch_node_keys(self: Arc<Self>) {
        use async_nats::jetstream::kv::Operation;
        let timeout = Duration::from_secs(self.config.node_timeout_secs);
        loop {
            let Ok(buckets) = self.buckets() else { return };
            let mut watch = match buckets.nodes.watch_with_history(">").await {
                Ok(watch) => watch,
                Err(e) => {
                    if self.is_connected() {
                        self.logger.warning(&format!(
                            "Cluster: cannot watch which nodes are alive: {e}."
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { break };
                let node: Arc<str> = Arc::from(entry.key.as_str());
                if matches!(entry.operation, Operation::Delete | Operation::Purge) {
                    self.nodes.beats.lock().forget(&node);
                    continue;
                }
                // A key replayed when the watch starts may be old: it
                // counts from when it was written (NATS's clock), never
                // from later than now.
                let age = time::OffsetDateTime::now_utc() - entry.created;
                let age = Duration::try_from(age).unwrap_or_default().min(timeout);
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                if let Some(run) = parse_run(&entry.value) {
                    self.nodes.runs.write().insert(node.clone(), run);
                }
                let new = !self.nodes.is_alive(&node);
                self.nodes.beats.lock().saw(node, at);
                if new {
                    self.nodes.newcomer.notify_one();
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every beat (and when a new node's key appears), takes the nodes
    /// whose keys were written within the timeout for alive; deals with
    /// nodes that left.
    pub(super) async fn judge_nodes(self: Arc<Self>, broker: Arc<Broker>) {
        let timeout = Duration::from_secs(self.config.node_timeout_secs);
        let mut tick = tokio::time::interval(self.beat());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.nodes.newcomer.notified() => {}
            }
            let now = Instant::now();
            let (alive, own_age) = {
                let beats = self.nodes.beats.lock();
                (beats.alive(now, timeout), beats.age(&self.node, now))
            };
            broker.metrics.cluster_nodes.set(alive.len() as i64);
            // Only a node that writes its own key and sees it come back
            // judges the others: while NATS cannot take writes (a leader
            // election, a partition) or the watch lags, every key ages
            // alike, and nobody is dead.
            let written = self.liveness_current();
            let seen = own_age.is_some_and(|age| age < self.beat() * 2);
            if !written || !seen {
                continue;
            }
            let (joined, gone) = self.nodes.update(alive);
            for node in joined.iter().filter(|n| **n != self.node) {
                self.logger
                    .info(&format!("Cluster: node {node} is in the cluster."));
            }
            for node in gone {
                if node == self.node {
                    continue;
                }
                // Its key may have lapsed only because its writes are slow
                // (a busy node, a busy JetStream): a node that answers is
                // not dead, and taking it for dead would take its clients'
                // sessions and its interest from under it.
                if self.answers_ping(&node).await {
                    self.logger.warning(&format!(
                        "Cluster: the liveness key of node {node} lapsed, but it answers; still taken for alive."
                    ));
                    self.nodes.alive.write().insert(node);
                    continue;
                }
                self.logger.warning(&format!(
                    "Cluster: node {node} left the cluster or stopped answering; \
                     the clients it still held are taken over."
                ));
                let run = self.nodes.runs.read().get(&node).copied();
                self.node_gone(&broker, &node, run).await;
            }
        }
    }
}

/// The run in a nodes-bucket value (`<unix ms> <run>`).
fn parse_run(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .split_once(' ')?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_key_names_its_run() {
        assert_eq!(parse_run(b"1796211321000 42"), Some(42));
        assert_eq!(parse_run(b"1796211321000"), None, "a key of an older node");
        let nodes = Nodes::default();
        let _ = nodes.update([Arc::from("a")].into_iter().collect());
        assert!(nodes.is_alive_in_run("a", 7), "no run known: alive");
        nodes.runs.write().insert(Arc::from("a"), 8);
        assert!(!nodes.is_alive_in_run("a", 7), "restarted");
        assert!(nodes.is_alive_in_run("a", 8));
        assert!(!nodes.is_alive_in_run("b", 8));
    }

    #[test]
    fn a_node_is_alive_while_its_key_was_written_within_the_timeout() {
        let mut beats = Beats::default();
        let start = Instant::now();
        let timeout = Duration::from_secs(3);
        beats.saw(Arc::from("a"), start);
        beats.saw(Arc::from("b"), start);
        beats.saw(Arc::from("b"), start + Duration::from_secs(2));
        // A replayed, older write does not make a node look older.
        beats.saw(Arc::from("b"), start);
        let names = |set: HashSet<Arc<str>>| {
            let mut names: Vec<String> = set.iter().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(
            names(beats.alive(start + Duration::from_secs(1), timeout)),
            ["a", "b"]
        );
        assert_eq!(
            names(beats.alive(start + Duration::from_secs(4), timeout)),
            ["b"]
        );
        assert_eq!(
            beats.age("b", start + Duration::from_secs(4)),
            Some(Duration::from_secs(2))
        );
        beats.forget("b");
        assert!(beats
            .alive(start + Duration::from_secs(4), timeout)
            .is_empty());
        assert_eq!(beats.age("b", start), None);
    }

    #[test]
    fn nodes_that_join_or_leave_the_set_are_reported_once() {
        let nodes = Nodes::default();
        let set = |names: &[&str]| names.iter().map(|n| Arc::from(*n)).collect();
        let (mut joined, gone) = nodes.update(set(&["a", "b", "c"]));
        joined.sort();
        let all: Vec<Arc<str>> = ["a", "b", "c"].map(Arc::from).to_vec();
        assert_eq!((joined, gone), (all, vec![]));
        assert!(nodes.is_alive("b"));
        assert_eq!(
            nodes.update(set(&["a", "c"])),
            (vec![], vec![Arc::from("b")])
        );
        assert_eq!(nodes.update(set(&["a", "c"])), (vec![], vec![]));
        assert_eq!(
            nodes.update(set(&["a", "b", "c"])),
            (vec![Arc::from("b")], vec![])
        );
        assert_eq!(
            nodes.update(set(&["a", "c"])),
            (vec![], vec![Arc::from("b")])
        );
        assert!(!nodes.is_alive("b"));
        assert_eq!(nodes.alive_count(), 2);
    }
}
