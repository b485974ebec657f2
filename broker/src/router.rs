//! The subscription table: maps the topic of a message to the subscribers
//! that must receive it.
//!
//! Subscriptions live in a trie keyed by topic level, so routing a message
//! only visits the branches its topic can match: its cost depends on the
//! topic's depth and on the subscriptions that match, not on unrelated
//! subscriptions.
//!
//! The trie is split into shards so that subscribing and routing do not
//! contend on one lock. A filter whose first level is a literal (`a/b/+`)
//! lives in one of [`SHARDS`] shards chosen by hashing that level; a filter
//! whose first level is `+` or `#` lives in a separate wildcard shard. Routing
//! a topic therefore read-locks at most two shards: the one of its first level
//! and the wildcard shard. Writers lock one shard for writing.
//!
//! The wildcard shard also implements the `$` rule: a topic starting with `$`
//! (such as `$SYS/...`) is never matched by a filter whose first level is a
//! wildcard, so routing such a topic skips that shard entirely.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::str::Split;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use parking_lot::RwLock;

use crate::codec::{QoS, SubscriptionOptions};
use crate::topic::SharedFilter;

/// Number of shards for filters whose first level is a literal.
const SHARDS: usize = 16;

/// One subscription of one subscriber to one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Options from the SUBSCRIBE packet.
    pub options: SubscriptionOptions,
    /// The MQTT 5.0 Subscription Identifier, if the client set one.
    pub identifier: Option<u32>,
}

/// One delivery produced by [`SubscriptionTable::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<K> {
    /// Who receives the message.
    pub subscriber: K,
    /// Maximum QoS granted by the matching subscription(s); the delivery QoS
    /// is the minimum of this and the publication's QoS.
    pub qos: QoS,
    /// Whether to keep the RETAIN flag as published (true if any matching
    /// subscription asked for it).
    pub retain_as_published: bool,
    /// Subscription identifiers of all matching subscriptions that have one.
    pub subscription_identifiers: Vec<u32>,
    /// The share name when this delivery comes from a shared subscription.
    pub shared_group: Option<Arc<str>>,
}

/// The subscription table, generic over the subscriber key `K` (typically a
/// client identifier or a session handle).
///
/// All methods take `&self`; the table is meant to be shared behind an
/// [`Arc`] by every connection.
pub struct SubscriptionTable<K> {
    /// Filters whose first level is a literal, by hash of that level.
    shards: [RwLock<Node<K>>; SHARDS],
    /// Filters whose first level is `+` or `#`.
    wildcard: RwLock<Node<K>>,
    /// Hashes a first level to its shard.
    hasher: RandomState,
    /// Total number of subscriptions, shared memberships included.
    count: AtomicUsize,
}

/// A trie node: the subscriptions of the filter spelled by the path from the
/// shard root to this node. Shard roots stand for the empty prefix and never
/// hold subscriptions themselves.
struct Node<K> {
    /// Children by literal level.
    children: HashMap<Box<str>, Node<K>, RandomState>,
    /// The `+` child and the `#` child, kept apart from the literal ones so
    /// that routing looks up one level with one hash, not three.
    plus: Option<Box<Node<K>>>,
    hash: Option<Box<Node<K>>>,
    /// Ordinary subscriptions to this filter.
    subscribers: HashMap<K, Subscription, RandomState>,
    /// Shared subscriptions to this filter, by share name.
    groups: HashMap<Arc<str>, SharedGroup<K>, RandomState>,
}

/// The members of one shared subscription `$share/{group}/{filter}`.
struct SharedGroup<K> {
    /// Members in subscription order; round robin walks this list.
    members: Vec<(K, Subscription)>,
    /// Index in `members` where the next round-robin search starts. May be
    /// `members.len()` (wraps to 0). Atomic so that routing, which only holds
    /// a read lock, can advance it.
    next: AtomicUsize,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            plus: None,
            hash: None,
            subscribers: HashMap::default(),
            groups: HashMap::default(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.groups.is_empty()
    }

    /// The child at `level`, made if missing.
    fn child_or_insert(&mut self, level: &str) -> &mut Node<K> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            literal => self.children.entry(literal.into()).or_default(),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            literal => self.children.get_mut(literal),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            literal => {
                self.children.remove(literal);
            }
        }
    }
}

impl<K: Eq> SharedGroup<K> {
    /// Picks the member that receives the next message: the first member at
    /// or after the cursor for which `eligible` holds, or the member at the
    /// cursor when none is eligible. Advances the cursor past the choice.
    fn pick(&self, eligible: &dyn Fn(&K) -> bool) -> Option<&(K, Subscription)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let mut cursor = self.next.load(Ordering::Relaxed);
        loop {
            let start = cursor % n;
            let chosen = (0..n)
                .map(|offset| (start + offset) % n)
                .find(|&i| self.members.get(i).is_some_and(|(k, _)| eligible(k)))
                .unwrap_or(start);
            // Compare-and-swap so that concurrent routers never hand two
            // consecutive messages to the same member by racing.
            match self.next.compare_exchange_weak(
                cursor,
                chosen + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.members.get(chosen),
                Err(current) => cursor = current,
            }
        }
    }

    /// Adds `subscriber` or replaces its subscription. Returns true if added.
    fn upsert(&mut self, subscriber: K, sub: Subscription) -> bool {
        match self.members.iter_mut().find(|(k, _)| *k == subscriber) {
            Some((_, existing)) => {
                *existing = sub;
                false
            }
            None => {
                self.members.push((subscriber, sub));
                true
            }
        }
    }

    /// Removes `subscriber`. Returns true if it was a member.
    fn remove(&mut self, subscriber: &K) -> bool {
        let Some(index) = self.members.iter().position(|(k, _)| k == subscriber) else {
            return false;
        };
        self.members.remove(index);
        // Keep the cursor on the same next member.
        let next = self.next.get_mut();
        if index < *next {
            *next -= 1;
        }
        true
    }
}

impl<K> Default for SubscriptionTable<K> {
    fn default() -> Self {
        SubscriptionTable {
            shards: std::array::from_fn(|_| RwLock::new(Node::default())),
            wildcard: RwLock::new(Node::default()),
            hasher: RandomState::new(),
            count: AtomicUsize::new(0),
        }
    }
}

impl<K> SubscriptionTable<K>
where
    K: Clone + Eq + Hash + Send + Sync,
{
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the subscription of `subscriber` to `filter`.
    ///
    /// `filter` is the filter as the client sent it, possibly
    /// `$share/{group}/{filter}`. The caller validates it first with
    /// [`crate::topic::valid_topic_filter`] and
    /// [`SharedFilter::parse`]; a malformed `$share/` filter is stored as an
    /// ordinary filter.
    ///
    /// Returns true if the subscription did not exist before (Retain
    /// Handling 1 sends retained messages only in that case).
    pub fn subscribe(&self, subscriber: K, filter: &str, sub: Subscription) -> bool {
        let (group, filter) = split_shared(filter);
        let mut root = self.shard_for(filter).write();
        let mut node = &mut *root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let added = match group {
            None => node.subscribers.insert(subscriber, sub).is_none(),
            Some(group) => match node.groups.get_mut(group) {
                Some(members) => members.upsert(subscriber, sub),
                None => {
                    let members = SharedGroup {
                        members: vec![(subscriber, sub)],
                        next: AtomicUsize::new(0),
                    };
                    node.groups.insert(group.into(), members);
                    true
                }
            },
        };
        if added {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Removes the subscription of `subscriber` to `filter` (as the client
    /// sent it, possibly `$share/...`), pruning trie nodes left empty.
    ///
    /// Returns true if the subscription existed.
    pub fn unsubscribe(&self, subscriber: &K, filter: &str) -> bool {
        let (group, filter) = split_shared(filter);
        let mut root = self.shard_for(filter).write();
        let removed = remove(&mut root, filter.split('/'), group, subscriber);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Appends to `out` the deliveries of a message on `topic` (a valid topic
    /// name) published by `publisher` (`None` for wills, `$SYS` and other
    /// broker messages).
    ///
    /// - Ordinary subscriptions give one [`Route`] per subscriber even when
    ///   several of its filters match: the highest QoS, `retain_as_published`
    ///   if any asks for it, and every subscription identifier. A
    ///   subscription with No Local set is skipped when its subscriber is the
    ///   publisher.
    /// - Each matching shared subscription (group and filter) gives exactly
    ///   one [`Route`], to a member chosen round robin among those for which
    ///   `eligible` holds (for example, online ones); if none is eligible, to
    ///   the next member in turn. No Local does not apply to shared
    ///   subscriptions.
    ///
    /// The order of the appended routes is unspecified. `eligible` runs
    /// while shard read locks are held, so it must not call back into this
    /// table.
    pub fn route(
        &self,
        topic: &str,
        publisher: Option<&K>,
        eligible: &dyn Fn(&K) -> bool,
        out: &mut Vec<Route<K>>,
    ) {
        let first_level = topic.split('/').next().unwrap_or_default();
        let literal = self.shard(first_level).read();
        // The `$` rule: wildcard first levels never match a `$` topic.
        let wildcard = (!topic.starts_with('$')).then(|| self.wildcard.read());

        let mut deliveries = Deliveries {
            publisher,
            eligible,
            out,
            merge: Merge::Nothing,
        };
        collect(&literal, topic.split('/'), &mut deliveries);
        if let Some(wildcard) = &wildcard {
            collect(wildcard, topic.split('/'), &mut deliveries);
        }
    }

    /// Total number of subscriptions, shared memberships included.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the table holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard that holds `filter` (a filter without `$share/`).
    fn shard_for(&self, filter: &str) -> &RwLock<Node<K>> {
        match filter.split('/').next() {
            Some("+" | "#") => &self.wildcard,
            first => self.shard(first.unwrap_or_default()),
        }
    }

    /// The literal shard of a first level.
    fn shard(&self, first_level: &str) -> &RwLock<Node<K>> {
        // The modulo keeps the index in range, so indexing cannot panic.
        let index = (self.hasher.hash_one(first_level) % SHARDS as u64) as usize;
        &self.shards[index]
    }
}

/// Splits a client filter into its share name (if shared) and topic filter.
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match SharedFilter::parse(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
    }
}

fn new_route<K: Clone>(subscriber: &K, sub: &Subscription, group: Option<Arc<str>>) -> Route<K> {
    Route {
        subscriber: subscriber.clone(),
        qos: sub.options.qos,
        retain_as_published: sub.options.retain_as_published,
        subscription_identifiers: sub.identifier.into_iter().collect(),
        shared_group: group,
    }
}

/// The routes of one message being built by [`SubscriptionTable::route`].
struct Deliveries<'n, 'a, K> {
    publisher: Option<&'a K>,
    eligible: &'a dyn Fn(&K) -> bool,
    out: &'a mut Vec<Route<K>>,
    merge: Merge<'n, K>,
}

/// How ordinary subscribers seen so far are found again, to merge
/// overlapping subscriptions into one delivery. A node holds each
/// subscriber once, so while a single node has contributed there is
/// nothing to merge and no index is built (the common case: one matching
/// filter per message).
enum Merge<'n, K> {
    /// No node with ordinary subscribers yet.
    Nothing,
    /// One node, whose routes start at `start` in `out`.
    One { node: &'n Node<K>, start: usize },
    /// Index in `out` of each ordinary subscriber's route.
    Many(HashMap<&'n K, usize, RandomState>),
}

impl<'n, K: Clone + Eq + Hash> Deliveries<'n, '_, K> {
    fn wanted(&self, subscriber: &K, sub: &Subscription) -> bool {
        !(sub.options.no_local && self.publisher == Some(subscriber))
    }

    /// Adds the deliveries for the subscriptions of a matching node.
    fn add(&mut self, node: &'n Node<K>) {
        if !node.subscribers.is_empty() {
            match &self.merge {
                Merge::Nothing => {
                    self.merge = Merge::One {
                        node,
                        start: self.out.len(),
                    };
                    for (subscriber, sub) in &node.subscribers {
                        if self.wanted(subscriber, sub) {
                            self.out.push(new_route(subscriber, sub, None));
                        }
                    }
                }
                Merge::One { node: first, start } => {
                    // A second node: index the first one's routes, which
                    // it added in its own iteration order.
                    let mut seen = HashMap::default();
                    let wanted = first
                        .subscribers
                        .iter()
                        .filter(|(subscriber, sub)| self.wanted(subscriber, sub));
                    for (index, (subscriber, _)) in (*start..).zip(wanted) {
                        seen.insert(subscriber, index);
                    }
                    self.merge = Merge::Many(seen);
                    self.add_merging(node);
                }
                Merge::Many(_) => self.add_merging(node),
            }
        }
        for (group, members) in &node.groups {
            if let Some((member, sub)) = members.pick(self.eligible) {
                self.out.push(new_route(member, sub, Some(group.clone())));
            }
        }
    }

    /// Adds a node's ordinary subscribers, merging with earlier routes.
    fn add_merging(&mut self, node: &'n Node<K>) {
        let Merge::Many(seen) = &mut self.merge else {
            return;
        };
        for (subscriber, sub) in &node.subscribers {
            if sub.options.no_local && self.publisher == Some(subscriber) {
                continue;
            }
            match seen.entry(subscriber) {
                Entry::Occupied(entry) => {
                    if let Some(route) = self.out.get_mut(*entry.get()) {
                        route.qos = route.qos.max(sub.options.qos);
                        route.retain_as_published |= sub.options.retain_as_published;
                        route.subscription_identifiers.extend(sub.identifier);
                    }
                }
                Entry::Vacant(entry) => {
                    entry.insert(self.out.len());
                    self.out.push(new_route(subscriber, sub, None));
                }
            }
        }
    }
}

/// Adds the deliveries of every node under `node` whose filter matches the
/// topic whose remaining levels are `levels`.
fn collect<'n, K: Clone + Eq + Hash>(
    node: &'n Node<K>,
    mut levels: Split<'_, char>,
    deliveries: &mut Deliveries<'n, '_, K>,
) {
    // `#` matches the remaining levels, zero or more ("a/#" matches "a").
    if let Some(hash) = &node.hash {
        deliveries.add(hash);
    }
    match levels.next() {
        None => deliveries.add(node),
        Some(level) => {
            if let Some(plus) = &node.plus {
                collect(plus, levels.clone(), deliveries);
            }
            if let Some(child) = node.children.get(level) {
                collect(child, levels, deliveries);
            }
        }
    }
}

/// Removes the subscription at the filter spelled by `levels` below `node`,
/// pruning children left empty. Returns true if it existed.
fn remove<K: Eq + Hash>(
    node: &mut Node<K>,
    mut levels: Split<'_, char>,
    group: Option<&str>,
    subscriber: &K,
) -> bool {
    let Some(level) = levels.next() else {
        return match group {
            None => node.subscribers.remove(subscriber).is_some(),
            Some(group) => {
                let Some(members) = node.groups.get_mut(group) else {
                    return false;
                };
                let removed = members.remove(subscriber);
                if members.members.is_empty() {
                    node.groups.remove(group);
                }
                removed
            }
        };
    };
    let Some(child) = node.child_mut(level) else {
        return false;
    };
    let removed = remove(child, levels, group, subscriber);
    if child.is_empty() {
        node.remove_child(level);
    }
    removed
}

#[cfg(test)]
mod tests;
