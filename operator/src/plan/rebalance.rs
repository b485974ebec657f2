//! Spreading clients over a broker's replicas: from what each replica
//! reports (ready, draining, connections) to the shed requests to make now
//! (`POST /api/v1/shed?count=N&rate=R` on the replica's admin API), or none.
//!
//! Pure: the controller ([`crate::controller::rebalance`]) reads the
//! replicas and sends the requests, and the simulated cluster of the
//! contract tests drives the same function against broker processes.
//!
//! **Where shed clients land.** A shed client reconnects through the load
//! balancer, which picks a ready replica: round robin (HAProxy, IPVS) or at
//! random (kube-proxy), so about one in `n` of the `S` clients shed lands
//! on each replica, the ones that shed included. For every replica to end
//! at the mean `m`, a replica below it must receive its gap, so `S` is `n`
//! times the total excess `E` over the `u` replicas below the mean
//! (`S = n E / u`), and a replica above it sheds its excess plus what comes
//! back to it: `c_i - m + S / n`. A load balancer that picks the least
//! loaded replica sends all `S` to the emptiest and overshoots; the cap of
//! `maxShedPercent` of a replica's connections per round, and looking again
//! after every round, keep either kind converging (the tests play both).

use std::fmt::Write as _;
use std::time::Duration;

use crate::api::rebalance::RebalanceSpec;

/// A replica that became ready less than this long ago may not be in the
/// load balancer's rotation yet (endpoints propagate, health checks pass
/// `rise` times): clients shed now would not reach it.
pub const READY_SETTLE: Duration = Duration::from_secs(5);

/// How long shed clients take to reconnect and show up in the counts, on
/// top of the shedding itself.
pub const RECONNECT_SETTLE: Duration = Duration::from_secs(3);

/// What one replica reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// The pod's (or process's) name, e.g. `mq-2`.
    pub name: String,
    /// Ready: its `/readyz` answers 200 (the pod's Ready condition).
    pub ready: bool,
    /// How long it has been ready (zero when not ready, or not known).
    pub ready_for: Duration,
    /// Stopping: its clients are leaving (a terminating pod, a SIGTERM).
    pub draining: bool,
    /// Clients connected now (`kubemqtt_clients_connected`); `None` when
    /// its metrics could not be read.
    pub connections: Option<u64>,
    /// Whether it reaches the cluster's NATS (`kubemqtt_cluster_connected`);
    /// `None` when not known.
    pub cluster_connected: Option<bool>,
}

impl ReplicaState {
    /// Ready, in the cluster, and ready long enough for the load balancer
    /// to send it clients.
    pub fn settled(&self) -> bool {
        self.ready && !self.draining && self.ready_for >= READY_SETTLE
    }
}

/// The settings of [`plan_rebalance`] (`spec.cluster.rebalance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceSettings {
    /// Whether to rebalance at all.
    pub enabled: bool,
    /// Allowed distance from the mean, in percent of the mean (at least
    /// one connection).
    pub tolerance_percent: u32,
    /// Largest share of a replica's connections shed in one round.
    pub max_shed_percent: u32,
    /// Clients a second a replica sheds.
    pub shed_rate: u32,
}

impl From<&RebalanceSpec> for RebalanceSettings {
    fn from(spec: &RebalanceSpec) -> Self {
        RebalanceSettings {
            enabled: spec.enabled,
            tolerance_percent: spec.tolerance_percent,
            max_shed_percent: spec.max_shed_percent.clamp(1, 100),
            shed_rate: spec.shed_rate.max(1),
        }
    }
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings::from(&RebalanceSpec::default())
    }
}

/// One request: `replica` sends `count` clients away, `rate` a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    /// The replica that sheds.
    pub replica: String,
    /// Clients it sends away.
    pub count: u64,
    /// Clients a second.
    pub rate: u32,
}

/// The spread of connections over the replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// Each replica's connections, in the replicas' order.
    pub counts: Vec<(String, u64)>,
    /// The mean.
    pub mean: f64,
    /// How far from the mean a replica may be.
    pub allowed: f64,
}

impl Spread {
    /// `mq-0 33, mq-1 33, mq-2 34, mq-3 0 (mean 25.0, tolerance ±2.5)`.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (i, (name, count)) in self.counts.iter().enumerate() {
            let comma = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{comma}{name} {count}");
        }
        let _ = write!(
            text,
            " (mean {:.1}, tolerance ±{:.1})",
            self.mean, self.allowed
        );
        text
    }

    /// Whether every replica is within the tolerance of the mean.
    pub fn within_tolerance(&self) -> bool {
        self.counts
            .iter()
            .all(|(_, count)| (*count as f64 - self.mean).abs() <= self.allowed)
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Rebalance {
    /// `spec.cluster.rebalance.enabled` is false.
    Disabled,
    /// Fewer than two replicas: nowhere to move clients to.
    SingleReplica,
    /// A replica is not ready, draining, not settled or not readable: the
    /// counts do not say where clients would go. Look again after
    /// `retry_after`.
    Waiting {
        /// Which replica, and why.
        reason: String,
        /// When to look again.
        retry_after: Duration,
    },
    /// Every replica is within the tolerance (or there is nothing worth
    /// moving).
    Balanced(Spread),
    /// Send these requests, then look again after `settle`.
    Shed {
        /// One per replica above the mean.
        sheds: Vec<Shed>,
        /// The counts that called for it.
        spread: Spread,
        /// The longest shed plus the time clients take to reconnect.
        settle: Duration,
    },
}

/// `Rebalancing` condition reasons.
pub const REASON_SHEDDING: &str = "Shedding";
/// The replicas are within the tolerance.
pub const REASON_BALANCED: &str = "Balanced";
/// A replica is not ready (or not readable) yet.
pub const REASON_WAITING: &str = "WaitingForReplicas";
/// Rebalancing is turned off.
pub const REASON_DISABLED: &str = "Disabled";
/// One replica.
pub const REASON_SINGLE_REPLICA: &str = "SingleReplica";

impl Rebalance {
    /// The `Rebalancing` condition: status, reason and message.
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        match self {
            Rebalance::Disabled => (
                "False",
                REASON_DISABLED,
                "spec.cluster.rebalance.enabled is false: connections stay where they land"
                    .to_owned(),
            ),
            Rebalance::SingleReplica => (
                "False",
                REASON_SINGLE_REPLICA,
                "one replica: nothing to rebalance".to_owned(),
            ),
            Rebalance::Waiting { reason, .. } => ("False", REASON_WAITING, reason.clone()),
            Rebalance::Balanced(spread) => (
                "False",
                REASON_BALANCED,
                format!("connections within the tolerance: {}", spread.describe()),
            ),
            Rebalance::Shed { sheds, spread, .. } => {
                ("True", REASON_SHEDDING, shed_message(sheds, spread))
            }
        }
    }

    /// When to look again: after a round settles, once a replica may be
    /// settled, or `idle` when nothing is going on.
    pub fn recheck_after(&self, idle: Duration) -> Duration {
        match self {
            Rebalance::Shed { settle, .. } => *settle,
            Rebalance::Waiting { retry_after, .. } => *retry_after,
            _ => idle,
        }
    }
}

/// `connections mq-0 33, ... : mq-0 sends 8 clients away at 50/s, mq-1 8`.
fn shed_message(sheds: &[Shed], spread: &Spread) -> String {
    let mut text = format!("connections {}: ", spread.describe());
    for (i, shed) in sheds.iter().enumerate() {
        let comma = if i == 0 { "" } else { ", " };
        let _ = write!(
            text,
            "{comma}{} sends {} client(s) away at {}/s",
            shed.replica, shed.count, shed.rate
        );
    }
    text
}

/// The shed requests that bring `replicas` towards the mean, or why none.
pub fn plan_rebalance(replicas: &[ReplicaState], settings: &RebalanceSettings) -> Rebalance {
    if !settings.enabled {
        return Rebalance::Disabled;
    }
    if replicas.len() < 2 {
        return Rebalance::SingleReplica;
    }
    if let Some(waiting) = not_settled(replicas) {
        return waiting;
    }
    let counts: Vec<(String, u64)> = replicas
        .iter()
        .map(|r| (r.name.clone(), r.connections.unwrap_or_default()))
        .collect();
    let n = counts.len() as f64;
    let total: u64 = counts.iter().map(|(_, c)| c).sum();
    let mean = total as f64 / n;
    let allowed = (mean * f64::from(settings.tolerance_percent) / 100.0).max(1.0);
    let spread = Spread {
        counts,
        mean,
        allowed,
    };
    if spread.within_tolerance() {
        return Rebalance::Balanced(spread);
    }
    let below = spread
        .counts
        .iter()
        .filter(|(_, c)| (*c as f64) < mean)
        .count()
        .max(1) as f64;
    let excess: f64 = spread
        .counts
        .iter()
        .map(|(_, c)| (*c as f64 - mean).max(0.0))
        .sum();
    // About 1 in n of the S = n E / u shed clients comes back to each.
    let returning = excess / below;
    let sheds: Vec<Shed> = spread
        .counts
        .iter()
        .filter(|(_, c)| (*c as f64) > mean)
        .filter_map(|(name, count)| {
            let wanted = (*count as f64 - mean + returning).floor() as u64;
            let cap = (*count * u64::from(settings.max_shed_percent) / 100).max(1);
            let count = wanted.min(cap);
            (count > 0).then(|| Shed {
                replica: name.clone(),
                count,
                rate: settings.shed_rate,
            })
        })
        .collect();
    if sheds.is_empty() {
        return Rebalance::Balanced(spread);
    }
    let longest = sheds.iter().map(|s| s.count).max().unwrap_or(0);
    let settle =
        Duration::from_secs_f64(longest as f64 / f64::from(settings.shed_rate)) + RECONNECT_SETTLE;
    Rebalance::Shed {
        sheds,
        spread,
        settle,
    }
}

/// Why the counts cannot be trusted yet, if they cannot.
fn not_settled(replicas: &[ReplicaState]) -> Option<Rebalance> {
    let wait = |reason: String, retry_after: Duration| {
        Some(Rebalance::Waiting {
            reason,
            retry_after: retry_after.max(Duration::from_secs(1)),
        })
    };
    for replica in replicas {
        let name = &replica.name;
        if replica.draining {
            return wait(
                format!("{name} is draining: its clients are moving to the other replicas"),
                RECONNECT_SETTLE,
            );
        }
        if !replica.ready {
            return wait(format!("{name} is not ready"), READY_SETTLE);
        }
        if replica.cluster_connected == Some(false) {
            return wait(
                format!("{name} does not reach the cluster's NATS"),
                READY_SETTLE,
            );
        }
        if replica.connections.is_none() {
            return wait(
                format!("cannot read the connections of {name}"),
                READY_SETTLE,
            );
        }
    }
    if let Some(fresh) = replicas.iter().find(|r| r.ready_for < READY_SETTLE) {
        return wait(
            format!(
                "{} became ready {:.0} s ago: waiting until the load balancer sends it clients",
                fresh.name,
                fresh.ready_for.as_secs_f64()
            ),
            READY_SETTLE - fresh.ready_for,
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, connections: u64) -> ReplicaState {
        ReplicaState {
            name: name.to_owned(),
            ready: true,
            ready_for: Duration::from_secs(60),
            draining: false,
            connections: Some(connections),
            cluster_connected: Some(true),
        }
    }

    fn replicas(counts: &[u64]) -> Vec<ReplicaState> {
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| replica(&format!("mq-{i}"), *c))
            .collect()
    }

    fn sheds(decision: &Rebalance) -> Vec<(String, u64)> {
        match decision {
            Rebalance::Shed { sheds, .. } => {
                sheds.iter().map(|s| (s.replica.clone(), s.count)).collect()
            }
            other => panic!("expected sheds, got {other:?}"),
        }
    }

    /// Shed clients land evenly on every replica (round robin).
    fn land_evenly(counts: &mut [u64], decision: &Rebalance) {
        let shed: Vec<(String, u64)> = sheds(decision);
        let total: u64 = shed.iter().map(|(_, c)| c).sum();
        for (name, count) in &shed {
            let i: usize = name.trim_start_matches("mq-").parse().unwrap();
            counts[i] -= count;
        }
        let n = counts.len() as u64;
        for (i, count) in counts.iter_mut().enumerate() {
            *count += total / n + u64::from((i as u64) < total % n);
        }
    }

    #[test]
    fn a_new_replica_gets_clients_from_those_above_the_mean() {
        let decision = plan_rebalance(&replicas(&[34, 33, 33, 0]), &RebalanceSettings::default());
        // Mean 25; a quarter of each at most.
        assert_eq!(
            sheds(&decision),
            [("mq-0".into(), 8), ("mq-1".into(), 8), ("mq-2".into(), 8)]
        );
        let Rebalance::Shed { sheds, settle, .. } = &decision else {
            unreachable!()
        };
        assert!(sheds.iter().all(|s| s.rate == 50));
        assert_eq!(
            *settle,
            Duration::from_secs_f64(8.0 / 50.0) + RECONNECT_SETTLE
        );
        let (status, reason, message) = decision.condition();
        assert_eq!((status, reason), ("True", REASON_SHEDDING));
        assert_eq!(
            message,
            "connections mq-0 34, mq-1 33, mq-2 33, mq-3 0 (mean 25.0, tolerance ±2.5): \
             mq-0 sends 8 client(s) away at 50/s, mq-1 sends 8 client(s) away at 50/s, \
             mq-2 sends 8 client(s) away at 50/s"
        );
    }

    #[test]
    fn without_the_cap_one_round_of_round_robin_reaches_the_mean() {
        let settings = RebalanceSettings {
            max_shed_percent: 100,
            ..RebalanceSettings::default()
        };
        let mut counts = [300, 300, 300, 0];
        let decision = plan_rebalance(&replicas(&counts), &settings);
        // Each sheds 75 * 4: a quarter of the 900 comes back to each.
        assert_eq!(sheds(&decision)[0], ("mq-0".into(), 300));
        land_evenly(&mut counts, &decision);
        assert_eq!(counts, [225, 225, 225, 225]);
        assert!(matches!(
            plan_rebalance(&replicas(&counts), &settings),
            Rebalance::Balanced(_)
        ));
    }

    #[test]
    fn rounds_converge_with_round_robin_and_with_least_connections() {
        let settings = RebalanceSettings::default();
        // Round robin: about one in four lands on the new replica.
        let mut counts = vec![334, 333, 333, 0];
        let mut rounds = 0;
        while let decision @ Rebalance::Shed { .. } = plan_rebalance(&replicas(&counts), &settings)
        {
            land_evenly(&mut counts, &decision);
            rounds += 1;
            assert!(rounds < 10, "no convergence: {counts:?}");
        }
        assert!(rounds <= 5, "{rounds} rounds");
        assert!(counts.iter().all(|c| c.abs_diff(250) <= 25), "{counts:?}");
        // Least connections: every shed client goes to the emptiest.
        let mut counts = vec![334u64, 333, 333, 0];
        let mut rounds = 0;
        while let decision @ Rebalance::Shed { .. } = plan_rebalance(&replicas(&counts), &settings)
        {
            for (name, count) in sheds(&decision) {
                let i: usize = name.trim_start_matches("mq-").parse().unwrap();
                counts[i] -= count;
                for _ in 0..count {
                    let emptiest = (0..counts.len()).min_by_key(|&j| counts[j]).unwrap();
                    counts[emptiest] += 1;
                }
            }
            rounds += 1;
            assert!(rounds < 10, "no convergence: {counts:?}");
        }
        assert!(counts.iter().all(|c| c.abs_diff(250) <= 25), "{counts:?}");
    }

    #[test]
    fn counts_within_the_tolerance_ask_for_nothing() {
        let decision = plan_rebalance(&replicas(&[26, 24, 25, 25]), &RebalanceSettings::default());
        assert!(matches!(decision, Rebalance::Balanced(_)), "{decision:?}");
        let (status, reason, message) = decision.condition();
        assert_eq!((status, reason), ("False", REASON_BALANCED));
        assert!(message.contains("mean 25.0, tolerance ±2.5"), "{message}");
        // At least one connection of slack: 3/2/2 is as even as 7 gets.
        assert!(matches!(
            plan_rebalance(&replicas(&[3, 2, 2]), &RebalanceSettings::default()),
            Rebalance::Balanced(_)
        ));
    }

    #[test]
    fn no_connections_at_all_is_balanced() {
        assert!(matches!(
            plan_rebalance(&replicas(&[0, 0, 0]), &RebalanceSettings::default()),
            Rebalance::Balanced(spread) if spread.mean == 0.0
        ));
    }

    #[test]
    fn one_replica_or_disabled_asks_for_nothing() {
        let settings = RebalanceSettings::default();
        assert_eq!(
            plan_rebalance(&replicas(&[100]), &settings),
            Rebalance::SingleReplica
        );
        assert_eq!(plan_rebalance(&[], &settings), Rebalance::SingleReplica);
        let off = RebalanceSettings {
            enabled: false,
            ..settings
        };
        assert_eq!(
            plan_rebalance(&replicas(&[100, 0]), &off),
            Rebalance::Disabled
        );
    }

    #[test]
    fn a_replica_not_ready_or_draining_or_unread_holds_everything() {
        let settings = RebalanceSettings::default();
        let mut set = replicas(&[50, 50, 0]);
        set[2].ready = false;
        set[2].ready_for = Duration::ZERO;
        match plan_rebalance(&set, &settings) {
            Rebalance::Waiting {
                reason,
                retry_after,
            } => {
                assert_eq!(reason, "mq-2 is not ready");
                assert_eq!(retry_after, READY_SETTLE);
            }
            other => panic!("{other:?}"),
        }
        let mut set = replicas(&[50, 50, 0]);
        set[0].draining = true;
        assert!(matches!(
            plan_rebalance(&set, &settings),
            Rebalance::Waiting { reason, .. } if reason.contains("mq-0 is draining")
        ));
        let mut set = replicas(&[50, 50, 0]);
        set[1].connections = None;
        assert!(matches!(
            plan_rebalance(&set, &settings),
            Rebalance::Waiting { reason, .. } if reason == "cannot read the connections of mq-1"
        ));
        let mut set = replicas(&[50, 50, 0]);
        set[1].cluster_connected = Some(false);
        assert!(matches!(
            plan_rebalance(&set, &settings),
            Rebalance::Waiting { reason, .. } if reason.contains("NATS")
        ));
    }

    #[test]
    fn a_replica_just_added_is_given_time_to_enter_the_load_balancer() {
        let mut set = replicas(&[50, 50, 0]);
        set[2].ready_for = Duration::from_secs(2);
        match plan_rebalance(&set, &RebalanceSettings::default()) {
            Rebalance::Waiting {
                reason,
                retry_after,
            } => {
                assert!(reason.starts_with("mq-2 became ready 2 s ago"), "{reason}");
                assert_eq!(retry_after, Duration::from_secs(3));
            }
            other => panic!("{other:?}"),
        }
        set[2].ready_for = READY_SETTLE;
        assert!(matches!(
            plan_rebalance(&set, &RebalanceSettings::default()),
            Rebalance::Shed { .. }
        ));
    }

    #[test]
    fn a_replica_far_below_the_mean_draws_from_all_above_it() {
        // Nobody is above mean + tolerance, one is far below.
        let decision = plan_rebalance(&replicas(&[27, 27, 27, 19]), &RebalanceSettings::default());
        assert_eq!(
            sheds(&decision),
            [("mq-0".into(), 6), ("mq-1".into(), 6), ("mq-2".into(), 6)]
        );
    }

    #[test]
    fn small_replicas_shed_at_least_one_client() {
        let decision = plan_rebalance(&replicas(&[3, 0]), &RebalanceSettings::default());
        assert_eq!(sheds(&decision), [("mq-0".into(), 1)]);
    }

    #[test]
    fn the_spec_maps_onto_the_settings() {
        let spec = RebalanceSpec {
            enabled: true,
            tolerance_percent: 5,
            max_shed_percent: 0,
            shed_rate: 0,
        };
        let settings = RebalanceSettings::from(&spec);
        assert_eq!((settings.max_shed_percent, settings.shed_rate), (1, 1));
        assert_eq!(
            Rebalance::Waiting {
                reason: String::new(),
                retry_after: Duration::from_secs(2)
            }
            .recheck_after(Duration::from_secs(60)),
            Duration::from_secs(2)
        );
    }
}
