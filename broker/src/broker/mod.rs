//! The broker's shared state and the operations that span sessions:
//! publishing (routing into session queues), attaching and detaching
//! connections to sessions, session expiry, wills, and recovery from the
//! durable store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use tokio::sync::Mutex as AsyncMutex;

use crate::access::Access;
use crate::budget::MemoryBudget;
use crate::client::ClientHandle;
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::keepalive::KeepAliveWheel;
use crate::log::Logger;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::queue::QueueLimits;
use crate::retained::RetainedStore;
use crate::router::SubscriptionTable;
use crate::session::Session;
use crate::store::{Store, StoreError};

mod late_writes;
mod loading;
mod publish;
mod replicas;
mod restore;
mod routed;
mod sessions;

pub use self::restore::stored_subscription;
pub use self::routed::RoutedBatch;

/// Sessions are keyed by client id.
pub type ClientKey = Arc<str>;

const SHARDS: usize = 64;
/// How long a new connection waits for the old one to let go of a session.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Broker {
    /// The configuration in force: [`Broker::config`] reads it, a reload
    /// (SIGHUP, `POST /api/v1/reload`) replaces it ([`crate::reload`] says
    /// which keys take effect without a restart).
    config: ArcSwap<Config>,
    pub logger: Logger,
    pub router: SubscriptionTable<ClientKey>,
    pub retained: RetainedStore<Arc<Message>>,
    pub store: Option<Store>,
    pub access: Access,
    pub metrics: Metrics,
    pub started: Instant,
    /// Set when shutdown begins: readiness turns false.
    pub draining: AtomicBool,
    /// Asks the reload task to re-read every file now (SIGHUP, admin API).
    pub reload_requested: tokio::sync::Notify,
    /// The keep-alive deadlines of every connection.
    pub keep_alive: KeepAliveWheel,
    /// The bytes queued in every session, against the memory budget.
    pub budget: MemoryBudget,
    /// This node's part in a cluster (`[cluster]`), once started.
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    /// Looked up for every delivery: hashed with ahash, not SipHash.
    sessions: Vec<RwLock<HashMap<ClientKey, Arc<Session>, ahash::RandomState>>>,
    /// Serialises CONNECT handling per shard of client ids, so that two
    /// connections racing for one client id take over in order.
    connect_locks: Vec<AsyncMutex<()>>,
    hasher: ahash::RandomState,
    next_connection_id: AtomicU64,
    next_will_token: AtomicU64,
}

/// Who published a message: for `noLocal`, and to pause when a
/// subscriber falls behind.
#[derive(Clone, Copy)]
pub struct Publisher<'a> {
    pub client_id: &'a ClientKey,
    pub client: &'a Arc<ClientHandle>,
}

/// Where a published message went.
#[derive(Default)]
pub struct Routed {
    /// Sessions it was routed to.
    pub matched: usize,
    /// Connected subscribers above their high-water mark: the publisher
    /// stops reading PUBLISHes until they have room.
    pub congested: Vec<Arc<Session>>,
    /// In a cluster, with [`Broker::publish_pipelined`]: the message is
    /// stored in JetStream (for other nodes, offline sessions) once this
    /// resolves; acknowledge the publisher after.
    pub stored: Option<crate::cluster::Stored>,
}

/// Where a message being routed comes from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// A client of this node, or the broker itself.
    Here,
    /// Another node, for the given shared groups here.
    Routed(&'a [String]),
    /// A NATS client, on a device-data subject.
    Imported,
    /// The broker itself, for this node's sessions only (its own `$SYS`
    /// figures).
    Local,
}

/// Why a message could not be taken on.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Result of attaching a connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// A previous connection of the same client id was closed.
    pub took_over: bool,
}

impl Broker {
    pub fn new(config: Config, logger: Logger, store: Option<Store>, access: Access) -> Broker {
        let budget = usize::try_from(config.limits.memory_budget_bytes).unwrap_or(usize::MAX);
        Broker {
            config: ArcSwap::from_pointee(config),
            logger,
            router: SubscriptionTable::new(),
            retained: RetainedStore::new(),
            store,
            access,
            metrics: Metrics::new(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            reload_requested: tokio::sync::Notify::new(),
            keep_alive: KeepAliveWheel::default(),
            budget: MemoryBudget::new(budget),
            cluster: std::sync::OnceLock::new(),
            sessions: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            connect_locks: (0..SHARDS).map(|_| AsyncMutex::new(())).collect(),
            hasher: ahash::RandomState::new(),
            next_connection_id: AtomicU64::new(1),
            next_will_token: AtomicU64::new(1),
        }
    }

    /// The configuration in force. Cheap; do not hold it across an await.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts a reloaded configuration in force ([`crate::reload`]).
    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// This node's part in a cluster, when there is one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Joins the cluster (at start, before sessions are restored).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    fn shard(&self, client_id: &str) -> usize {
        (self.hasher.hash_one(client_id) as usize) % SHARDS
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions[self.shard(client_id)]
            .read()
            .get(client_id)
            .cloned()
    }

    /// All sessions (for `$SYS` counts and the admin API).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits::from_limits(&self.config().limits)
    }
}
