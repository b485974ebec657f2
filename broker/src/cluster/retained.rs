//! Retained messages, cluster-wide: the retained bucket holds one entry
//! per topic (key: the encoded topic), replicated by JetStream, so a
//! retained message survives the loss of any node. Every node mirrors the
//! bucket into its own retained store, which subscribers read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::message::Message;
use crate::store::StoredMessage;

use super::names::{decode_key, encode_key};
use super::{Cluster, ClusterError};

/// A retained message in the bucket, with the node that set it (its own
/// changes are already in its store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RetainedRecord {
    origin: String,
    message: StoredMessage,
}

impl Cluster {
    /// Records that `msg` is now the retained message of its topic (an
    /// empty payload clears it). Resolves once JetStream has it.
    pub async fn retain(&self, msg: &Message) -> Result<(), ClusterError> {
        let buckets = self.buckets()?;
        let key = encode_key(&msg.topic);
        if msg.payload.is_empty() {
            return buckets
                .retained
                .delete(key)
                .await
                .map_err(ClusterError::nats);
        }
        let record = RetainedRecord {
            origin: self.node.to_string(),
            message: msg.to_stored(),
        };
        let bytes = postcard::to_allocvec(&record).map_err(ClusterError::nats)?;
        buckets
            .retained
            .put(key, Bytes::from(bytes))
            .await
            .map(|_| ())
            .map_err(ClusterError::nats)
    }

    /// Mirrors the bucket into the broker's retained store: every entry
    /// now, then each change.
    pub(super) async fn watch_retained(self: Arc<Self>, broker: Arc<Broker>) {
        // Topics set from the bucket, to clear those deleted while the
        // watch was down (a restarted watch only replays what exists).
        let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            let Ok(buckets) = self.buckets() else { return };
            if !known.is_empty() {
                let now: std::collections::HashSet<String> =
                    match super::list_keys(&buckets.retained).await {
                        Ok(keys) => keys.into_iter().collect(),
                        Err(e) => {
                            self.logger
                                .warning(&format!("Cluster: cannot read retained messages: {e}."));
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                for key in known.iter().filter(|k| !now.contains(*k)) {
                    if let Some(topic) = decode_key(key) {
                        broker.retained.remove(&topic);
                    }
                }
                known.retain(|k| now.contains(k));
            }
            if !self.retained_loaded.load(Ordering::Acquire) {
                match super::empty_bucket(&buckets.retained).await {
                    Ok(true) => self.retained_loaded.store(true, Ordering::Release),
                    Ok(false) => {}
                    Err(()) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let mut watch = match buckets.retained.watch_with_history(">").await {
                Ok(watch) => watch,
                Err(e) => {
                    self.logger
                        .warning(&format!("Cluster: cannot watch retained messages: {e}."));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { break };
                // Marked before it is applied: a reader sees it an instant
                // later at worst.
                if entry.seen_current || entry.delta == 0 {
                    self.retained_loaded.store(true, Ordering::Release);
                }
                let Some(topic) = decode_key(&entry.key) else {
                    continue;
                };
                match entry.operation {
                    Operation::Put => {
                        let Ok(record) = postcard::from_bytes::<RetainedRecord>(&entry.value)
                        else {
                            self.logger.warning(&format!(
                                "Cluster: an unreadable retained message for {topic} was ignored."
                            ));
                            continue;
                        };
                        // This node's own changes are in its store already,
                        // except those of an earlier run, found while
                        // catching up.
                        if record.origin != *self.node || !entry.seen_current {
                            broker
                                .retained
                                .set(&topic, Arc::new(Message::from_stored(record.message)));
                        }
                        known.insert(entry.key.clone());
                    }
                    Operation::Delete | Operation::Purge => {
                        broker.retained.remove(&topic);
                        known.remove(&entry.key);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
