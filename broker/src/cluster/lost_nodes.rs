//! The clients of a node that is gone: whichever survivor rewrites each
//! one's entry in the clients bucket first publishes its will and keeps
//! its persistent session in the cluster; the node's filters leave the
//! interest bucket. And the other way round: a node that was cut off long
//! enough to be taken for gone lets go of the clients taken over from it
//! once it is back ([`Cluster::rejoin_after_lapse`]).

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::message::Message;

use super::clients::ClientRecord;
use super::names::decode_key;
use super::Cluster;

/// How many times the clients of a node that left are listed before its
/// clients' wills are given up (each failure is logged).
const TAKE_OVER_LISTING_ATTEMPTS: usize = 3;

/// Whose clients [`Cluster::take_over_clients_of`] takes over.
#[derive(Debug, Clone, Copy)]
pub(super) enum ClientsOf {
    /// Those a dead node held in its run (any, when it is not known).
    Run(Option<u64>),
    /// Those this node held in its runs before `current` (it restarted).
    RunsBefore(u64),
}

impl Cluster {
    /// This node's liveness key went unwritten for `lapse`, the node
    /// timeout or more (cut off from NATS, or frozen): the others may have
    /// taken it for dead meanwhile, published its clients' wills, kept
    /// their persistent sessions in the cluster and deleted its filters.
    /// Each connection here whose client's entry no longer says this node
    /// holds it is closed (5.0: 0x8E), its session ending here with
    /// nothing written to the cluster: the cluster's copy is the client's
    /// now, and one client id has one connection again. This node's
    /// filters are written again. Twice: now, and once a take-over the
    /// others began before this node was back has had time to end.
    pub(super) async fn rejoin_after_lapse(self: Arc<Self>, broker: Arc<Broker>, lapse: Duration) {
        self.logger.warning(&format!(
            "Cluster: this node's liveness went unwritten for {:.1} s; clients the other nodes took over meanwhile are let go here.",
            lapse.as_secs_f64()
        ));
        for pass in 0..2 {
            if pass == 1 {
                tokio::time::sleep(Duration::from_secs(self.config.node_timeout_secs)).await;
            }
            let ended = broker.let_go_clients_claimed_elsewhere().await;
            self.interest.write_local_again();
            if ended > 0 {
                self.logger.warning(&format!(
                    "Cluster: {ended} client(s) were taken over by other nodes while this node was cut off; their connections here are closed."
                ));
            }
        }
    }

    /// A node died in run `run` (when its key said): the clients it held
    /// in that run are taken over (see [`Cluster::take_over_clients_of`]),
    /// and its filters leave the interest bucket, unless it is back by
    /// then. A node that drains and restarts is back within a second:
    /// what its next run wrote (its clients, its filters) must stay.
    pub(super) async fn node_gone(&self, broker: &Arc<Broker>, node: &str, run: Option<u64>) {
        self.take_over_clients_of(broker, node, ClientsOf::Run(run))
            .await;
        // A run writes its liveness key before its filters: keys written
        // after this read are a later run's, and one written before it
        // comes with a liveness key the check below sees.
        let written = self.interest_written_up_to().await;
        if self.is_back(node).await {
            self.logger.info(&format!(
                "Cluster: node {node} is back; its interest stays."
            ));
            return;
        }
        match written {
            Ok(revision) => self.forget_node_interest(node, Some(revision)).await,
            Err(e) => self.logger.warning(&format!(
                "Cluster: the interest of node {node} stays (it goes when the node comes back): {e}."
            )),
        }
    }

    /// The clients `node` held (other than those of its run
    /// `except_run`, when it is this node restarted): whichever node
    /// rewrites each one's entry first publishes its will (after its
    /// delay) and keeps its persistent session in the cluster.
    pub(super) async fn take_over_clients_of(
        &self,
        broker: &Arc<Broker>,
        node: &str,
        clients_of: ClientsOf,
    ) {
        let Ok(buckets) = self.buckets() else { return };
        let mut wills = 0;
        // The wills are due now: a failed listing is tried again, a few
        // times.
        let mut listed = super::list_keys(&buckets.clients).await;
        for _ in 0..TAKE_OVER_LISTING_ATTEMPTS - 1 {
            let Err(e) = &listed else { break };
            self.logger.warning(&format!(
                "Cluster: cannot list the clients of node {node} yet: {e}."
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
            listed = super::list_keys(&buckets.clients).await;
        }
        match listed {
            Err(e) => self.logger.error(&format!(
                "Cluster: cannot list the clients of node {node}: {e}; their wills are not published."
            )),
            Ok(keys) => for key in keys {
                let Ok(Some(entry)) = buckets.clients.entry(key.clone()).await else {
                    continue;
                };
                let Some(record) = ClientRecord::decode(&entry.value) else {
                    continue;
                };
                let of_that_run = match clients_of {
                    ClientsOf::Run(Some(run)) => record.run == run,
                    ClientsOf::Run(None) => true,
                    ClientsOf::RunsBefore(current) => record.run != current,
                };
                if record.node != node || !record.held || !of_that_run {
                    continue;
                }
                let released = ClientRecord {
                    node: node.to_string(),
                    run: record.run,
                    held: false,
                    will: None,
                };
                // Only the survivor whose rewrite wins publishes the will.
                let Ok(released_at) = buckets
                    .clients
                    .update(key.clone(), released.encode(), entry.revision)
                    .await
                else {
                    continue;
                };
                let client_id = decode_key(&key).unwrap_or(key);
                self.adopt_session(&client_id).await;
                if let Some(will) = record.will {
                    wills += 1;
                    broker.publish_will_of_lost_client(
                        &client_id,
                        Message::from_stored(will.message),
                        Duration::from_secs(u64::from(will.delay_secs)),
                        released_at,
                    );
                }
            },
        }
        if wills > 0 {
            self.logger.info(&format!(
                "Cluster: published {wills} will(s) of clients of node {node}."
            ));
        }
    }
}
