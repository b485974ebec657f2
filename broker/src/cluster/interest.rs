//! Who wants what, cluster-wide: each node's filters, in the interest
//! bucket (`<node>.<filter key>`), mirrored into a subscription table of
//! nodes that a publish is routed through.
//!
//! A node counts its own sessions' subscriptions per filter and writes
//! the bucket only when a filter gets its first or loses its last
//! subscriber; the writes go through one task, in order. Every node watches
//! the bucket and keeps the others' ordinary filters in its table; shared
//! subscriptions (`$share/group/filter`) are kept for every node, this one
//! included, so that one node is chosen per message cluster-wide.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::codec::{QoS, SubscriptionOptions};
use crate::router::{Route, Subscription, SubscriptionTable};
use crate::topic::SharedFilter;

use super::names::InterestKey;
use super::plan_cache::PlanCache;

/// Interest changes written to the bucket together at most.
const MAX_INTEREST_BATCH: usize = 512;

/// A change of this node's interest, to write to the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String),
    Removed(String),
}

/// This node's filters (counted) and every node's, as far as known.
pub struct Interest {
    node: Arc<str>,
    /// Subscriptions of this node's sessions, per filter.
    local: Mutex<LocalFilters>,
    /// Other nodes' ordinary filters, and every node's shared ones.
    table: SubscriptionTable<Arc<str>>,
    /// Offline sessions' filters, by client id: their QoS 1/2 messages go
    /// straight to their queue subjects.
    offline: SubscriptionTable<Arc<str>>,
    /// Recent topics' plans, emptied on every change of the two tables.
    plans: PlanCache,
    /// Bucket writes, in order.
    changes: mpsc::UnboundedSender<Change>,
    /// Changes sent, and changes the writer is done with (written, or
    /// given up with the buckets): see [`Interest::written`].
    sent: AtomicU64,
    done: AtomicU64,
    done_changed: tokio::sync::Notify,
}

/// This node's own filters.
#[derive(Default)]
struct LocalFilters {
    /// Subscriptions of this node's sessions, per filter.
    counts: HashMap<String, usize>,
    /// Filters whose first subscriber is a session being loaded: their
    /// write waits until it has taken its backlog
    /// ([`Interest::add_local_held`]).
    held: HashSet<String>,
}

/// Where one message goes in the cluster.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Other nodes, each with the shared groups it serves with this message.
    pub remote: Vec<(Arc<str>, Vec<String>)>,
    /// The shared groups this node serves (the others are served elsewhere).
    pub local_groups: Vec<String>,
    /// Offline sessions (client ids) whose queues take the message.
    pub offline: Vec<Arc<str>>,
}

/// Every node's subscription looks the same in the table: the receiving
/// node routes precisely with its own.
fn node_subscription() -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: false,
            retain_as_published: true,
            retain_handling: 0,
        },
        identifier: None,
    }
}

impl Interest {
    pub fn new(node: Arc<str>) -> (Interest, mpsc::UnboundedReceiver<Change>) {
        let (changes, rx) = mpsc::unbounded_channel();
        let interest = Interest {
            node,
            local: Mutex::new(LocalFilters::default()),
            table: SubscriptionTable::new(),
            offline: SubscriptionTable::new(),
            plans: PlanCache::default(),
            changes,
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            done_changed: tokio::sync::Notify::new(),
        };
        (interest, rx)
    }

    /// A session of this node subscribed to `filter`.
    pub fn add_local(&self, filter: &str) {
        let mut local = self.local.lock();
        let count = local.counts.entry(filter.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.add_shared(filter);
            self.send(Change::Added(filter.to_string()));
        } else if local.held.remove(filter) {
            // Another session wants it now: no more waiting.
            self.send(Change::Added(filter.to_string()));
        }
    }

    /// A session being loaded here subscribed to `filter`: as
    /// [`Interest::add_local`], except that a first subscriber's write
    /// waits for [`Interest::release_held`]. Meanwhile the session's
    /// interest in the cluster (its queue) takes what other nodes publish
    /// for it, which it reads once it has taken its backlog: the write,
    /// replicated on every nats-server, would otherwise compete with the
    /// delivery of that backlog for the CPU.
    pub fn add_local_held(&self, filter: &str) {
        let mut local = self.local.lock();
        let count = local.counts.entry(filter.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.add_shared(filter);
            local.held.insert(filter.to_string());
        }
    }

    /// Writes what [`Interest::add_local_held`] held of `filters`.
    pub fn release_held(&self, filters: &[String]) {
        let mut local = self.local.lock();
        for filter in filters {
            if local.held.remove(filter.as_str()) {
                self.send(Change::Added(filter.clone()));
            }
        }
    }

    /// Writes every filter of this node's sessions again (held ones wait
    /// as before): the other nodes may have deleted them while they took
    /// this node for dead.
    pub fn write_local_again(&self) {
        let local = self.local.lock();
        for filter in local.counts.keys() {
            if !local.held.contains(filter) {
                self.send(Change::Added(filter.clone()));
            }
        }
    }

    /// A session of this node no longer subscribes to `filter`.
    pub fn remove_local(&self, filter: &str) {
        let mut local = self.local.lock();
        let Some(count) = local.counts.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            local.counts.remove(filter);
            if is_shared(filter) {
                self.table.unsubscribe(&self.node, filter);
                self.plans.invalidate();
            }
            // A filter still held was never written: nothing to remove.
            if !local.held.remove(filter) {
                self.send(Change::Removed(filter.to_string()));
            }
        }
    }

    /// A shared filter's first subscriber here: this node is a member of
    /// its group in the table.
    fn add_shared(&self, filter: &str) {
        if is_shared(filter) {
            self.table
                .subscribe(self.node.clone(), filter, node_subscription());
            self.plans.invalidate();
        }
    }

    /// Queues a change for the writer (under the lock of `local`, so that
    /// changes go in the order they were made).
    fn send(&self, change: Change) {
        self.sent.fetch_add(1, Ordering::AcqRel);
        let _ = self.changes.send(change);
    }

    /// Resolves once every change of this node's interest made so far is
    /// in the bucket, so that a write after it reaches the other nodes
    /// after them (the bucket is one ordered stream). A session loaded
    /// here waits for this before its session interest goes: otherwise
    /// the other nodes would see, for a moment, nobody subscribed.
    pub async fn written(&self) {
        let target = self.sent.load(Ordering::Acquire);
        loop {
            let changed = self.done_changed.notified();
            if self.done.load(Ordering::Acquire) >= target {
                return;
            }
            changed.await;
        }
    }

    /// The writer is done with one change.
    fn change_done(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
        self.done_changed.notify_waiters();
    }

    /// This node's filters now, held ones included (at start, what an
    /// earlier run left in the bucket beyond them is deleted).
    pub fn local_filters(&self) -> Vec<String> {
        self.local.lock().counts.keys().cloned().collect()
    }

    /// A node's filter appeared in the bucket.
    pub fn remote_added(&self, node: &str, filter: &str) {
        if node == &*self.node && !is_shared(filter) {
            return;
        }
        self.table
            .subscribe(Arc::from(node), filter, node_subscription());
        self.plans.invalidate();
    }

    /// A node's filter left the bucket.
    pub fn remote_removed(&self, node: &str, filter: &str) {
        if node == &*self.node && !is_shared(filter) {
            return;
        }
        self.table.unsubscribe(&Arc::from(node), filter);
        self.plans.invalidate();
    }

    /// An offline session's filter appeared in the bucket.
    pub fn offline_added(&self, client_id: &str, filter: &str) {
        self.offline
            .subscribe(Arc::from(client_id), filter, node_subscription());
        self.plans.invalidate();
    }

    /// An offline session's filter left the bucket.
    pub fn offline_removed(&self, client_id: &str, filter: &str) {
        self.offline.unsubscribe(&Arc::from(client_id), filter);
        self.plans.invalidate();
    }

    /// Whether any other node or offline session wants anything (the
    /// fast path's check).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty() && self.offline.is_empty()
    }

    /// Where a message on `topic` goes. `alive` tells the nodes that may
    /// be chosen for a shared subscription.
    pub fn plan(&self, topic: &str, alive: &dyn Fn(&Arc<str>) -> bool) -> Plan {
        let generation = match self.plans.get(topic) {
            Ok(plan) => return plan,
            Err(generation) => generation,
        };
        let mut routes: Vec<Route<Arc<str>>> = Vec::new();
        self.table.route(topic, None, alive, &mut routes);
        // A shared group's member is chosen anew for each message.
        let keep = routes.iter().all(|r| r.shared_group.is_none());
        let mut plan = Plan::default();
        let mut offline: Vec<Route<Arc<str>>> = Vec::new();
        // Shared subscriptions of offline sessions are not served: their
        // groups' connected members are.
        self.offline.route(topic, None, &|_| true, &mut offline);
        plan.offline = offline
            .into_iter()
            .filter(|r| r.shared_group.is_none())
            .map(|r| r.subscriber)
            .collect();
        for route in routes {
            let groups: Vec<String> = route.shared_group.iter().map(|g| g.to_string()).collect();
            if route.subscriber == self.node {
                plan.local_groups.extend(groups);
                continue;
            }
            match plan.remote.iter_mut().find(|(n, _)| *n == route.subscriber) {
                Some((_, existing)) => existing.extend(groups),
                None => plan.remote.push((route.subscriber, groups)),
            }
        }
        if keep {
            self.plans.insert(topic, generation, &plan);
        }
        plan
    }
}

/// Keeping the interest bucket and the table in step.
impl super::Cluster {
    /// Writes this node's interest changes to the bucket, in order. First
    /// removes what an earlier run of this node left there. Changes that
    /// queued up meanwhile go together: sent one after the other on the
    /// one connection (so stored in order), then their acknowledgements
    /// awaited, so a thousand clients subscribing at once wait for one
    /// round trip, not a thousand.
    pub(super) async fn write_interest(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Change>,
    ) {
        // This run's key first: a node that took this one for gone then
        // sees it back before it could take this run's filters for the
        // last run's ([`super::Cluster::node_gone`]).
        if let Err(e) = self.write_liveness().await.map(drop) {
            self.logger
                .warning(&format!("Cluster: cannot write this node's liveness: {e}."));
        }
        self.clear_stale_interest().await;
        let mut batch = Vec::new();
        while let Some(first) = changes.recv().await {
            batch.push(first);
            while batch.len() < MAX_INTEREST_BATCH {
                match changes.try_recv() {
                    Ok(change) => batch.push(change),
                    Err(_) => break,
                }
            }
            let mut backoff = super::backoff::Backoff::new(
                std::time::Duration::from_millis(50),
                std::time::Duration::from_secs(2),
            );
            while let Ok(buckets) = self.buckets() {
                // A batch that failed part-way is written again whole:
                // the same puts and deletes in the same order end in the
                // same state.
                match self.write_interest_batch(&buckets.interest, &batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        if self.is_connected() {
                            self.logger
                                .warning(&format!("Cluster: cannot record interest: {e}."));
                        }
                        backoff.wait().await;
                    }
                }
            }
            for _ in batch.drain(..) {
                self.interest.change_done();
            }
        }
    }

    /// Sends every change of `batch` to the bucket, then waits until all
    /// are stored.
    async fn write_interest_batch(
        &self,
        bucket: &async_nats::jetstream::kv::Store,
        batch: &[Change],
    ) -> Result<(), String> {
        // The subject a key is written on, as the key-value store itself
        // builds it (this node's JetStream context has no domain prefix).
        let subject = |filter: &str| {
            let prefix = bucket.put_prefix.as_ref().unwrap_or(&bucket.prefix);
            format!("{prefix}{}", self.names.interest_key(filter))
        };
        let mut acks = Vec::with_capacity(batch.len());
        for change in batch {
            let sent = match change {
                Change::Added(filter) => {
                    self.js
                        .publish(subject(filter), filter.clone().into())
                        .await
                }
                Change::Removed(filter) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("KV-Operation", "DEL");
                    self.js
                        .publish_with_headers(subject(filter), headers, bytes::Bytes::new())
                        .await
                }
            };
            acks.push(sent.map_err(|e| e.to_string())?);
        }
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Deletes this node's keys that its current filters do not account
    /// for (left by a run that was killed), and writes the current ones.
    async fn clear_stale_interest(&self) {
        let Ok(buckets) = self.buckets() else { return };
        let prefix = self.names.own_interest_prefix();
        let current: std::collections::HashSet<String> = self
            .interest
            .local_filters()
            .iter()
            .map(|f| self.names.interest_key(f))
            .collect();
        let keys = match super::list_keys(&buckets.interest).await {
            Ok(keys) => keys,
            Err(e) => {
                self.logger.warning(&format!(
                    "Cluster: cannot clear what an earlier run of this node subscribed to: {e}."
                ));
                return;
            }
        };
        for key in keys {
            if key.starts_with(&prefix) && !current.contains(&key) {
                let _ = buckets.interest.delete(key).await;
            }
        }
    }

    /// Mirrors the bucket into the table: every key now, then each change.
    pub(super) async fn watch_interest(self: Arc<Self>) {
        use async_nats::jetstream::kv::Operation;
        use futures_util::StreamExt;
        // The keys applied to the tables, to take out those deleted while
        // the watch was down (a restarted watch only replays what exists).
        let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            let Ok(buckets) = self.buckets() else { return };
            if !known.is_empty() {
                let now: std::collections::HashSet<String> =
                    match super::list_keys(&buckets.interest).await {
                        Ok(keys) => keys.into_iter().collect(),
                        Err(e) => {
                            self.logger
                                .warning(&format!("Cluster: cannot read interest: {e}."));
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                for key in known.iter().filter(|k| !now.contains(*k)) {
                    self.apply_interest(key, true);
                }
                known.retain(|k| now.contains(k));
            }
            if !self.interest_loaded.load(Ordering::Acquire) {
                match super::empty_bucket(&buckets.interest).await {
                    Ok(true) => self.interest_loaded.store(true, Ordering::Release),
                    Ok(false) => {}
                    Err(()) => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let mut watch = match buckets.interest.watch_with_history(">").await {
                Ok(watch) => watch,
                Err(e) => {
                    self.logger
                        .warning(&format!("Cluster: cannot watch interest: {e}."));
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { break };
                let removed = matches!(entry.operation, Operation::Delete | Operation::Purge);
                self.apply_interest(&entry.key, removed);
                self.interest_applied
                    .fetch_max(entry.revision, Ordering::AcqRel);
                self.interest_applied_changed.notify_waiters();
                if entry.seen_current || entry.delta == 0 {
                    self.interest_loaded.store(true, Ordering::Release);
                }
                if removed {
                    known.remove(&entry.key);
                } else {
                    known.insert(entry.key);
                }
            }
            // The watch ended (NATS went away): start over.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Applies one interest-bucket key to the tables.
    fn apply_interest(&self, key: &str, removed: bool) {
        match super::names::split_interest_key(key) {
            Some(InterestKey::Node(node, filter)) if removed => {
                self.interest.remote_removed(&node, &filter)
            }
            Some(InterestKey::Node(node, filter)) => self.interest.remote_added(&node, &filter),
            Some(InterestKey::Session(client, filter)) if removed => {
                self.interest.offline_removed(&client, &filter)
            }
            Some(InterestKey::Session(client, filter)) => {
                self.interest.offline_added(&client, &filter)
            }
            None => {}
        }
    }

    /// A dead node's filters leave the bucket (it writes them again if it
    /// comes back): those written at revision `up_to` or before, each only
    /// if unchanged since (a later run's keys stay); all with `None`.
    pub(super) async fn forget_node_interest(&self, node: &str, up_to: Option<u64>) {
        let Ok(buckets) = self.buckets() else { return };
        let prefix = format!("{node}.");
        let keys = match super::list_keys(&buckets.interest).await {
            Ok(keys) => keys,
            Err(e) => {
                self.logger.warning(&format!(
                    "Cluster: cannot remove what node {node} subscribed to: {e}."
                ));
                return;
            }
        };
        for key in keys.into_iter().filter(|key| key.starts_with(&prefix)) {
            let Some(up_to) = up_to else {
                let _ = buckets.interest.delete(key).await;
                continue;
            };
            let Ok(Some(entry)) = buckets.interest.entry(key.clone()).await else {
                continue;
            };
            if entry.revision <= up_to {
                // Fails, as it should, when the key was written since.
                let _ = buckets
                    .interest
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await;
            }
        }
    }

    /// The interest bucket's last revision now.
    pub(super) async fn interest_written_up_to(&self) -> Result<u64, super::ClusterError> {
        let buckets = self.buckets()?;
        let mut stream = buckets.interest.stream.clone();
        let info = stream.info().await.map_err(super::ClusterError::nats)?;
        Ok(info.state.last_sequence)
    }
}

impl Interest {
    /// A node other than this one with a member of shared group `group`
    /// matching `topic`, alive, if any.
    pub fn other_node_serving(
        &self,
        topic: &str,
        group: &str,
        alive: &dyn Fn(&Arc<str>) -> bool,
    ) -> Option<Arc<str>> {
        let others = |n: &Arc<str>| *n != self.node && alive(n);
        let mut routes: Vec<Route<Arc<str>>> = Vec::new();
        self.table.route(topic, None, &others, &mut routes);
        routes
            .into_iter()
            .find(|r| r.shared_group.as_deref() == Some(group) && others(&r.subscriber))
            .map(|r| r.subscriber)
    }
}

fn is_shared(filter: &str) -> bool {
    matches!(SharedFilter::parse(filter), Ok(Some(_)))
}

#[cfg(test)]
mod tests;
