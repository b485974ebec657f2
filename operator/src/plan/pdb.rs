//! The PodDisruptionBudget: voluntary evictions (node drains, cluster
//! upgrades) take at most one broker pod at a time.
//!
//! Only with more than one replica: a budget over a single pod either
//! protects nothing (`maxUnavailable: 1`) or blocks every node drain
//! (`minAvailable: 1`), so a single broker has none and a drain restarts
//! it elsewhere, its clients reconnecting once it is back. With more
//! replicas, `maxUnavailable: 1` keeps all but one serving during a drain
//! while letting it proceed; the evicted pod drains its clients to the
//! others first. (`maxUnavailable` rather than `minAvailable: N-1`, so that
//! it follows `spec.replicas` as the autoscaler changes it, and lets a
//! drain through when a pod is already down for another reason only if
//! that pod is the one evicted.)

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Context;

/// The broker's PodDisruptionBudget, with more than one replica.
pub(super) fn pod_disruption_budget(ctx: &Context<'_>) -> Option<PodDisruptionBudget> {
    if ctx.spec.replicas <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: ctx.metadata(&ctx.names.broker),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MqttBrokerSpec;
    use crate::plan::selector_labels;
    use crate::plan::testing::{broker, broker_yaml, plan_fresh};

    #[test]
    fn one_pod_at_a_time_selected_by_the_broker_labels() {
        let plan = plan_fresh(&broker_yaml("replicas: 3\ncluster: {nats: {managed: {}}}"));
        let pdb = plan.pod_disruption_budget.expect("a budget");
        assert_eq!(pdb.metadata.name.as_deref(), Some("mq"));
        let spec = pdb.spec.as_ref().unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert!(spec.min_available.is_none());
        assert_eq!(
            spec.selector
                .as_ref()
                .unwrap()
                .match_labels
                .clone()
                .unwrap(),
            selector_labels("mq")
        );
    }

    #[test]
    fn a_single_replica_has_no_budget() {
        assert!(plan_fresh(&broker(MqttBrokerSpec::default()))
            .pod_disruption_budget
            .is_none());
        assert!(
            plan_fresh(&broker_yaml("replicas: 1\ncluster: {nats: {managed: {}}}"))
                .pod_disruption_budget
                .is_none()
        );
        assert!(plan_fresh(&broker_yaml("replicas: 0"))
            .pod_disruption_budget
            .is_none());
    }
}
