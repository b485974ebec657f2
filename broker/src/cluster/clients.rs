//! One client id, one connection, cluster-wide.
//!
//! The clients bucket says which node holds each client id (key: the
//! encoded client id), whether it holds it still, and its will. A node
//! that accepts a CONNECT writes the key; when the key named another
//! node still holding the client (connected there, or its offline session
//! kept there: see `mirror`), it asks that node to let the client go
//! (`_KMQ.<name>.takeover.<node>`), which closes the connection (5.0:
//! DISCONNECT 0x8E), hands a persistent session to the cluster and
//! answers once it has: "ok", or "kept" when the cluster would not take
//! the session (then the claim is undone and the CONNECT refused, 0x88,
//! until it does). A CONNECT with a clean start wants no session: its
//! request says so ([`DISCARD_HEADER`]), and the node that held the client
//! ends the session instead of handing it over; it answers "ended" when
//! the cluster holds nothing of that session (the claimant then has
//! nothing to delete there: one round trip less). When a node dies, the
//! first survivor to rewrite each of its held clients' keys publishes that
//! client's will.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select, Either};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::store::StoredMessage;

use super::names::encode_key;
use super::{Cluster, ClusterError};

/// How long a node waits for another to let a client go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a node that claimed a client still listens for the previous
/// node's answer after [`TAKEOVER_TIMEOUT`]: that node hands the session
/// over late (a busy node, a slow NATS), and what it hands over then is
/// read again ([`LateRelease`]).
const LATE_RELEASE_LIMIT: Duration = Duration::from_secs(60);

/// How long a node whose claim the previous node answered "kept" after
/// [`TAKEOVER_TIMEOUT`] waits before asking again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The previous node's answer to a take-over request: it let the client
/// go (its session, if persistent, is in the cluster).
const RELEASED: &[u8] = b"ok";

/// The previous node's answer when it closed the connection but could not
/// hand the session to the cluster: it keeps the session for now.
const KEPT: &[u8] = b"kept";

/// The previous node's answer to a request with [`DISCARD_HEADER`] when
/// it ended the session and the cluster holds nothing of it (it started
/// clean there and was never persistent). A node that does not know the
/// answer takes it for [`RELEASED`], and deletes what the cluster holds.
const ENDED: &[u8] = b"ended";

/// The header of a take-over request whose client starts clean: the node
/// that held it ends its session rather than hand it to the cluster (a
/// node that does not know the header hands it over, or keeps it).
const DISCARD_HEADER: &str = "Kmq-Discard-Session";

/// The previous node's answer to a claim it did not give in time:
/// resolves when it has let the client go (its session is in the
/// cluster), or after [`LATE_RELEASE_LIMIT`]. While it answers "kept",
/// it is asked again.
pub type LateRelease = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Told the CONNACK's Session Present flag as soon as a claim knows that
/// another node held the client, before that node answers (as
/// nats-server's MQTT does): when the client starts clean (no session),
/// or when the session's record in the cluster (read beside the client's
/// entry) says the client is connected with a persistent session, which
/// a take-over of a connected client finds (session present). The answer
/// and the session follow before the client's first packet is read;
/// should that node keep the session after all, the connection is closed
/// (5.0: DISCONNECT 0x89) rather than refused. A client that left its
/// node is answered after it, as before (refused 0x88 while it keeps the
/// session). Dropped unsent otherwise.
pub type EarlyConnack = tokio::sync::oneshot::Sender<bool>;

/// What claiming a client id found out about the node that held it
/// before (when another node did).
#[derive(Default)]
pub struct Claimed {
    /// That node's answer, when it did not let the client go in time.
    pub late: Option<LateRelease>,
    /// That node and run (`<node>/<run>`, as [`Cluster::holder_tag`]): it
    /// may still forward messages into the session's queue, and says when
    /// it stops.
    pub previous: Option<String>,
    /// The client starts afresh and the cluster holds nothing of its
    /// earlier session any more: the claim deleted it, or the node that
    /// held the client ended it there. Nothing is left to delete.
    pub session_gone: bool,
    /// This node, in this run, was the last to hold the client: no other
    /// node loaded or emptied its session's queue since it left here.
    pub was_here: bool,
    /// Moreover the claim replaced the very entry this node wrote when the
    /// client left ([`Cluster::note_held`]): nobody wrote it since, so
    /// the session's record is still the one this node handed off.
    pub unchanged: bool,
    /// The claim was made without a word to NATS
    /// ([`Cluster::resumable_here`]): the entry this node wrote when the
    /// client left, at this revision, names this node still. Checked
    /// once the client has its messages ([`Cluster::still_held_here`]).
    pub unconfirmed: Option<u64>,
}

/// A client id's entry in the clients bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The node that holds (or last held) the client.
    pub node: String,
    /// Which run of that node (a node that restarts does not hold its
    /// earlier run's clients).
    pub run: u64,
    /// The node holds the client still: it is connected there, or its
    /// persistent session stays there because the cluster would not take
    /// it. A claim asks that node to let it go.
    pub held: bool,
    /// The will of the connection, published by a survivor if the node
    /// dies with the client connected.
    pub will: Option<StoredWill>,
}

/// A will as the clients bucket keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWill {
    pub message: StoredMessage,
    /// Seconds to wait before publishing (5.0 Will Delay Interval, capped
    /// by the session expiry).
    pub delay_secs: u32,
}

/// What became of a client another node took over, as the node that
/// held it answers: a take-over request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Let go: its session, if persistent, is in the cluster.
    Released,
    /// Its connection closed, but the cluster would not take its session:
    /// it stays on that node for now.
    Kept,
    /// The client starts clean: its session ended, and the cluster holds
    /// nothing of it.
    Ended,
}

impl Answer {
    fn payload(self) -> &'static [u8] {
        match self {
            Answer::Released => RELEASED,
            Answer::Kept => KEPT,
            Answer::Ended => ENDED,
        }
    }
}

/// Asks a node (its take-over `subject`) to let `client_id` go; waits for
/// its answer at most [`LATE_RELEASE_LIMIT`]. A node that does not answer
/// (gone, or cut off from NATS) lets it go as far as anyone can tell.
/// With `discard`, the client starts clean: its session ends there.
fn ask(
    client: async_nats::Client,
    subject: String,
    client_id: &str,
    discard: bool,
) -> impl std::future::Future<Output = Answer> + Send + 'static {
    let mut request = async_nats::Request::new()
        .payload(Bytes::copy_from_slice(client_id.as_bytes()))
        .timeout(Some(LATE_RELEASE_LIMIT));
    if discard {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(DISCARD_HEADER, "1");
        request = request.headers(headers);
    }
    async move {
        match client.send_request(subject, request).await {
            Ok(reply) if reply.payload.as_ref() == KEPT => Answer::Kept,
            Ok(reply) if reply.payload.as_ref() == ENDED => Answer::Ended,
            _ => Answer::Released,
        }
    }
}

impl ClientRecord {
    pub(super) fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).unwrap_or_default())
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<ClientRecord> {
        postcard::from_bytes(bytes).ok()
    }
}

impl Cluster {
    /// A CONNECT for `client_id` was accepted here: records it, and has the
    /// node that held it connected let it go first. Without NATS the client
    /// is let in all the same (this node's clients keep being served).
    /// When that node does not answer within [`TAKEOVER_TIMEOUT`], its late
    /// answer is returned to wait for. When it answers that it keeps the
    /// client's session (the cluster would not take it), the claim is
    /// undone and [`ClusterError::HeldElsewhere`] returned: the client is
    /// refused until that node can let the session go. A client that
    /// wants no session from the cluster (`fresh`: a clean start, or a
    /// session that ends with its connection) is never refused: that node
    /// ends the session it had, and what the cluster holds of it goes.
    /// `early` is told when the CONNACK may go before that node's answer
    /// ([`EarlyConnack`]).
    pub async fn claim(
        &self,
        client_id: &str,
        will: Option<StoredWill>,
        fresh: bool,
        early: Option<EarlyConnack>,
    ) -> Result<Claimed, ClusterError> {
        let Ok(buckets) = self.buckets() else {
            return Ok(Claimed::default());
        };
        // A client back on this node, which kept its offline session: no
        // other node can have claimed it without asking this one (which
        // gives the copy up), so nothing needs writing before its
        // messages go (its entry says this node holds it already). Not
        // with a will, which the entry is to carry.
        if will.is_none() && !fresh {
            if let Some(revision) = self.resumable_here(client_id) {
                return Ok(Claimed {
                    was_here: true,
                    unchanged: true,
                    unconfirmed: Some(revision),
                    ..Claimed::default()
                });
            }
        }
        let key = encode_key(client_id);
        let record = self.own_record(true, will);
        // Otherwise the claim is one write, made only if nobody wrote the
        // entry since (then it is read as below).
        if let Some(held) = self.held_revision(client_id) {
            if buckets
                .clients
                .update(key.clone(), record.encode(), held)
                .await
                .is_ok()
            {
                return Ok(Claimed {
                    was_here: true,
                    unchanged: true,
                    ..Claimed::default()
                });
            }
        }
        // Whether the session's record says its client is connected (with
        // a persistent session) is read beside the entry when the CONNACK
        // may go early with the session present; a node to ask is asked as
        // soon as the entry is read, not after both.
        let early_possible = early.is_some() && !fresh;
        let connected_session =
            async { early_possible && self.records_connected_session(client_id).await };
        let entry = std::pin::pin!(buckets.clients.entry(key.clone()));
        let connected_session = std::pin::pin!(connected_session);
        // The record's answer, or its read still under way.
        let (entry, connected_session) = match select(entry, connected_session).await {
            Either::Left((entry, reading)) => (entry, Err(reading)),
            Either::Right((connected, entry)) => (entry.await, Ok(connected)),
        };
        let previous = match entry {
            Ok(entry) => entry.and_then(|e| ClientRecord::decode(&e.value)),
            Err(e) => {
                self.logger
                    .warning(&format!("Cluster: cannot look up client {client_id}: {e}."));
                None
            }
        };
        // Written while the node that held the client lets it go: that
        // node's own "left" write is a compare-and-set, which a claim in
        // between wins, so the order of the two does not matter.
        let record_claim = async {
            match buckets.clients.put(key.clone(), record.encode()).await {
                Ok(revision) => Some(revision),
                Err(e) => {
                    self.logger
                        .warning(&format!("Cluster: cannot record client {client_id}: {e}."));
                    None
                }
            }
        };
        let was_here = previous.as_ref().is_some_and(|p| p.node == *self.node);
        let mut claimed = Claimed {
            late: None,
            previous: None,
            session_gone: false,
            unchanged: false,
            unconfirmed: None,
            was_here: previous
                .as_ref()
                .is_some_and(|p| p.node == *self.node && p.run == self.run),
        };
        let previous = previous.filter(|p| p.node != *self.node);
        claimed.previous = previous.as_ref().map(|p| format!("{}/{}", p.node, p.run));
        // A client its node let go of needs no asking. Its session, if
        // any, is in the cluster (a node hands it over before letting the
        // client go): a fresh start deletes it while the claim is written
        // (not when it was here: this node may still forward to it).
        let Some(previous) = previous.filter(|p| p.held) else {
            if fresh && !was_here {
                let (_, gone) = tokio::join!(record_claim, self.delete_session(client_id));
                claimed.session_gone = gone;
            } else {
                record_claim.await;
            }
            return Ok(claimed);
        };
        let mut answer = Box::pin(ask(
            self.client.clone(),
            self.names.takeover(&previous.node),
            client_id,
            fresh,
        ));
        // Polled once, the request is on its way (to the NATS
        // connection's writer) before anything else: that node closes the
        // old connection as soon as it has it.
        let answered_at_once = (&mut answer).now_or_never();
        let connected_session = match connected_session {
            Ok(connected) => connected,
            Err(reading) => reading.await,
        };
        // The CONNACK may go now, while the claim is written and that node
        // lets the client go: with no session when the client starts clean
        // (that node ends its session, never keeps it), with the session
        // present when that node had the client connected with a
        // persistent session. (The claim is written whatever the CONNACK
        // says; a claim that cannot be written lets the client in all the
        // same.)
        if let Some(early) = early.filter(|_| fresh || connected_session) {
            let _ = early.send(!fresh);
        }
        let (revision, answered) = tokio::join!(record_claim, async {
            match answered_at_once {
                Some(answer) => Ok(answer),
                None => tokio::time::timeout(TAKEOVER_TIMEOUT, &mut answer).await,
            }
        });
        match answered {
            Ok(Answer::Released) => {}
            Ok(Answer::Ended) => claimed.session_gone = true,
            Ok(Answer::Kept) => {
                self.undo_claim(client_id, &previous, revision).await;
                return Err(ClusterError::HeldElsewhere(previous.node));
            }
            Err(_) => {
                self.logger.warning(&format!(
                    "Cluster: node {} did not let client {client_id} go within {TAKEOVER_TIMEOUT:?}; what it hands over later follows.",
                    previous.node
                ));
                claimed.late = Some(self.late_release(&previous.node, client_id, fresh, answer));
            }
        }
        Ok(claimed)
    }

    /// `node`'s late answer to a claim (`first`, the request in flight):
    /// asked again while it keeps the session, until it lets it go or
    /// [`LATE_RELEASE_LIMIT`] has passed.
    fn late_release(
        &self,
        node: &str,
        client_id: &str,
        discard: bool,
        first: impl std::future::Future<Output = Answer> + Send + 'static,
    ) -> LateRelease {
        let client = self.client.clone();
        let subject = self.names.takeover(node);
        let logger = self.logger.clone();
        let node = node.to_string();
        let client_id = client_id.to_string();
        Box::pin(async move {
            let give_up = tokio::time::Instant::now() + LATE_RELEASE_LIMIT;
            let mut answer = first.await;
            while answer == Answer::Kept && tokio::time::Instant::now() < give_up {
                logger.warning(&format!(
                    "Cluster: node {node} keeps the session of {client_id} (the cluster would not take it yet); asking again."
                ));
                tokio::time::sleep(ASK_AGAIN_AFTER).await;
                answer = ask(client.clone(), subject.clone(), &client_id, discard).await;
            }
        })
    }

    /// Puts back the record of the node that keeps `client_id`'s session
    /// (over this node's claim, `revision`, unless another claim came
    /// since), so that the next claim asks that node again.
    async fn undo_claim(&self, client_id: &str, previous: &ClientRecord, revision: Option<u64>) {
        let Ok(buckets) = self.buckets() else { return };
        let held = ClientRecord {
            node: previous.node.clone(),
            run: previous.run,
            held: true,
            will: None,
        };
        let key = encode_key(client_id);
        let restored = match revision {
            Some(revision) => buckets
                .clients
                .update(key, held.encode(), revision)
                .await
                .map(|_| ())
                .map_err(ClusterError::nats),
            // This node's claim was not written: the record is still the
            // one the other node left.
            None => Ok(()),
        };
        if let Err(e) = restored {
            self.logger.warning(&format!(
                "Cluster: cannot record that node {} keeps the session of {client_id}: {e}.",
                previous.node
            ));
        }
    }

    /// The client left this node and its session is in the cluster: its
    /// entry says so (unless another node has claimed it since). While
    /// this node keeps a copy of the session's queue, the entry says this
    /// node holds the client still (a claim elsewhere asks it, and it
    /// gives the copy up): see `mirror`.
    pub async fn release(&self, client_id: &str) {
        let keep = self.has_mirror(client_id);
        if let Some(revision) = self.rewrite_own(client_id, keep).await {
            if keep {
                self.note_held(client_id, revision);
            }
        }
    }

    /// The copy of `client_id`'s queue ended by itself: its entry, which
    /// this node wrote at `revision` as it kept the copy, says the client
    /// is let go (unless it was written since).
    pub(super) async fn let_go_held(&self, client_id: &str, revision: u64) {
        let Ok(buckets) = self.buckets() else { return };
        let record = self.own_record(false, None);
        // A failure leaves the entry held here: claims keep asking this
        // node, which answers at once.
        if let Err(e) = buckets
            .clients
            .update(encode_key(client_id), record.encode(), revision)
            .await
        {
            self.logger.info(&format!(
                "Cluster: the entry of client {client_id} still names this node (its copy of the session ended; claims ask this node): {e}."
            ));
        }
    }

    /// This node's entry for a client, in this run.
    fn own_record(&self, held: bool, will: Option<StoredWill>) -> ClientRecord {
        ClientRecord {
            node: self.node.to_string(),
            run: self.run,
            held,
            will,
        }
    }

    /// `client_id`'s entry as it is now (none when there is none, or it
    /// was deleted).
    async fn current_entry(
        &self,
        client_id: &str,
    ) -> Result<Option<async_nats::jetstream::kv::Entry>, ClusterError> {
        let buckets = self.buckets()?;
        let entry = buckets
            .clients
            .entry(encode_key(client_id))
            .await
            .map_err(ClusterError::nats)?;
        Ok(entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put))
    }

    /// Whether `client_id`'s entry is still at `revision` (the one this
    /// node wrote as it kept the client's offline session): no other
    /// node claimed the client since.
    pub async fn still_held_here(
        &self,
        client_id: &str,
        revision: u64,
    ) -> Result<bool, ClusterError> {
        let entry = self.current_entry(client_id).await?;
        Ok(entry.is_some_and(|e| e.revision == revision))
    }

    /// Whether `client_id`'s entry names another node or run, or says the
    /// client is let go: someone took it over (a node that took this one
    /// for dead, or a claim after that). No entry (a client let in while
    /// NATS was unreachable) is no take-over.
    pub async fn claimed_elsewhere(&self, client_id: &str) -> Result<bool, ClusterError> {
        let entry = self.current_entry(client_id).await?;
        Ok(entry
            .and_then(|e| ClientRecord::decode(&e.value))
            .is_some_and(|r| r.node != *self.node || r.run != self.run || !r.held))
    }

    /// Whether another node has written `client_id`'s entry since it was
    /// at `revision` (a claim: the client connected again). A deleted
    /// entry is no claim.
    pub async fn claimed_since(
        &self,
        client_id: &str,
        revision: u64,
    ) -> Result<bool, ClusterError> {
        let entry = self.current_entry(client_id).await?;
        Ok(entry.is_some_and(|e| e.revision != revision))
    }

    /// The client left this node but its persistent session stays here
    /// (the cluster would not take it): its entry says this node holds
    /// it still, without the will (its connection's will was dealt with
    /// here), so that a claim asks this node. Returns whether the entry
    /// says so now.
    pub async fn hold(&self, client_id: &str) -> bool {
        self.rewrite_own(client_id, true).await.is_some()
    }

    /// Rewrites this node's entry for `client_id` as `held` (no will),
    /// compare-and-set: a claim by another node in between wins. Returns
    /// the entry's revision when it is this node's and says so.
    async fn rewrite_own(&self, client_id: &str, held: bool) -> Option<u64> {
        let buckets = self.buckets().ok()?;
        let key = encode_key(client_id);
        let entry = buckets.clients.entry(key.clone()).await.ok()??;
        let record = ClientRecord::decode(&entry.value)?;
        if record.node != *self.node || record.run != self.run || !record.held {
            return None;
        }
        if held && record.will.is_none() {
            return Some(entry.revision);
        }
        let record = self.own_record(held, None);
        buckets
            .clients
            .update(key, record.encode(), entry.revision)
            .await
            .ok()
    }

    /// Answers other nodes' take-over requests: the client's connection
    /// here is closed (5.0: 0x8E) and its session handed to the cluster
    /// (or ended, when the request says the client starts clean), then the
    /// answer goes back ([`Answer`]).
    pub(super) async fn serve_takeovers(self: Arc<Self>, broker: Arc<Broker>) {
        let mut requests = match self.client.subscribe(self.names.takeover(&self.node)).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                self.logger
                    .error(&format!("Cluster: cannot serve take-overs: {e}."));
                return;
            }
        };
        while let Some(request) = requests.next().await {
            // Each on its own: one slow hand-off must not hold the others.
            let cluster = self.clone();
            let broker = broker.clone();
            tokio::spawn(async move {
                let client_id = String::from_utf8_lossy(&request.payload).to_string();
                let discard = request
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get(DISCARD_HEADER).is_some());
                let answer = broker.taken_over_elsewhere(&client_id, discard).await;
                if let Some(reply) = request.reply {
                    let _ = cluster
                        .client
                        .publish(reply, Bytes::from_static(answer.payload()))
                        .await;
                }
            });
        }
    }
}
