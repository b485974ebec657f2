//! Which nodes are alive: each node writes its key in the nodes bucket
//! every third of `node_timeout_secs`; the bucket forgets keys older than
//! the timeout. A node whose key is gone is dead: one survivor (the first
//! to claim each of its clients) publishes the wills of its clients, and
//! its filters leave the interest bucket.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::RwLock;

use crate::broker::Broker;

use super::Cluster;

/// The nodes seen alive at the last look.
#[derive(Debug, Default)]
pub struct Nodes {
    alive: RwLock<HashSet<Arc<str>>>,
    /// When this node's own key was last written (unix milliseconds): a
    /// node that cannot write its own key cannot judge the others.
    own_beat_ms: std::sync::atomic::AtomicU64,
}

impl Nodes {
    pub fn is_alive(&self, node: &str) -> bool {
        self.alive.read().contains(node)
    }

    pub fn alive_count(&self) -> usize {
        self.alive.read().len()
    }

    /// Replaces the set; returns the nodes that left it.
    fn update(&self, now: HashSet<Arc<str>>) -> Vec<Arc<str>> {
        let mut alive = self.alive.write();
        let gone = alive.difference(&now).cloned().collect();
        *alive = now;
        gone
    }
}

impl Cluster {
    fn beat(&self) -> Duration {
        Duration::from_secs(self.config.node_timeout_secs) / 3
    }

    /// Keeps this node's key fresh.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.beat());
        loop {
            tick.tick().await;
            let Ok(buckets) = self.buckets() else {
                continue;
            };
            let now = crate::message::now_ms();
            match buckets.nodes.put(&*self.node, now.to_string().into()).await {
                Ok(_) => self
                    .nodes
                    .own_beat_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed),
                Err(e) => {
                    if self.is_connected() {
                        self.logger
                            .warning(&format!("Cluster: cannot renew this node's liveness: {e}."));
                    }
                }
            }
        }
    }

    /// Looks at the nodes bucket every beat; deals with nodes that left.
    pub(super) async fn watch_nodes(self: Arc<Self>, broker: Arc<Broker>) {
        let mut tick = tokio::time::interval(self.beat());
        loop {
            tick.tick().await;
            let Ok(buckets) = self.buckets() else {
                continue;
            };
            let keys = match buckets.nodes.keys().await {
                Ok(keys) => keys,
                Err(_) => continue,
            };
            let now: HashSet<Arc<str>> = keys
                .filter_map(|k| async move { k.ok().map(|k| Arc::from(k.as_str())) })
                .collect()
                .await;
            broker.metrics.cluster_nodes.set(now.len() as i64);
            // Only a node whose own key is fresh judges the others: while
            // NATS cannot take writes (a leader election, a partition),
            // every key ages alike, and nobody is dead.
            let own = self
                .nodes
                .own_beat_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            let fresh =
                crate::message::now_ms().saturating_sub(own) < self.beat().as_millis() as u64 * 2;
            if !now.contains(&self.node) || !fresh {
                continue;
            }
            for node in self.nodes.update(now) {
                if node == self.node {
                    continue;
                }
                self.logger.warning(&format!(
                    "Cluster: node {node} left the cluster or stopped answering; \
                     the clients it still held are taken over."
                ));
                self.node_gone(&broker, &node).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_that_leave_the_set_are_reported_once() {
        let nodes = Nodes::default();
        let set = |names: &[&str]| names.iter().map(|n| Arc::from(*n)).collect();
        assert!(nodes.update(set(&["a", "b", "c"])).is_empty());
        assert!(nodes.is_alive("b"));
        assert_eq!(nodes.update(set(&["a", "c"])), vec![Arc::from("b")]);
        assert!(nodes.update(set(&["a", "c"])).is_empty());
        assert!(!nodes.is_alive("b"));
        assert_eq!(nodes.alive_count(), 2);
    }
}
