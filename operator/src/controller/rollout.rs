//! Rollouts, the controller's side.
//!
//! - [`recover_stuck`]: a stuck rollout is reported (a Warning Event with
//!   the pod and why, from [`assess`]); a pod stuck on a revision the
//!   StatefulSet no longer rolls out (the spec was reverted) is deleted, so
//!   that the StatefulSet creates it again from the current template
//!   (kubernetes#67250).
//! - [`rolling_restart`]: restarts replicas one at a time, each only once
//!   the one before has caught up ([`caught_up`]) and stayed so for a
//!   settling time, and gives up on a
//!   replica that does not within the deadline, saying why. The
//!   StatefulSet does this for pods; the simulated cluster of the contract
//!   tests uses it for broker processes, with the same checks.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::events::BrokerEvent;
use super::replica_admin::{AdminError, ReplicaAdmin};
use crate::plan::rebalance::ReplicaState;
use crate::plan::rollout::{
    assess, caught_up, Assessment, PodState, Revisions, Rollout, REASON_STUCK,
    REASON_STUCK_POD_DELETED,
};
use crate::plan::statefulset::CONTAINER_NAME;

/// How often [`rolling_restart`] looks at a restarted replica.
const POLL: Duration = Duration::from_millis(200);

/// What [`recover_stuck`] found and did.
#[derive(Debug)]
pub struct Recovery {
    /// The rollout.
    pub assessment: Assessment,
    /// Events to publish on the broker.
    pub events: Vec<BrokerEvent>,
}

/// Looks at the rollout of `stateful_set` over `pods`; deletes a pod stuck
/// on an old revision through `admin`.
pub async fn recover_stuck(
    admin: &dyn ReplicaAdmin,
    stateful_set: Option<&StatefulSet>,
    pods: &[Pod],
    deadline: Duration,
    now: Timestamp,
) -> Recovery {
    let revisions = stateful_set.map(Revisions::of).unwrap_or_default();
    let states: Vec<PodState> = pods
        .iter()
        .map(|pod| PodState::of(pod, CONTAINER_NAME, now))
        .collect();
    let assessment = assess(&revisions, &states, deadline);
    let mut events = Vec::new();
    if let Some(message) = assessment.stuck_message() {
        match &assessment.delete {
            Some(pod) => match admin.restart(pod).await {
                Ok(()) => {
                    tracing::info!(%pod, "deleted a pod stuck on an old revision");
                    events.push(BrokerEvent::warning(
                        REASON_STUCK_POD_DELETED,
                        "DeletePod",
                        message,
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot delete a stuck pod");
                    events.push(BrokerEvent::warning(
                        REASON_STUCK,
                        "DeletePod",
                        format!("{message}; the deletion failed: {error}"),
                    ));
                }
            },
            None => events.push(BrokerEvent::warning(REASON_STUCK, "Rollout", message)),
        }
    }
    Recovery { assessment, events }
}

/// How long [`rolling_restart`] gives each replica.
#[derive(Debug, Clone, Copy)]
pub struct RestartTiming {
    /// A restarted replica that has not caught up after this long is
    /// stuck.
    pub deadline: Duration,
    /// How long a replica that caught up stays before the next one goes
    /// (the StatefulSet's `minReadySeconds`): the clients the previous
    /// replica sent away have reconnected by then, so the next drain does
    /// not chase them.
    pub settle: Duration,
}

/// One replica's restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Restarted {
    /// The replica.
    pub replica: String,
    /// From the restart request to its return (for a process: drained,
    /// exited and started again).
    pub restart: Duration,
    /// From its return to the replica having caught up.
    pub catch_up: Duration,
}

/// Why a rolling restart stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// A replica could not be restarted or observed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A restarted replica did not catch up in time; the rest were left
    /// alone.
    #[error("the rollout is stuck at {replica}: {reason}")]
    Stuck {
        /// The replica.
        replica: String,
        /// Why ([`PodState::failing`]).
        reason: String,
    },
}

/// Restarts `order`'s replicas one at a time through `admin`, each once
/// the previous one has caught up.
pub async fn rolling_restart(
    admin: &dyn ReplicaAdmin,
    order: &[String],
    timing: RestartTiming,
) -> Result<Vec<Restarted>, RestartError> {
    let mut done = Vec::new();
    for replica in order {
        let started = Instant::now();
        admin.restart(replica).await?;
        let restart = started.elapsed();
        let back = Instant::now();
        loop {
            let replicas = admin.replicas().await?;
            let state = replicas.iter().find(|r| &r.name == replica);
            if state.is_some_and(caught_up) {
                break;
            }
            let waiting = PodState {
                name: replica.clone(),
                ready: false,
                not_ready_for: back.elapsed(),
                ..PodState::default()
            };
            if let Some(reason) = waiting.failing(timing.deadline) {
                return Err(RestartError::Stuck {
                    replica: replica.clone(),
                    reason: describe(state, reason),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        done.push(Restarted {
            replica: replica.clone(),
            restart,
            catch_up: back.elapsed(),
        });
        if done.len() < order.len() {
            tokio::time::sleep(timing.settle).await;
        }
    }
    Ok(done)
}

fn describe(state: Option<&ReplicaState>, reason: String) -> String {
    match state {
        None => format!("{reason}; it is not running"),
        Some(state) if state.ready && state.cluster_connected == Some(false) => {
            format!("{reason}; it does not reach the cluster's NATS")
        }
        Some(_) => reason,
    }
}

/// Whether `recovery` says the rollout is complete.
pub fn is_complete(recovery: &Recovery) -> bool {
    recovery.assessment.rollout == Rollout::Complete
}
