//! Several replicas of one broker, sharing one NATS with JetStream.
//!
//! What lives where (docs/clustering.md has the whole picture):
//! - [`interest`]: each node's filters, in a key-value bucket every node
//!   mirrors; a publish is routed to the nodes that want it, not broadcast;
//! - [`routing`]: the messages themselves, node to node: core NATS for
//!   QoS 0, a JetStream work queue per node for QoS 1/2 (the publisher is
//!   acknowledged once the stream has the message), and the device-data
//!   subjects NATS clients read and write ([`subject`]);
//! - [`retained`]: retained messages, in a bucket every node mirrors;
//! - [`clients`]: which node holds which client id, and take-over of a
//!   client that connects to another node;
//! - [`sessions`], [`queue`]: offline persistent sessions (a record in a
//!   bucket, a queue subject in a stream), handed off and loaded back;
//!   [`mirror`]: the copy of a session's queue the node its client left
//!   keeps, read instead of the stream when the client comes back there;
//! - [`nodes`]: which nodes are alive;
//! - `buckets`: creating the streams and buckets, checking that they
//!   take messages through this node's server, listing their keys.
//!
//! A broker without `[cluster]` has none of this: [`crate::broker::Broker`]
//! holds no `Cluster`, and publishing never looks at NATS.

pub mod backoff;
mod batch;
mod buckets;
pub mod clients;
mod config;
pub mod envelope;
pub mod handover;
pub mod interest;
mod lost_nodes;
pub mod mirror;
pub mod names;
pub mod nodes;
mod plan_cache;
mod plans;
pub mod queue;
pub mod ready;
pub mod retained;
pub mod routing;
pub mod sessions;
pub mod subject;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::broker::Broker;
use crate::log::Logger;
use crate::queue::DROP_LOG_INTERVAL;

use self::backoff::Backoff;
use self::buckets::{empty_bucket, list_keys, Buckets};
pub use self::config::{valid_token, ClusterConfig, ClusterTlsConfig};
use self::interest::Interest;
pub use self::interest::Plan;
use self::names::Names;
use self::nodes::Nodes;
pub use self::plans::PlanGuard;
use self::plans::PlansInFlight;
pub use self::routing::Stored;

/// How long a JetStream or key-value request may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cluster cannot do something.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("the cluster is not connected to NATS")]
    Unavailable,
    #[error("node {0} keeps the session for now: the cluster would not take it yet")]
    HeldElsewhere(String),
}

impl ClusterError {
    fn nats(e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Nats(e.to_string())
    }
}

/// This node's part in the cluster.
pub struct Cluster {
    config: ClusterConfig,
    names: Names,
    node: Arc<str>,
    client: async_nats::Client,
    js: Arc<jetstream::Context>,
    /// QoS 0 messages to other nodes, gathered into batches for the task
    /// that sends them ([`batch`]).
    outbox: batch::Outbox,
    /// Set once the streams and buckets exist and the watchers run.
    buckets: tokio::sync::OnceCell<Buckets>,
    interest: Interest,
    nodes: Nodes,
    /// Connected to NATS now (as the client last reported).
    connected: AtomicBool,
    /// How many times this node may have missed what other nodes sent it,
    /// or been taken for gone by them: its NATS connection dropped, a
    /// subscription dropped messages, its liveness key went unwritten for
    /// half the node timeout. A copy of a session's queue is the session
    /// only while this stays as it was when the client left
    /// ([`mirror`]).
    interruptions: Arc<std::sync::atomic::AtomicU64>,
    /// The interest and retained buckets were read through once: until
    /// then this node would route as if no other node had subscribers,
    /// and give new subscriptions no retained messages.
    interest_loaded: AtomicBool,
    /// The newest interest-bucket revision this node's table has applied.
    interest_applied: std::sync::atomic::AtomicU64,
    interest_applied_changed: tokio::sync::Notify,
    /// QoS 1/2 messages planned and not yet stored, by revision.
    plans: Arc<PlansInFlight>,
    retained_loaded: AtomicBool,
    /// This run of the node (random).
    run: u64,
    /// The next cluster id of a message (from a random start).
    next_message_id: std::sync::atomic::AtomicU64,
    /// Largest queue of an offline session in NATS.
    max_queued_messages: i64,
    /// Copies of the queues of sessions whose clients left this node.
    mirrors: mirror::Mirrors,
    /// Sessions this node handed off but still routes to for a moment:
    /// their messages go to their queue subjects.
    /// With the interest-bucket revision of each one's session interest.
    forwarding: parking_lot::Mutex<std::collections::HashMap<Arc<str>, u64>>,
    /// Sessions whose queue this node read into the session and has not
    /// yet emptied (NATS did not answer): the stream sequence read up to.
    consumed: parking_lot::Mutex<std::collections::HashMap<Arc<str>, u64>>,
    /// Sessions loaded here that still pick up what was written to their
    /// queue meanwhile: the cluster ids of the messages given to each
    given: handover::Given,
    forwarding_count: std::sync::atomic::AtomicUsize,
    /// Sessions being handed to the cluster now (a drain waits for them).
    pending_hand_offs: std::sync::atomic::AtomicUsize,
    /// Session records to write, in order.
    session_writes: tokio::sync::mpsc::UnboundedSender<(Arc<str>, sessions::SessionRecord)>,
    /// Routed messages no session here took, for the log.
    unmatched_log: LogEvery,
    /// The stream sequence of the last routed QoS 1/2 message delivered
    /// here, and the last one routed here as last read (with when).
    routed_done: std::sync::atomic::AtomicU64,
    last_routed: tokio::sync::Mutex<Option<(tokio::time::Instant, u64)>>,
    logger: Logger,
}

/// Waits (at most `limit`, looking every 20 ms) until `count` is 0; false
/// when it is not by then.
async fn until_zero(count: &std::sync::atomic::AtomicUsize, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while count.load(Ordering::Acquire) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Counts events and says when to log them: the first, then at most once
/// per [`DROP_LOG_INTERVAL`], with how many happened since the last line.
#[derive(Default)]
struct LogEvery(parking_lot::Mutex<(Option<Instant>, u64)>);

impl LogEvery {
    fn note(&self) -> Option<u64> {
        let mut state = self.0.lock();
        state.1 += 1;
        if state.0.is_some_and(|at| at.elapsed() < DROP_LOG_INTERVAL) {
            return None;
        }
        state.0 = Some(Instant::now());
        Some(std::mem::take(&mut state.1))
    }
}

impl Cluster {
    /// Connects to NATS (in the background: the broker serves its own
    /// clients meanwhile) and starts the cluster's tasks. Fails only on
    /// configuration that cannot work (an unreadable credentials file).
    pub async fn start(
        config: &ClusterConfig,
        node: &str,
        broker: &Arc<Broker>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let logger = broker.logger.clone();
        let names = Names::new(&config.name, node);
        let node: Arc<str> = Arc::from(node);
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let interruptions = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = interruptions.clone();
        let options = connect_options(config, node.clone())
            .await?
            .event_callback(move |event| {
                // Counted here, before the event is queued for the log:
                // a copy must not be taken for the session after either.
                if matches!(
                    event,
                    async_nats::Event::Disconnected | async_nats::Event::SlowConsumer(_)
                ) {
                    counted.fetch_add(1, Ordering::AcqRel);
                }
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            });
        let client = options
            .connect(config.servers.clone())
            .await
            .map_err(ClusterError::nats)?;
        let js = Arc::new(
            jetstream::ContextBuilder::new()
                .timeout(REQUEST_TIMEOUT)
                .build(client.clone()),
        );
        let run = random_u64();
        let send_failures = broker.metrics.cluster_send_failures.clone();
        let (route_names, ack_names, me) = (names.clone(), names.clone(), node.clone());
        let stall_logger = broker.logger.clone();
        let stall_log = LogEvery::default();
        let (outbox, send_batches) = batch::Outbox::new(batch::Link {
            client: client.clone(),
            subject: move |to: &str| route_names.core_route(to),
            acks: move |to: &str| ack_names.core_acks(&me, run, to),
            on_error: move |_| send_failures.inc(),
            on_stall: move |to: &str| {
                if let Some(count) = stall_log.note() {
                    stall_logger.warning(&format!(
                        "Cluster: {count} time(s) a node ({to}) did not say within a second that it had routed the QoS 0 messages sent to it; sent on all the same."
                    ));
                }
            },
        });
        tokio::spawn(send_batches);
        let (interest, changes) = Interest::new(node.clone());
        let (session_writes, session_writes_rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            names,
            node,
            client,
            js,
            outbox,
            buckets: tokio::sync::OnceCell::new(),
            interest,
            nodes: Nodes::default(),
            connected: AtomicBool::new(false),
            interruptions,
            interest_loaded: AtomicBool::new(false),
            interest_applied: std::sync::atomic::AtomicU64::new(0),
            interest_applied_changed: tokio::sync::Notify::new(),
            plans: Arc::default(),
            retained_loaded: AtomicBool::new(false),
            run,
            next_message_id: std::sync::atomic::AtomicU64::new(random_u64()),
            max_queued_messages: i64::from(broker.config().limits.max_queued_messages),
            mirrors: mirror::Mirrors::default(),
            forwarding: parking_lot::Mutex::new(std::collections::HashMap::new()),
            consumed: parking_lot::Mutex::new(std::collections::HashMap::new()),
            given: handover::Given::default(),
            forwarding_count: std::sync::atomic::AtomicUsize::new(0),
            pending_hand_offs: std::sync::atomic::AtomicUsize::new(0),
            session_writes,
            unmatched_log: LogEvery::default(),
            routed_done: std::sync::atomic::AtomicU64::new(0),
            last_routed: tokio::sync::Mutex::new(None),
            logger,
        });
        tokio::spawn(cluster.clone().watch_connection(events_rx, broker.clone()));
        tokio::spawn(cluster.clone().set_up(broker.clone(), changes));
        tokio::spawn(
            cluster
                .clone()
                .write_sessions(session_writes_rx, broker.clone()),
        );
        Ok(cluster)
    }

    /// The messages given to sessions in their hand-over here.
    pub fn given(&self) -> &handover::Given {
        &self.given
    }

    /// This node's name.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Connected to NATS, with the streams and buckets in place and the
    /// other nodes' interest and the retained messages read.
    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Acquire)
            && self.buckets.initialized()
            && self.interest_loaded.load(Ordering::Acquire)
            && self.retained_loaded.load(Ordering::Acquire)
    }

    /// Connected to NATS now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether the node and run of `holder` (`<node>/<run>`, as
    /// [`Cluster::holder_tag`]) is known to be alive.
    pub fn is_holder_alive(&self, holder: &str) -> bool {
        match holder.split_once('/') {
            Some((node, run)) => match run.parse() {
                Ok(run) => self.nodes.is_alive_in_run(node, run),
                Err(_) => self.nodes.is_alive(node),
            },
            None => self.nodes.is_alive(holder),
        }
    }

    /// Nodes known to be alive, this one included.
    pub fn alive_nodes(&self) -> usize {
        self.nodes.alive_count()
    }

    /// This node's interest and every node's, as far as known.
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// Where a message on `topic` goes, and, for QoS 1/2, the plan's place
    /// among those in flight: the message keeps it until what it sent is
    /// stored ([`Stored::hold`]). A QoS 0 message is sent to no stream, so
    /// nothing waits for its plan.
    pub fn plan(&self, topic: &str, qos: crate::codec::QoS) -> (Plan, Option<PlanGuard>) {
        // Nobody else wants anything: the message goes into no stream, so
        // there is nothing for a ping to wait for, even if the table is
        // about to say otherwise (the plan was made before).
        if self.interest.is_empty() {
            return (Plan::default(), None);
        }
        let guard = (qos != crate::codec::QoS::AtMostOnce)
            .then(|| self.plans.begin(&self.interest_applied));
        let nodes = &self.nodes;
        let me = &self.node;
        let plan = self
            .interest
            .plan(topic, &|node: &Arc<str>| node == me || nodes.is_alive(node));
        (plan, guard)
    }

    /// A session hand-off begins; the guard marks its end.
    pub fn hand_off_started(self: &Arc<Self>) -> HandOffGuard {
        self.pending_hand_offs.fetch_add(1, Ordering::AcqRel);
        HandOffGuard(self.clone())
    }

    /// Waits (at most `limit`) until no session is being handed off.
    pub async fn hand_offs_done(&self, limit: Duration) -> bool {
        until_zero(&self.pending_hand_offs, limit).await
    }

    /// Waits (at most `limit`) until this node follows no handed-off
    /// session any more (each said so in its queue).
    pub async fn forwarding_done(&self, limit: Duration) -> bool {
        until_zero(&self.forwarding_count, limit).await
    }

    /// This node leaves the cluster for good (end of a drain): its filters
    /// and its liveness key go, so nothing more is routed to it and nobody
    /// takes it for dead.
    pub async fn leave(&self) {
        self.forget_node_interest(&self.node, None).await;
        if let Ok(buckets) = self.buckets() {
            let _ = buckets.nodes.delete(&*self.node).await;
        }
        let _ = self.client.flush().await;
    }

    /// Another live node with a member of shared group `group` for
    /// `topic`.
    pub fn other_node_serving(&self, topic: &str, group: &str) -> Option<Arc<str>> {
        let nodes = &self.nodes;
        self.interest
            .other_node_serving(topic, group, &|n: &Arc<str>| nodes.is_alive(n))
    }

    fn buckets(&self) -> Result<&Buckets, ClusterError> {
        self.buckets.get().ok_or(ClusterError::Unavailable)
    }

    /// Logs connection changes and keeps the connected flag.
    async fn watch_connection(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
        broker: Arc<Broker>,
    ) {
        // Slow-consumer events come once per dropped message: counted
        // each, logged once a minute.
        let mut receive_drops_logged: Option<Instant> = None;
        let mut receive_drops_unlogged = 0u64;
        while let Some(event) = events.recv().await {
            match event {
                async_nats::Event::SlowConsumer(_) => {
                    broker.metrics.cluster_receive_drops.inc();
                    receive_drops_unlogged += 1;
                    if receive_drops_logged.is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL) {
                        self.logger.warning(&format!(
                            "Cluster: {receive_drops_unlogged} QoS 0 messages from other nodes were dropped: this node reads them slower than they come."
                        ));
                        receive_drops_logged = Some(Instant::now());
                        receive_drops_unlogged = 0;
                    }
                }
                async_nats::Event::Connected => {
                    self.connected.store(true, Ordering::Release);
                    broker.metrics.cluster_connected.set(1);
                    self.logger.info("Cluster: connected to NATS.");
                }
                async_nats::Event::Disconnected => {
                    self.connected.store(false, Ordering::Release);
                    broker.metrics.cluster_connected.set(0);
                    self.logger.warning(
                        "Cluster: lost NATS; serving local clients only until it is back.",
                    );
                }
                other => self.logger.warning(&format!("Cluster: NATS {other}.")),
            }
        }
    }

    /// Creates (or finds) the streams and buckets, retrying until NATS
    /// answers, then starts the watchers and receivers.
    async fn set_up(
        self: Arc<Self>,
        broker: Arc<Broker>,
        changes: tokio::sync::mpsc::UnboundedReceiver<interest::Change>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let buckets = loop {
            let created = match self.create_buckets().await {
                Ok(buckets) => self.streams_reachable().await.map(|()| buckets),
                Err(e) => Err(e),
            };
            match created {
                Ok(buckets) => break buckets,
                Err(e) => {
                    self.logger.warning(&format!(
                        "Cluster: cannot set up the streams and buckets yet: {e}."
                    ));
                    backoff.wait().await;
                }
            }
        };
        if self.buckets.set(buckets).is_err() {
            return;
        }
        // The connection event may have come before the callback was in
        // place.
        if self.client.connection_state() == async_nats::connection::State::Connected {
            self.connected.store(true, Ordering::Release);
            broker.metrics.cluster_connected.set(1);
        }
        tokio::spawn(self.clone().write_interest(changes));
        tokio::spawn(self.clone().watch_interest());
        tokio::spawn(self.clone().watch_retained(broker.clone()));
        tokio::spawn(self.clone().heartbeat(broker.clone()));
        tokio::spawn(self.clone().watch_node_keys());
        tokio::spawn(self.clone().judge_nodes(broker.clone()));
        tokio::spawn(self.clone().receive_core(broker.clone()));
        tokio::spawn(self.clone().receive_core_acks());
        tokio::spawn(self.clone().receive_stream(broker.clone()));
        tokio::spawn(self.clone().serve_takeovers(broker.clone()));
        tokio::spawn(self.clone().answer_pings());
        tokio::spawn(self.clone().expire_sessions());
        // Clients this node held before it restarted are gone: their wills
        // are due and their sessions are kept in the cluster.
        self.take_over_clients_of(
            &broker,
            &self.node.clone(),
            lost_nodes::ClientsOf::RunsBefore(self.run),
        )
        .await;
        if self.config.import_subjects {
            tokio::spawn(self.clone().import(broker.clone()));
        }
        self.logger.info(&format!(
            "Cluster: node {} of cluster {} is ready.",
            self.node, self.names.cluster
        ));
    }
}

/// Marks a session hand-off in progress (see [`Cluster::hand_offs_done`]).
pub struct HandOffGuard(Arc<Cluster>);

impl Drop for HandOffGuard {
    fn drop(&mut self) {
        self.0.pending_hand_offs.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A random 64-bit number (message ids start there on each run).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return crate::message::now_ms() << 20;
    }
    u64::from_le_bytes(bytes)
}

/// The connection options from the configuration: credentials and TLS
/// files are read here, so a missing file fails the start.
async fn connect_options(
    config: &ClusterConfig,
    node: Arc<str>,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .map_err(|source| ClusterError::File {
                what,
                path: path.display().to_string(),
                source,
            })
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("kubemqtt {} {node}", config.name))
        // Our own publishes are routed by us: never echo them back.
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .subscription_capacity(64 * 1024);
    if let (Some(user), Some(path)) = (&config.user, &config.password_file) {
        options = options.user_and_password(user.clone(), read("the NATS password file", path)?);
    }
    if let Some(path) = &config.token_file {
        options = options.token(read("the NATS token file", path)?);
    }
    if let Some(path) = &config.nkey_seed_file {
        options = options.nkey(read("the NATS NKey seed file", path)?);
    }
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| ClusterError::File {
                what: "the NATS credentials file",
                path: path.display().to_string(),
                source,
            })?;
    }
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_logged_first_then_once_an_interval_with_their_count() {
        let log = LogEvery::default();
        assert_eq!(log.note(), Some(1), "the first is logged at once");
        assert_eq!(log.note(), None);
        assert_eq!(log.note(), None);
        // An interval later, the next line counts what came meanwhile.
        log.0.lock().0 = Some(Instant::now() - DROP_LOG_INTERVAL);
        assert_eq!(log.note(), Some(3));
        assert_eq!(log.note(), None);
    }
}
