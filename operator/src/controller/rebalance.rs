//! Spreading clients after a scale-up, the controller's side: read the
//! replicas, plan ([`plan_rebalance`]), send the shed requests, report in
//! the `Rebalancing` condition and Events.
//!
//! A round's clients take `count / rate` seconds to leave and a few more to
//! reconnect; until then the counts say nothing new, so the broker's
//! [`RebalanceMemory`] holds further rounds back (no request at all) and the
//! reconcile comes back when the round has settled.
//!
//! [`until_balanced`] plays rounds back to back until the replicas are
//! within the tolerance: the simulated cluster of the contract tests uses
//! it, with its processes behind the same [`ReplicaAdmin`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::events::BrokerEvent;
use super::replica_admin::{AdminError, ReplicaAdmin};
use crate::plan::rebalance::{
    plan_rebalance, Rebalance, RebalanceSettings, REASON_BALANCED, REASON_SHEDDING,
};

/// Condition type: the operator is moving clients between replicas.
pub const CONDITION_REBALANCING: &str = "Rebalancing";

/// How often a broker that needs nothing is looked at again for balance.
pub const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// What one round did.
#[derive(Debug)]
pub struct Round {
    /// What the planner said.
    pub decision: Rebalance,
    /// Clients the replicas said they would send away.
    pub shed: u64,
    /// Shed requests that failed (the others were sent).
    pub failures: Vec<AdminError>,
}

/// One round: read every replica, plan, send the shed requests.
pub async fn round(
    admin: &dyn ReplicaAdmin,
    settings: &RebalanceSettings,
) -> Result<Round, AdminError> {
    let replicas = admin.replicas().await?;
    let decision = plan_rebalance(&replicas, settings);
    let mut shed = 0;
    let mut failures = Vec::new();
    if let Rebalance::Shed { sheds, .. } = &decision {
        for request in sheds {
            match admin.shed(request).await {
                Ok(count) => shed += count,
                Err(error) => {
                    tracing::warn!(%error, replica = %request.replica, "shed request failed");
                    failures.push(error);
                }
            }
        }
    }
    Ok(Round {
        decision,
        shed,
        failures,
    })
}

/// What [`until_balanced`] did.
#[derive(Debug)]
pub struct Balancing {
    /// Rounds that shed clients.
    pub rounds: u32,
    /// Clients shed in all.
    pub shed: u64,
    /// From the first look to the balanced one.
    pub elapsed: Duration,
    /// The last decision: [`Rebalance::Balanced`] unless time ran out.
    pub last: Rebalance,
}

/// Rounds until the replicas are balanced (or there is nothing to do), or
/// `timeout` passes; between rounds it waits as the planner says.
pub async fn until_balanced(
    admin: &dyn ReplicaAdmin,
    settings: &RebalanceSettings,
    timeout: Duration,
) -> Result<Balancing, AdminError> {
    let started = Instant::now();
    let mut balancing = Balancing {
        rounds: 0,
        shed: 0,
        elapsed: Duration::ZERO,
        last: Rebalance::Disabled,
    };
    loop {
        let round = round(admin, settings).await?;
        balancing.elapsed = started.elapsed();
        let wait = round.decision.recheck_after(Duration::ZERO);
        if let Rebalance::Shed { .. } = round.decision {
            balancing.rounds += 1;
            balancing.shed += round.shed;
        }
        let done = matches!(
            round.decision,
            Rebalance::Balanced(_) | Rebalance::SingleReplica | Rebalance::Disabled
        );
        tracing::info!("rebalance: {}", round.decision.condition().2);
        balancing.last = round.decision;
        if done || started.elapsed() + wait > timeout {
            return Ok(balancing);
        }
        tokio::time::sleep(wait).await;
    }
}

/// When each broker's last round settles.
#[derive(Debug, Default)]
pub struct RebalanceMemory {
    settling: Mutex<HashMap<String, Instant>>,
}

impl RebalanceMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.settling.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `broker`'s last round still needs, if it does.
    pub fn settling(&self, broker: &str) -> Option<Duration> {
        let until = *self.lock().get(broker)?;
        until.checked_duration_since(Instant::now())
    }

    fn settle(&self, broker: &str, after: Duration) {
        self.lock()
            .insert(broker.to_owned(), Instant::now() + after);
    }

    /// Forgets `broker` (deleted, or rebalancing turned off).
    pub fn forget(&self, broker: &str) {
        self.lock().remove(broker);
    }
}

/// What a reconcile's rebalance step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RebalanceOutcome {
    /// The `Rebalancing` condition.
    pub condition: Condition,
    /// Events to publish on the broker.
    pub events: Vec<BrokerEvent>,
    /// When to look again.
    pub requeue: Duration,
}

/// The rebalance step of a broker's reconcile: unless a round is still
/// settling (then nothing is read or sent), one [`round`]. `key` names the
/// broker in `memory`; `previous` is its current `Rebalancing` condition.
pub async fn reconcile_rebalance(
    admin: &dyn ReplicaAdmin,
    settings: &RebalanceSettings,
    memory: &RebalanceMemory,
    key: &str,
    previous: Option<&Condition>,
    generation: Option<i64>,
    now: Timestamp,
) -> RebalanceOutcome {
    if let (Some(left), Some(previous)) = (memory.settling(key), previous) {
        return RebalanceOutcome {
            condition: previous.clone(),
            events: Vec::new(),
            requeue: left.max(Duration::from_secs(1)),
        };
    }
    let was_shedding = previous.is_some_and(|c| c.reason == REASON_SHEDDING);
    let (decision, failures) = match round(admin, settings).await {
        Ok(round) => (round.decision, round.failures),
        Err(error) => (
            Rebalance::Waiting {
                reason: format!("cannot read the replicas: {error}"),
                retry_after: Duration::from_secs(10),
            },
            Vec::new(),
        ),
    };
    let (status, reason, message) = decision.condition();
    let mut events = Vec::new();
    match &decision {
        Rebalance::Shed { settle, .. } => {
            memory.settle(key, *settle);
            events.push(BrokerEvent::normal(
                "Rebalancing",
                "Rebalance",
                message.clone(),
            ));
        }
        Rebalance::Balanced(_) if was_shedding => {
            memory.forget(key);
            events.push(BrokerEvent::normal(
                "Rebalanced",
                "Rebalance",
                message.clone(),
            ));
        }
        _ => memory.forget(key),
    }
    for failure in &failures {
        events.push(BrokerEvent::warning(
            "RebalanceFailed",
            "Rebalance",
            failure.to_string(),
        ));
    }
    let last_transition_time = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    RebalanceOutcome {
        condition: Condition {
            type_: CONDITION_REBALANCING.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            observed_generation: generation,
        },
        events,
        requeue: decision.recheck_after(IDLE_RECHECK),
    }
}

/// Whether `condition` says the replicas are balanced.
pub fn is_balanced(condition: &Condition) -> bool {
    condition.reason == REASON_BALANCED
}
