//! The streams and key-value buckets every node uses: created (or found)
//! at start, checked to take messages through this node's server, and
//! listed with a deadline.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;

use super::{sessions, Cluster, ClusterError};

/// How long listing a bucket's keys may take ([`list_keys`]).
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The key (or node, or client) that probes of the streams are sent to;
/// the streams refuse them ([`Cluster::streams_reachable`]).
const PROBE_KEY: &str = "_probe";

/// The buckets every node keeps.
pub(super) struct Buckets {
    pub(super) interest: kv::Store,
    pub(super) retained: kv::Store,
    pub(super) clients: kv::Store,
    pub(super) nodes: kv::Store,
    pub(super) sessions: kv::Store,
}

impl Cluster {
    /// Creates (or finds) the buckets and the queue and route streams.
    pub(super) async fn create_buckets(&self) -> Result<Buckets, ClusterError> {
        let node_ttl = Duration::from_secs(self.config.node_timeout_secs);
        let interest = self
            .bucket(self.names.interest_bucket(), Duration::ZERO)
            .await?;
        let retained = self
            .bucket(self.names.retained_bucket(), Duration::ZERO)
            .await?;
        let clients = self
            .bucket(self.names.clients_bucket(), Duration::ZERO)
            .await?;
        let nodes = self.bucket(self.names.nodes_bucket(), node_ttl).await?;
        let sessions = self
            .bucket(self.names.sessions_bucket(), Duration::ZERO)
            .await?;
        self.js
            .get_or_create_stream(sessions::queue_stream_config(
                self.names.queue_stream(),
                self.names.queue_stream_subjects(),
                self.config.replicas,
                self.max_queued_messages,
            ))
            .await
            .map_err(ClusterError::nats)?;
        self.js
            .get_or_create_stream(jetstream::stream::Config {
                name: self.names.route_stream(),
                subjects: vec![self.names.route_stream_subjects()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.config.replicas,
                ..Default::default()
            })
            .await
            .map_err(ClusterError::nats)?;
        Ok(Buckets {
            interest,
            retained,
            clients,
            nodes,
            sessions,
        })
    }

    /// Checks that every stream takes messages published through this
    /// node's server. A stream just created answers its API at once, but
    /// the servers learn where its subjects go a moment later: a publish
    /// before then finds no stream. Each probe expects another stream, so
    /// the stream refuses it (nothing is stored) and the refusal shows the
    /// way is there.
    pub(super) async fn streams_reachable(&self) -> Result<(), ClusterError> {
        let names = &self.names;
        let probes = [
            names.interest_bucket(),
            names.retained_bucket(),
            names.clients_bucket(),
            names.nodes_bucket(),
            names.sessions_bucket(),
        ]
        .map(|bucket| (format!("KV_{bucket}"), format!("$KV.{bucket}.{PROBE_KEY}")));
        let streams = [
            (names.queue_stream(), self.queue_subject(PROBE_KEY)),
            (names.route_stream(), names.stream_route(PROBE_KEY)),
        ];
        for (stream, subject) in probes.into_iter().chain(streams) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_STREAM,
                format!("{stream}-probe").as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(subject, headers, bytes::Bytes::new())
                .await
                .map_err(ClusterError::nats)?;
            match ack.await {
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::PublishErrorKind::StreamNotFound
                            | jetstream::context::PublishErrorKind::TimedOut
                            | jetstream::context::PublishErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(ClusterError::Nats(format!(
                        "stream {stream} does not take messages through this server yet ({e})"
                    )));
                }
                // Refused by the stream (or, from an older server that
                // does not check, stored under a key nobody reads).
                Ok(_) | Err(_) => {}
            }
        }
        Ok(())
    }

    /// A key-value bucket (history 1), created if missing. Its stream is
    /// created here, as the key-value layer does it, because the client's
    /// own bucket creation first asks for account information in a form
    /// nats-server 2.9 does not answer.
    async fn bucket(&self, bucket: String, max_age: Duration) -> Result<kv::Store, ClusterError> {
        if let Ok(store) = self.js.get_key_value(bucket.clone()).await {
            return Ok(store);
        }
        self.js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.config.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                duplicate_window: if max_age.is_zero() {
                    Duration::from_secs(120)
                } else {
                    max_age.min(Duration::from_secs(120))
                },
                ..Default::default()
            })
            .await
            .map_err(ClusterError::nats)?;
        self.js
            .get_key_value(bucket)
            .await
            .map_err(ClusterError::nats)
    }
}

/// The keys of `bucket` now, or an error when they cannot be read within
/// [`LIST_TIMEOUT`]. The client's listing ends when a delivered key says
/// nothing is left, or on an idle heartbeat once the server confirms it;
/// a key missed at the start of the listing (sent before its subscription
/// was in place) can leave it waiting for either while other nodes keep
/// writing to the bucket, so every listing has a deadline.
pub(super) async fn list_keys(bucket: &kv::Store) -> Result<Vec<String>, ClusterError> {
    use futures_util::TryStreamExt;
    let listing = async {
        let keys = bucket.keys().await.map_err(ClusterError::nats)?;
        keys.try_collect::<Vec<String>>()
            .await
            .map_err(ClusterError::nats)
    };
    tokio::time::timeout(LIST_TIMEOUT, listing)
        .await
        .map_err(|_| {
            ClusterError::Nats(format!(
                "listing the keys of {} took more than {} s",
                bucket.name,
                LIST_TIMEOUT.as_secs()
            ))
        })?
}

pub(super) async fn empty_bucket(bucket: &kv::Store) -> Result<bool, ()> {
    bucket
        .status()
        .await
        .map(|s| s.values() == 0)
        .map_err(|_| ())
}
