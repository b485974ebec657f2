//! Retained messages: the last retained message of each topic, looked up by
//! topic filter when a client subscribes.
//!
//! Messages are kept in a trie keyed by topic level, so a filter lookup only
//! walks the branches the filter can match; only `#` visits a whole subtree.

use std::collections::HashMap;
use std::str::Split;

use ahash::RandomState;
use parking_lot::RwLock;

/// The retained message store, generic over the stored value `V` (typically
/// the retained PUBLISH, cheap to clone).
pub struct RetainedStore<V: Clone> {
    inner: RwLock<Inner<V>>,
}

struct Inner<V> {
    /// Stands for the empty prefix; never holds a value itself.
    root: Node<V>,
    /// Number of stored values.
    len: usize,
}

/// A trie node: the value retained on the topic spelled by the path from the
/// root to this node, if any.
struct Node<V> {
    children: HashMap<Box<str>, Node<V>, RandomState>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            value: None,
        }
    }
}

impl<V: Clone> Default for RetainedStore<V> {
    fn default() -> Self {
        RetainedStore {
            inner: RwLock::new(Inner {
                root: Node::default(),
                len: 0,
            }),
        }
    }
}

impl<V: Clone> RetainedStore<V> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retains `value` on `topic` (a valid topic name), replacing and
    /// returning the previous value.
    pub fn set(&self, topic: &str, value: V) -> Option<V> {
        let mut inner = self.inner.write();
        let mut node = &mut inner.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            inner.len += 1;
        }
        old
    }

    /// Removes and returns the value retained on `topic`, pruning trie nodes
    /// left empty.
    pub fn remove(&self, topic: &str) -> Option<V> {
        let mut inner = self.inner.write();
        let old = remove(&mut inner.root, topic.split('/'));
        if old.is_some() {
            inner.len -= 1;
        }
        old
    }

    /// The value retained on `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<V> {
        let inner = self.inner.read();
        let mut node = &inner.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.clone()
    }

    /// Every retained message whose topic matches `filter` (a valid,
    /// non-shared topic filter), with the MQTT matching rules: `#` also
    /// matches the parent level, and a topic starting with `$` is not matched
    /// by a filter whose first level is `+` or `#`. Order is unspecified.
    pub fn matching(&self, filter: &str) -> Vec<(String, V)> {
        let inner = self.inner.read();
        let mut out = Vec::new();
        let mut path = String::new();
        collect_matching(&inner.root, filter.split('/'), true, &mut path, &mut out);
        out
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.inner.read().len
    }

    /// Whether no message is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every retained message, for snapshots and the admin API. Order is
    /// unspecified.
    pub fn all(&self) -> Vec<(String, V)> {
        let inner = self.inner.read();
        let mut out = Vec::with_capacity(inner.len);
        let mut path = String::new();
        collect_subtree(&inner.root, true, false, &mut path, &mut out);
        out
    }
}

/// Appends `level` to the topic `path` (with a `/` unless `at_root`) and
/// returns the previous length, to truncate back to.
fn push_level(path: &mut String, at_root: bool, level: &str) -> usize {
    let before = path.len();
    if !at_root {
        path.push('/');
    }
    path.push_str(level);
    before
}

/// Collects the values below `node` (whose topic is `path`) that match the
/// remaining filter `levels`.
fn collect_matching<V: Clone>(
    node: &Node<V>,
    mut levels: Split<'_, char>,
    at_root: bool,
    path: &mut String,
    out: &mut Vec<(String, V)>,
) {
    match levels.next() {
        None => {
            if let Some(value) = &node.value {
                out.push((path.clone(), value.clone()));
            }
        }
        Some("#") => collect_subtree(node, at_root, at_root, path, out),
        Some("+") => {
            for (level, child) in &node.children {
                if at_root && level.starts_with('$') {
                    continue;
                }
                let before = push_level(path, at_root, level);
                collect_matching(child, levels.clone(), false, path, out);
                path.truncate(before);
            }
        }
        Some(level) => {
            if let Some(child) = node.children.get(level) {
                let before = push_level(path, at_root, level);
                collect_matching(child, levels, false, path, out);
                path.truncate(before);
            }
        }
    }
}

/// Collects the value of `node` (whose topic is `path`) and of all its
/// descendants, leaving out first levels starting with `$` if `skip_dollar`.
fn collect_subtree<V: Clone>(
    node: &Node<V>,
    at_root: bool,
    skip_dollar: bool,
    path: &mut String,
    out: &mut Vec<(String, V)>,
) {
    if let Some(value) = &node.value {
        out.push((path.clone(), value.clone()));
    }
    for (level, child) in &node.children {
        if skip_dollar && level.starts_with('$') {
            continue;
        }
        let before = push_level(path, at_root, level);
        collect_subtree(child, false, false, path, out);
        path.truncate(before);
    }
}

/// Removes the value at the topic spelled by `levels` below `node`, pruning
/// children left empty.
fn remove<V>(node: &mut Node<V>, mut levels: Split<'_, char>) -> Option<V> {
    let Some(level) = levels.next() else {
        return node.value.take();
    };
    let child = node.children.get_mut(level)?;
    let old = remove(child, levels);
    if child.value.is_none() && child.children.is_empty() {
        node.children.remove(level);
    }
    old
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{self, strategies};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn sorted(mut v: Vec<(String, u32)>) -> Vec<(String, u32)> {
        v.sort();
        v
    }

    fn topics(v: Vec<(String, u32)>) -> Vec<String> {
        sorted(v).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn set_get_replace_remove() {
        let store = RetainedStore::new();
        assert!(store.is_empty());
        assert_eq!(store.set("a/b", 1), None);
        assert_eq!(store.set("a/b", 2), Some(1));
        assert_eq!(store.set("a", 3), None);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("a/b"), Some(2));
        assert_eq!(store.get("a"), Some(3));
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.get("b"), None);

        assert_eq!(store.remove("a/b/c"), None);
        assert_eq!(store.remove("a/b"), Some(2));
        assert_eq!(store.remove("a/b"), None);
        assert_eq!(store.get("a"), Some(3));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn remove_prunes_empty_nodes() {
        let store = RetainedStore::new();
        for (i, topic) in ["a/b/c", "a/b", "/x/", "$SYS/y", "a/c"]
            .into_iter()
            .enumerate()
        {
            store.set(topic, i);
        }
        // Removing a topic that only exists as a prefix keeps its children.
        assert_eq!(store.remove("a"), None);
        assert_eq!(store.get("a/b/c"), Some(0));
        for topic in ["a/b", "a/b/c", "/x/", "$SYS/y", "a/c"] {
            assert!(store.remove(topic).is_some(), "{topic}");
        }
        assert!(store.is_empty());
        assert!(store.inner.read().root.children.is_empty());
    }

    #[test]
    fn wildcard_lookup() {
        let store = RetainedStore::new();
        let all = ["a", "a/b", "a/b/c", "a/c", "b/b", "/b", "$SYS/up", "a/$x"];
        for (i, topic) in all.iter().enumerate() {
            store.set(topic, i as u32);
        }
        assert_eq!(sorted(store.matching("a/b")), [("a/b".to_owned(), 1)]);
        assert!(store.matching("a/x").is_empty());
        assert_eq!(topics(store.matching("a/+")), ["a/$x", "a/b", "a/c"]);
        assert_eq!(topics(store.matching("+/b")), ["/b", "a/b", "b/b"]);
        assert_eq!(
            topics(store.matching("a/#")),
            ["a", "a/$x", "a/b", "a/b/c", "a/c"]
        );
        assert_eq!(topics(store.matching("a/b/#")), ["a/b", "a/b/c"]);
        assert_eq!(topics(store.matching("+")), ["a"]);
        assert_eq!(topics(store.matching("#")).len(), all.len() - 1);
        assert_eq!(topics(store.matching("$SYS/#")), ["$SYS/up"]);
        assert_eq!(topics(store.matching("+/up")), Vec::<String>::new());
        let mut everything: Vec<String> = all.iter().map(|t| t.to_string()).collect();
        everything.sort();
        assert_eq!(topics(store.all()), everything);
    }

    proptest! {
        #[test]
        fn matching_agrees_with_brute_force(
            // Some(value) sets the topic, None removes it.
            ops in prop::collection::vec(
                (strategies::topic_name(), prop::option::of(0u32..100)),
                0..40,
            ),
            filters in prop::collection::vec(strategies::topic_filter(), 1..8),
        ) {
            let store = RetainedStore::new();
            let mut model = BTreeMap::new();
            for (topic, value) in ops {
                match value {
                    Some(v) => prop_assert_eq!(store.set(&topic, v), model.insert(topic, v)),
                    None => prop_assert_eq!(store.remove(&topic), model.remove(&topic)),
                }
            }
            prop_assert_eq!(store.len(), model.len());
            let expected_all: Vec<(String, u32)> = model.clone().into_iter().collect();
            prop_assert_eq!(sorted(store.all()), expected_all);
            for filter in &filters {
                let expected: Vec<(String, u32)> = model
                    .iter()
                    .filter(|(t, _)| topic::matches(filter, t))
                    .map(|(t, v)| (t.clone(), *v))
                    .collect();
                prop_assert_eq!(sorted(store.matching(filter)), expected, "filter {}", filter);
            }
            for topic in model.keys().cloned().collect::<Vec<_>>() {
                store.remove(&topic);
            }
            prop_assert!(store.inner.read().root.children.is_empty());
        }
    }
}
