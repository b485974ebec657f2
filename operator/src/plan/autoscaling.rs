//! The autoscaler of a broker (`spec.autoscaling`): an `autoscaling/v2`
//! HorizontalPodAutoscaler, or a KEDA `ScaledObject`, whose target is the
//! `MqttBroker` itself through its scale subresource. The autoscaler
//! writes `spec.replicas` (as `kubectl scale` does) and the operator
//! follows it like any other change of the spec: the two never disagree
//! about the StatefulSet, which only the operator writes.
//!
//! Targets:
//! - CPU: the `Resource` metric `cpu`, as a utilisation of the broker
//!   container's request.
//! - Connections: the `Pods` metric `kubemqtt_connections` (the broker's
//!   gauge, per pod, summed over its listeners), served to the HPA by the
//!   Prometheus Adapter with the rules the chart ships
//!   (`prometheusAdapterRules`); KEDA queries Prometheus for it.
//! - Messages: the `Pods` metric `kubemqtt_messages_per_second` (the rate
//!   of `kubemqtt_messages_received_total`), likewise.
//!
//! Scale-up is fast (no stabilisation window by default, up to doubling
//! or four pods per 15 seconds); scale-down waits for its stabilisation
//! window (300 seconds by default) and removes one pod a minute, each pod
//! draining its clients to the others before it goes.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Resource;
use serde_json::{json, Value};

use super::statefulset::CONTAINER_NAME;
use super::Context;
use crate::api::{AutoscalingProvider, AutoscalingSpec, MqttBroker};

/// The Pods metric of client connections per broker pod.
pub const CONNECTIONS_METRIC: &str = "kubemqtt_connections";
/// The Pods metric of PUBLISH packets received per second per broker pod.
pub const MESSAGES_METRIC: &str = "kubemqtt_messages_per_second";
/// The window of the message rate, in KEDA's Prometheus query and the
/// Prometheus Adapter rule the chart ships.
pub const RATE_WINDOW: &str = "2m";

/// The autoscaler of `ctx`'s broker, as JSON: a HorizontalPodAutoscaler
/// or a ScaledObject, named after the broker; `None` without
/// `spec.autoscaling`.
pub(super) fn autoscaler(ctx: &Context<'_>) -> Option<Value> {
    let spec = ctx.spec.autoscaling.as_ref()?;
    let object = match spec.provider {
        AutoscalingProvider::Hpa => serde_json::to_value(hpa(ctx, spec)).ok()?,
        AutoscalingProvider::Keda => scaled_object(ctx, spec),
    };
    Some(object)
}

/// The object the autoscaler scales: the MqttBroker.
fn target(ctx: &Context<'_>) -> CrossVersionObjectReference {
    CrossVersionObjectReference {
        api_version: Some(MqttBroker::api_version(&()).into_owned()),
        kind: MqttBroker::kind(&()).into_owned(),
        name: ctx.names.broker.clone(),
    }
}

/// Scale-up fast, scale-down one pod a minute after the stabilisation
/// window.
fn behavior(spec: &AutoscalingSpec) -> HorizontalPodAutoscalerBehavior {
    let policy = |type_: &str, value: i32, period_seconds: i32| HPAScalingPolicy {
        type_: type_.to_owned(),
        value,
        period_seconds,
    };
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(spec.behavior.scale_up_stabilization_seconds),
            select_policy: Some("Max".to_owned()),
            policies: Some(vec![policy("Percent", 100, 15), policy("Pods", 4, 15)]),
            ..HPAScalingRules::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(spec.behavior.scale_down_stabilization_seconds),
            select_policy: Some("Min".to_owned()),
            policies: Some(vec![policy("Pods", 1, 60)]),
            ..HPAScalingRules::default()
        }),
    }
}

fn hpa(ctx: &Context<'_>, spec: &AutoscalingSpec) -> HorizontalPodAutoscaler {
    let targets = &spec.targets;
    let pods_metric = |name: &str, value: i64| MetricSpec {
        type_: "Pods".to_owned(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: name.to_owned(),
                selector: None,
            },
            target: MetricTarget {
                type_: "AverageValue".to_owned(),
                average_value: Some(Quantity(value.to_string())),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    };
    let mut metrics = Vec::new();
    if let Some(utilization) = targets.cpu_utilization {
        metrics.push(MetricSpec {
            type_: "Resource".to_owned(),
            resource: Some(ResourceMetricSource {
                name: "cpu".to_owned(),
                target: MetricTarget {
                    type_: "Utilization".to_owned(),
                    average_utilization: Some(utilization),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    if let Some(connections) = targets.connections_per_replica {
        metrics.push(pods_metric(CONNECTIONS_METRIC, connections));
    }
    if let Some(messages) = targets.messages_per_second_per_replica {
        metrics.push(pods_metric(MESSAGES_METRIC, messages));
    }
    HorizontalPodAutoscaler {
        metadata: ctx.metadata(&ctx.names.broker),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: target(ctx),
            min_replicas: Some(spec.min_replicas),
            max_replicas: spec.max_replicas,
            metrics: Some(metrics),
            behavior: Some(behavior(spec)),
        }),
        status: None,
    }
}

/// A KEDA ScaledObject: the same targets, the connection and message ones
/// as Prometheus queries over the broker's pods.
fn scaled_object(ctx: &Context<'_>, spec: &AutoscalingSpec) -> Value {
    let targets = &spec.targets;
    let server = spec
        .keda
        .as_ref()
        .map(|keda| keda.prometheus_server_address.clone())
        .unwrap_or_default();
    // The broker pods: `<name>-<ordinal>` in the broker's namespace.
    let pods = format!(
        "namespace=\"{}\",pod=~\"{}-[0-9]+\"",
        ctx.namespace, ctx.names.broker
    );
    let mut triggers = Vec::new();
    if let Some(utilization) = targets.cpu_utilization {
        triggers.push(json!({
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": utilization.to_string(), "containerName": CONTAINER_NAME},
        }));
    }
    let mut prometheus = |name: &str, query: String, threshold: i64| {
        triggers.push(json!({
            "type": "prometheus",
            "name": name,
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": server,
                "query": query,
                "threshold": threshold.to_string(),
            },
        }));
    };
    if let Some(connections) = targets.connections_per_replica {
        prometheus(
            "connections",
            format!("sum(kubemqtt_connections{{{pods}}})"),
            connections,
        );
    }
    if let Some(messages) = targets.messages_per_second_per_replica {
        prometheus(
            "messages",
            format!("sum(rate(kubemqtt_messages_received_total{{{pods}}}[{RATE_WINDOW}]))"),
            messages,
        );
    }
    let target = target(ctx);
    let mut object = json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ctx.metadata(&ctx.names.broker),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": target.api_version,
                "kind": target.kind,
                "name": target.name,
            },
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {"behavior": behavior(spec)},
            },
            "triggers": triggers,
        },
    });
    if let Some(interval) = spec.keda.as_ref().and_then(|k| k.polling_interval_seconds) {
        object["spec"]["pollingInterval"] = json!(interval);
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{broker_yaml, plan_fresh};

    const CLUSTER: &str = "replicas: 3\ncluster: {nats: {managed: {}}}\n";

    fn autoscaler_of(autoscaling: &str) -> Value {
        let plan = plan_fresh(&broker_yaml(&format!(
            "{CLUSTER}autoscaling: {autoscaling}"
        )));
        plan.autoscaler.expect("an autoscaler")
    }

    #[test]
    fn no_autoscaling_no_autoscaler() {
        assert!(plan_fresh(&broker_yaml(CLUSTER)).autoscaler.is_none());
    }

    #[test]
    fn an_hpa_scales_the_broker_through_its_scale_subresource() {
        let hpa = autoscaler_of(
            "{minReplicas: 3, maxReplicas: 12, targets: {cpuUtilization: 70, connectionsPerReplica: 20000, messagesPerSecondPerReplica: 5000}}",
        );
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["kind"], "HorizontalPodAutoscaler");
        assert_eq!(hpa["metadata"]["name"], "mq");
        assert_eq!(hpa["metadata"]["ownerReferences"][0]["kind"], "MqttBroker");
        let spec = &hpa["spec"];
        assert_eq!(
            spec["scaleTargetRef"],
            json!({"apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttBroker", "name": "mq"})
        );
        assert_eq!(
            (spec["minReplicas"].clone(), spec["maxReplicas"].clone()),
            (json!(3), json!(12))
        );
        assert_eq!(
            spec["metrics"],
            json!([
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                {"type": "Pods", "pods": {"metric": {"name": "kubemqtt_connections"}, "target": {"type": "AverageValue", "averageValue": "20000"}}},
                {"type": "Pods", "pods": {"metric": {"name": "kubemqtt_messages_per_second"}, "target": {"type": "AverageValue", "averageValue": "5000"}}},
            ])
        );
        // Up at once, down after five minutes, one pod a minute.
        let behavior = &spec["behavior"];
        assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0);
        assert_eq!(behavior["scaleDown"]["stabilizationWindowSeconds"], 300);
        assert_eq!(
            behavior["scaleDown"]["policies"],
            json!([{"type": "Pods", "value": 1, "periodSeconds": 60}])
        );
    }

    #[test]
    fn only_the_targets_set_become_metrics() {
        let hpa = autoscaler_of(
            "{maxReplicas: 5, targets: {connectionsPerReplica: 1000}, behavior: {scaleDownStabilizationSeconds: 900}}",
        );
        let metrics = hpa["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0]["pods"]["metric"]["name"], CONNECTIONS_METRIC);
        assert_eq!(hpa["spec"]["minReplicas"], 2);
        assert_eq!(
            hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            900
        );
    }

    #[test]
    fn keda_queries_prometheus_for_the_brokers_pods() {
        let scaled = autoscaler_of(
            "{maxReplicas: 8, provider: keda, keda: {prometheusServerAddress: \"http://prometheus.monitoring:9090\", pollingIntervalSeconds: 30}, targets: {cpuUtilization: 60, connectionsPerReplica: 1000, messagesPerSecondPerReplica: 200}}",
        );
        assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(scaled["kind"], "ScaledObject");
        let spec = &scaled["spec"];
        assert_eq!(spec["scaleTargetRef"]["kind"], "MqttBroker");
        assert_eq!(spec["minReplicaCount"], 2);
        assert_eq!(spec["maxReplicaCount"], 8);
        assert_eq!(spec["pollingInterval"], 30);
        let triggers = spec["triggers"].as_array().unwrap();
        assert_eq!(triggers[0]["type"], "cpu");
        assert_eq!(triggers[0]["metadata"]["value"], "60");
        assert_eq!(
            triggers[1]["metadata"]["serverAddress"],
            "http://prometheus.monitoring:9090"
        );
        assert_eq!(
            triggers[1]["metadata"]["query"],
            "sum(kubemqtt_connections{namespace=\"iot\",pod=~\"mq-[0-9]+\"})"
        );
        assert_eq!(triggers[1]["metadata"]["threshold"], "1000");
        assert_eq!(
            triggers[2]["metadata"]["query"],
            "sum(rate(kubemqtt_messages_received_total{namespace=\"iot\",pod=~\"mq-[0-9]+\"}[2m]))"
        );
        assert_eq!(
            spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                ["stabilizationWindowSeconds"],
            300
        );
    }

    #[test]
    fn the_connection_target_sets_the_drain_time() {
        use crate::plan::statefulset::termination_grace_seconds;
        let plain = broker_yaml(CLUSTER);
        let busy = broker_yaml(&format!(
            "{CLUSTER}autoscaling: {{maxReplicas: 5, targets: {{connectionsPerReplica: 50000}}}}"
        ));
        assert_eq!(termination_grace_seconds(&plain.spec), 30);
        // 50,000 clients at 500 a second: 100 s, and the hand-over.
        assert!(termination_grace_seconds(&busy.spec) > 100);
    }
}
