//! Rollouts of a broker's replicas: whether one is stuck, whether the
//! operator must delete a stuck pod itself, whether a restarted replica has
//! caught up, and how long a stopping replica needs to drain.
//!
//! The StatefulSet rolls its pods one at a time, highest ordinal first,
//! waiting for each to be Ready; the broker's readiness (`/readyz`) is
//! only 200 once it reaches the cluster's NATS with its streams and
//! buckets in place, so Ready means caught up. Two things it does not do:
//!
//! - **Report a rollout that cannot finish**: a pod of the new revision
//!   that never becomes Ready (an image that never starts, a configuration
//!   the broker refuses) stops the rollout silently. [`assess`] names the
//!   pod and why, for the `Progressing` condition and an Event.
//! - **Recover once the change is reverted**: with its pod stuck on the
//!   broken revision, the StatefulSet waits for that pod to become Ready
//!   before replacing it, forever (kubernetes/kubernetes#67250). When the
//!   stuck pod's revision is no longer the StatefulSet's update revision,
//!   [`assess`] asks the operator to delete it; the StatefulSet then
//!   creates it again from the (reverted) template.
//!
//! Pure: the controller ([`crate::controller::rollout`]) reads the pods
//! and deletes; the simulated cluster of the contract tests restarts
//! broker processes through the same checks.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::configmap::DRAIN_DEADLINE_SECONDS;
use super::rebalance::ReplicaState;

/// How long a pod of the rollout may stay not Ready before the rollout is
/// reported stuck (as a Deployment's `progressDeadlineSeconds`).
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// The label a StatefulSet puts on its pods: the revision they run.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Waiting reasons of a container that will not start by itself.
const FAILING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What matters of one broker pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodState {
    /// Its name, `<broker>-<ordinal>`.
    pub name: String,
    /// The StatefulSet revision it runs.
    pub revision: Option<String>,
    /// Its Ready condition.
    pub ready: bool,
    /// It is being deleted.
    pub terminating: bool,
    /// How long it has not been Ready: since its Ready condition last
    /// changed, or since it was created.
    pub not_ready_for: Duration,
    /// The broker container's waiting reason (`CrashLoopBackOff`...).
    pub waiting_reason: Option<String>,
    /// How the broker container last ended: exit code and message (the
    /// last lines of its log).
    pub last_exit: Option<(i32, String)>,
    /// The broker container's restarts.
    pub restarts: i32,
}

impl PodState {
    /// What `pod` (broker container `container`) says, at `now`.
    pub fn of(pod: &Pod, container: &str, now: Timestamp) -> PodState {
        let status = pod.status.as_ref();
        let ready_condition = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"));
        let ready = ready_condition.is_some_and(|c| c.status == "True");
        let since = ready_condition
            .and_then(|c| c.last_transition_time.as_ref())
            .or(pod.metadata.creation_timestamp.as_ref())
            .map(|time| time.0);
        let not_ready_for = match (ready, since) {
            (false, Some(since)) => {
                Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
            }
            _ => Duration::ZERO,
        };
        let broker = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|statuses| statuses.iter().find(|c| c.name == container));
        let waiting_reason = broker
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        let last_exit = broker
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                let message = t
                    .message
                    .clone()
                    .or_else(|| t.reason.clone())
                    .unwrap_or_default();
                (t.exit_code, message)
            });
        PodState {
            name: pod.metadata.name.clone().unwrap_or_default(),
            revision: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(REVISION_LABEL).cloned()),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            not_ready_for,
            waiting_reason,
            last_exit,
            restarts: broker.map_or(0, |c| c.restart_count),
        }
    }

    /// Why this pod will not become Ready by itself, if it will not.
    pub fn failing(&self, deadline: Duration) -> Option<String> {
        if self.ready || self.terminating {
            return None;
        }
        let exit = self
            .last_exit
            .as_ref()
            .map(|(code, message)| {
                let message = message.trim();
                let last_line = message.lines().last().unwrap_or_default();
                match last_line.is_empty() {
                    true => format!(" (last exit code {code})"),
                    false => format!(" (last exit code {code}: {last_line})"),
                }
            })
            .unwrap_or_default();
        if let Some(reason) = self
            .waiting_reason
            .as_deref()
            .filter(|reason| FAILING_REASONS.contains(reason))
        {
            return Some(format!("{reason}{exit}"));
        }
        (self.not_ready_for >= deadline)
            .then(|| format!("not Ready for {} s{exit}", self.not_ready_for.as_secs()))
    }
}

/// A StatefulSet's revisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Revisions {
    /// The revision of the pods not yet rolled.
    pub current: Option<String>,
    /// The revision being rolled out (the template now).
    pub update: Option<String>,
}

impl Revisions {
    /// What the StatefulSet's status says.
    pub fn of(stateful_set: &StatefulSet) -> Revisions {
        let status = stateful_set.status.as_ref();
        Revisions {
            current: status.and_then(|s| s.current_revision.clone()),
            update: status.and_then(|s| s.update_revision.clone()),
        }
    }
}

/// How the rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every pod runs the update revision and is Ready.
    Complete,
    /// Pods are being replaced or starting, within the deadline.
    Progressing {
        /// Pods on the update revision, and pods.
        updated: usize,
        /// All pods.
        pods: usize,
    },
    /// A pod will not become Ready by itself.
    Stuck {
        /// The pod.
        pod: String,
        /// Why (`CrashLoopBackOff (last exit code 2: ...)`).
        reason: String,
        /// Whether it runs the revision being rolled out (then reverting
        /// the spec is the way back); otherwise the operator deletes it.
        on_update_revision: bool,
    },
}

/// Condition reason of a stuck rollout.
pub const REASON_STUCK: &str = "RolloutStuck";
/// Event reason of the deletion of a stuck pod.
pub const REASON_STUCK_POD_DELETED: &str = "StuckPodDeleted";

/// What [`assess`] found, and what the operator should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The rollout.
    pub rollout: Rollout,
    /// A pod to delete so that the StatefulSet recreates it from the
    /// current template.
    pub delete: Option<String>,
}

impl Assessment {
    /// The message of the `Progressing` condition, or of the Event, for a
    /// stuck rollout; `None` otherwise.
    pub fn stuck_message(&self) -> Option<String> {
        let Rollout::Stuck {
            pod,
            reason,
            on_update_revision,
        } = &self.rollout
        else {
            return None;
        };
        Some(if *on_update_revision {
            format!(
                "the rollout is stuck: pod {pod} of the new revision is {reason}; fix or revert \
                 the change to the MqttBroker (the operator then replaces the pod)"
            )
        } else {
            format!(
                "pod {pod} is {reason} on a revision the broker no longer has (its spec was \
                 reverted or changed): the operator deletes it so that the StatefulSet creates \
                 it again from the current template (the StatefulSet alone waits for it \
                 forever, kubernetes#67250)"
            )
        })
    }
}

/// The rollout of `pods` (a broker's, in any order) to `revisions`: stuck
/// when a pod will not become Ready by itself within `deadline`, and which
/// pod to delete.
pub fn assess(revisions: &Revisions, pods: &[PodState], deadline: Duration) -> Assessment {
    let mut by_ordinal: Vec<&PodState> = pods.iter().collect();
    // The StatefulSet rolls from the highest ordinal down: look there
    // first.
    by_ordinal.sort_by_key(|pod| std::cmp::Reverse(ordinal(&pod.name)));
    let on_update = |pod: &PodState| {
        revisions.update.is_some() && pod.revision.is_some() && pod.revision == revisions.update
    };
    if let Some((pod, reason)) = by_ordinal
        .iter()
        .find_map(|pod| pod.failing(deadline).map(|reason| (*pod, reason)))
    {
        let on_update_revision = on_update(pod) || revisions.update.is_none();
        return Assessment {
            delete: (!on_update_revision).then(|| pod.name.clone()),
            rollout: Rollout::Stuck {
                pod: pod.name.clone(),
                reason,
                on_update_revision,
            },
        };
    }
    let updated = pods.iter().filter(|pod| on_update(pod)).count();
    let rollout = if updated == pods.len() && pods.iter().all(|pod| pod.ready) {
        Rollout::Complete
    } else {
        Rollout::Progressing {
            updated,
            pods: pods.len(),
        }
    };
    Assessment {
        rollout,
        delete: None,
    }
}

/// The ordinal of `<broker>-<ordinal>`.
fn ordinal(name: &str) -> Option<u32> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Whether a restarted replica has caught up, so that the next one may
/// go: Ready (its `/readyz`, which waits for the cluster's streams and
/// buckets), in the cluster's NATS, and not stopping.
pub fn caught_up(replica: &ReplicaState) -> bool {
    replica.ready && !replica.draining && replica.cluster_connected != Some(false)
}

/// The time a stopping replica needs: the broker's drain deadline
/// (`drain.deadline_secs`) and the pod's termination grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainBudget {
    /// Seconds the broker may take to send its clients away and hand
    /// their sessions to the cluster.
    pub deadline_secs: u64,
    /// The pod's `terminationGracePeriodSeconds`: a little longer.
    pub grace_secs: i64,
}

/// Seconds the broker needs, after its clients have left, to hand their
/// sessions to the cluster and leave it.
pub const HANDOFF_SECS: u64 = 10;

/// The drain budget of a replica holding up to `connections` clients sent
/// away at `rate_per_sec` (0: all at once): never less than the broker's
/// default deadline, so that a replica with few clients still hands their
/// sessions over.
pub fn drain_budget(connections: u64, rate_per_sec: u32) -> DrainBudget {
    let sending = match rate_per_sec {
        0 => 0,
        rate => connections.div_ceil(u64::from(rate)),
    };
    let deadline_secs = (sending + HANDOFF_SECS).max(DRAIN_DEADLINE_SECONDS);
    DrainBudget {
        deadline_secs,
        grace_secs: deadline_secs as i64 + 5,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    const OLD: &str = "mq-6d5f";
    const NEW: &str = "mq-7c9a";

    fn state(name: &str, revision: &str, ready: bool) -> PodState {
        PodState {
            name: name.to_owned(),
            revision: Some(revision.to_owned()),
            ready,
            ..PodState::default()
        }
    }

    fn revisions(current: &str, update: &str) -> Revisions {
        Revisions {
            current: Some(current.to_owned()),
            update: Some(update.to_owned()),
        }
    }

    fn crashing(mut pod: PodState) -> PodState {
        pod.waiting_reason = Some("CrashLoopBackOff".to_owned());
        pod.last_exit = Some((
            2,
            "Error: /etc/kubemqtt/config/broker.toml line 12: unknown field `limitz`\n".to_owned(),
        ));
        pod
    }

    #[test]
    fn a_rollout_in_progress_is_not_stuck() {
        let pods = [
            state("mq-0", OLD, true),
            state("mq-1", OLD, true),
            state("mq-2", NEW, false),
        ];
        let assessment = assess(&revisions(OLD, NEW), &pods, PROGRESS_DEADLINE);
        assert_eq!(
            assessment.rollout,
            Rollout::Progressing {
                updated: 1,
                pods: 3
            }
        );
        assert_eq!(assessment.delete, None);
        assert_eq!(assessment.stuck_message(), None);
    }

    #[test]
    fn every_pod_ready_on_the_update_revision_is_complete() {
        let pods = [state("mq-0", NEW, true), state("mq-1", NEW, true)];
        assert_eq!(
            assess(&revisions(NEW, NEW), &pods, PROGRESS_DEADLINE).rollout,
            Rollout::Complete
        );
    }

    #[test]
    fn a_crashing_pod_of_the_new_revision_is_reported_not_deleted() {
        let pods = [
            state("mq-0", OLD, true),
            state("mq-1", OLD, true),
            crashing(state("mq-2", NEW, false)),
        ];
        let assessment = assess(&revisions(OLD, NEW), &pods, PROGRESS_DEADLINE);
        assert_eq!(assessment.delete, None);
        assert_eq!(
            assessment.rollout,
            Rollout::Stuck {
                pod: "mq-2".to_owned(),
                reason: "CrashLoopBackOff (last exit code 2: Error: \
                         /etc/kubemqtt/config/broker.toml line 12: unknown field `limitz`)"
                    .to_owned(),
                on_update_revision: true,
            }
        );
        let message = assessment.stuck_message().unwrap();
        assert!(
            message.starts_with("the rollout is stuck: pod mq-2"),
            "{message}"
        );
        assert!(message.contains("revert"), "{message}");
    }

    #[test]
    fn after_a_revert_the_stuck_pod_is_deleted() {
        // The spec went back: the update revision is the old one again,
        // mq-2 still runs the broken one and never becomes Ready.
        let pods = [
            state("mq-0", OLD, true),
            state("mq-1", OLD, true),
            crashing(state("mq-2", NEW, false)),
        ];
        let assessment = assess(&revisions(OLD, OLD), &pods, PROGRESS_DEADLINE);
        assert_eq!(assessment.delete.as_deref(), Some("mq-2"));
        assert!(assessment
            .stuck_message()
            .unwrap()
            .contains("kubernetes#67250"));
    }

    #[test]
    fn a_pod_not_ready_past_the_deadline_is_stuck_too() {
        // A configuration the broker loads but a cluster it never joins:
        // running, never Ready.
        let mut pod = state("mq-1", NEW, false);
        pod.not_ready_for = Duration::from_secs(599);
        let pods = [state("mq-0", OLD, true), pod.clone()];
        assert!(matches!(
            assess(&revisions(OLD, NEW), &pods, PROGRESS_DEADLINE).rollout,
            Rollout::Progressing { .. }
        ));
        pod.not_ready_for = PROGRESS_DEADLINE;
        let pods = [state("mq-0", OLD, true), pod];
        let assessment = assess(&revisions(OLD, NEW), &pods, PROGRESS_DEADLINE);
        assert!(matches!(
            &assessment.rollout,
            Rollout::Stuck { pod, reason, on_update_revision: true }
                if pod == "mq-1" && reason == "not Ready for 600 s"
        ));
    }

    #[test]
    fn image_pull_failures_are_stuck_at_once_and_terminating_pods_never() {
        let mut pod = state("mq-0", NEW, false);
        pod.waiting_reason = Some("ImagePullBackOff".to_owned());
        assert_eq!(
            pod.failing(PROGRESS_DEADLINE).as_deref(),
            Some("ImagePullBackOff")
        );
        pod.terminating = true;
        assert_eq!(pod.failing(PROGRESS_DEADLINE), None);
        // Starting up normally.
        let mut pod = state("mq-0", NEW, false);
        pod.waiting_reason = Some("ContainerCreating".to_owned());
        assert_eq!(pod.failing(PROGRESS_DEADLINE), None);
    }

    #[test]
    fn the_highest_ordinal_is_looked_at_first() {
        let pods = [
            crashing(state("mq-2", OLD, false)),
            crashing(state("mq-10", OLD, false)),
        ];
        let assessment = assess(&revisions(OLD, NEW), &pods, PROGRESS_DEADLINE);
        assert_eq!(assessment.delete.as_deref(), Some("mq-10"));
    }

    #[test]
    fn pods_are_read_from_their_status() {
        let now: Timestamp = "2025-06-01T12:10:00Z".parse().unwrap();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("mq-2".to_owned()),
                labels: Some([(REVISION_LABEL.to_owned(), NEW.to_owned())].into()),
                creation_timestamp: Some(Time("2025-06-01T11:00:00Z".parse().unwrap())),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: "False".to_owned(),
                    last_transition_time: Some(Time("2025-06-01T12:00:00Z".parse().unwrap())),
                    ..PodCondition::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "broker".to_owned(),
                    restart_count: 4,
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".to_owned()),
                            message: None,
                        }),
                        ..ContainerState::default()
                    }),
                    last_state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 2,
                            reason: Some("Error".to_owned()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let state = PodState::of(&pod, "broker", now);
        assert_eq!(
            state,
            PodState {
                name: "mq-2".to_owned(),
                revision: Some(NEW.to_owned()),
                ready: false,
                terminating: false,
                not_ready_for: Duration::from_secs(600),
                waiting_reason: Some("CrashLoopBackOff".to_owned()),
                last_exit: Some((2, "Error".to_owned())),
                restarts: 4,
            }
        );
        let set = StatefulSet {
            status: Some(StatefulSetStatus {
                current_revision: Some(OLD.to_owned()),
                update_revision: Some(NEW.to_owned()),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        };
        assert_eq!(Revisions::of(&set), revisions(OLD, NEW));
    }

    #[test]
    fn caught_up_means_ready_in_the_cluster_and_not_stopping() {
        let mut replica = ReplicaState {
            name: "mq-0".to_owned(),
            ready: true,
            ready_for: Duration::ZERO,
            draining: false,
            connections: Some(0),
            cluster_connected: Some(true),
        };
        assert!(caught_up(&replica));
        replica.cluster_connected = Some(false);
        assert!(!caught_up(&replica));
        replica.cluster_connected = None;
        replica.draining = true;
        assert!(!caught_up(&replica));
        replica.draining = false;
        replica.ready = false;
        assert!(!caught_up(&replica));
    }

    #[test]
    fn the_drain_budget_follows_the_connections_and_the_rate() {
        // Few clients: the broker's default.
        assert_eq!(
            drain_budget(100, 500),
            DrainBudget {
                deadline_secs: DRAIN_DEADLINE_SECONDS,
                grace_secs: DRAIN_DEADLINE_SECONDS as i64 + 5
            }
        );
        // 50,000 clients at 500 a second: 100 s, plus the hand-off.
        assert_eq!(
            drain_budget(50_000, 500),
            DrainBudget {
                deadline_secs: 110,
                grace_secs: 115
            }
        );
        // All at once.
        assert_eq!(
            drain_budget(50_000, 0).deadline_secs,
            DRAIN_DEADLINE_SECONDS
        );
    }
}
