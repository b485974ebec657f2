//! The PodDisruptionBudget: voluntary evictions (node drains, cluster
//! upgrades) take at most one broker pod at a time. With a single replica
//! this lets drains proceed; the broker's shutdown disconnects clients
//! cleanly so they reconnect to the rescheduled pod.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Context;

/// The broker's PodDisruptionBudget.
pub(super) fn pod_disruption_budget(ctx: &Context<'_>) -> PodDisruptionBudget {
    PodDisruptionBudget {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MqttBrokerSpec;
    use crate::plan::selector_labels;
    use crate::plan::testing::{broker, plan_fresh};

    #[test]
    fn one_pod_at_a_time_selected_by_the_broker_labels() {
        let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
        let pdb = &plan.pod_disruption_budget;
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
}
