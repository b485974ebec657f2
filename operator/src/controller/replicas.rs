//! The cluster replicas' step of a broker's reconcile, in one call:
//! recovery of a stuck rollout ([`recover_stuck`]) and one rebalance round
//! ([`reconcile_rebalance`]) over the broker's pods, their Events
//! published, the `Rebalancing` condition and when to come back returned
//! for the status and the requeue.
//!
//! Called only for a broker with `spec.cluster` (one replica has nothing
//! to rebalance, and its rollout is the StatefulSet's alone).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::{Client, ResourceExt};

use super::events::Events;
use super::rebalance::{reconcile_rebalance, RebalanceMemory, CONDITION_REBALANCING};
use super::replica_admin::{BrokerHttp, ObservedPod, PodReplicas};
use super::rollout::recover_stuck;
use crate::api::MqttBroker;
use crate::plan::rebalance::RebalanceSettings;
use crate::plan::rollout::PROGRESS_DEADLINE;
use crate::plan::HTTP_PORT;

/// What the step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicasStep {
    /// The `Rebalancing` condition, for the broker's status.
    pub condition: Condition,
    /// When to look again.
    pub requeue: Duration,
}

/// What the step needs besides the broker.
pub struct ReplicasContext<'a> {
    /// The API server (pod deletion).
    pub client: &'a Client,
    /// Events on the broker.
    pub events: &'a Events,
    /// HTTP to the pods' admin port (shed requests; their metrics come
    /// with the pods).
    pub http: Arc<dyn BrokerHttp>,
    /// Rounds still settling, per broker.
    pub memory: &'a RebalanceMemory,
}

/// Looks after `broker`'s replicas: its `pods` (with the metrics the
/// reconcile read, not read again here) and `stateful_set` as observed,
/// reached with the admin `token`.
pub async fn reconcile_replicas(
    ctx: &ReplicasContext<'_>,
    broker: &MqttBroker,
    settings: &RebalanceSettings,
    pods: &[ObservedPod],
    stateful_set: Option<&StatefulSet>,
    token: &str,
    now: Timestamp,
) -> ReplicasStep {
    let namespace = broker.namespace().unwrap_or_default();
    let admin = PodReplicas::new(
        ctx.client.clone(),
        &namespace,
        pods.to_vec(),
        ctx.http.clone(),
        HTTP_PORT,
        token.to_owned(),
        now,
    );
    let plain: Vec<Pod> = pods.iter().map(|observed| observed.pod.clone()).collect();
    let recovery = recover_stuck(&admin, stateful_set, &plain, PROGRESS_DEADLINE, now).await;
    for event in recovery.events {
        ctx.events.publish(broker, event).await;
    }
    let previous = broker.status.as_ref().and_then(|status| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_REBALANCING)
    });
    let key = format!("{namespace}/{}", broker.name_any());
    let outcome = reconcile_rebalance(
        &admin,
        settings,
        ctx.memory,
        &key,
        previous,
        broker.metadata.generation,
        now,
    )
    .await;
    for event in outcome.events {
        ctx.events.publish(broker, event).await;
    }
    ReplicasStep {
        condition: outcome.condition,
        requeue: outcome.requeue,
    }
}
