//! What a clustered broker adds to a reconcile: reading its managed NATS
//! and its autoscaler (only when the spec has them, or the status says
//! they were made, so that a single broker costs no extra request),
//! deleting what the spec no longer asks for, and reading the broker pods'
//! `/metrics` once per reconcile (for the status: connections, whether each
//! reaches NATS; and for the replicas' step), and the cluster's part of the
//! status ([`cluster_status`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use tracing::info;

use super::apply::Seen;
use super::observe::{get, ObserveError};
use super::replica_admin::ObservedPod;
use super::status::{ClusterSeen, Verdict};
use super::{Context, Error, ObjectKey};
use crate::api::{
    AutoscalingProvider, MqttBroker, MqttBrokerStatus, NatsStatus, REASON_NATS_QUORUM_LOST,
    REASON_NATS_UNREACHABLE, REASON_REPLICA_DOWN,
};
use crate::plan::nats::{CLIENT_PORT, SERVERS};
use crate::plan::{Names, Plan};

/// What was read of a broker's cluster objects.
#[derive(Debug, Clone, Default)]
pub struct ClusterObservation {
    /// The managed NATS StatefulSet, if it exists.
    pub nats_stateful_set: Option<StatefulSet>,
    /// Every managed NATS object that exists (for deletion).
    pub nats_objects: Vec<ObjectKey>,
    /// The autoscaler that exists: `HorizontalPodAutoscaler` or
    /// `ScaledObject`, named after the broker.
    pub autoscalers: Vec<ObjectKey>,
    /// The broker PodDisruptionBudget exists.
    pub pod_disruption_budget: bool,
}

/// KEDA's `ScaledObject` resource.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// Whether the broker has, or had, a managed NATS.
fn wants_nats(broker: &MqttBroker) -> bool {
    let managed = broker
        .spec
        .cluster
        .as_ref()
        .is_some_and(|c| c.nats.managed.is_some());
    let had = broker
        .status
        .as_ref()
        .and_then(|s| s.nats.as_ref())
        .is_some_and(|n| n.mode == "Managed");
    managed || had
}

/// Reads the managed NATS objects the owned lists did not carry (its
/// ConfigMap, StatefulSet and PodDisruptionBudget) and the autoscaler, when
/// the spec has them or the status says they were made. The NATS Secrets and
/// Services come in the broker's owned lists: `secrets` and `services` are
/// what is left of them.
pub async fn observe(
    client: &Client,
    broker: &MqttBroker,
    namespace: &str,
    names: &Names,
    secrets: &mut BTreeMap<String, Secret>,
    services: &mut BTreeMap<String, Service>,
    seen: &mut BTreeMap<ObjectKey, Seen>,
) -> Result<ClusterObservation, Error> {
    let mut observation = ClusterObservation::default();
    for name in [&names.nats_headless_service, &names.nats] {
        if let Some(service) = services.remove(name.as_str()) {
            seen.insert(ObjectKey::new("Service", name), Seen::of(&service.metadata));
            observation
                .nats_objects
                .push(ObjectKey::new("Service", name));
        }
    }
    if wants_nats(broker) {
        let config_map = get::<ConfigMap>(client, namespace, &names.nats_config_map).await?;
        let stateful_set = get::<StatefulSet>(client, namespace, &names.nats).await?;
        let pdb = get::<PodDisruptionBudget>(client, namespace, &names.nats).await?;
        for (kind, name, meta) in [
            (
                "ConfigMap",
                &names.nats_config_map,
                config_map.as_ref().map(|o| &o.metadata),
            ),
            (
                "StatefulSet",
                &names.nats,
                stateful_set.as_ref().map(|o| &o.metadata),
            ),
            (
                "PodDisruptionBudget",
                &names.nats,
                pdb.as_ref().map(|o| &o.metadata),
            ),
        ] {
            if let Some(meta) = meta {
                seen.insert(ObjectKey::new(kind, name), Seen::of(meta));
                observation.nats_objects.push(ObjectKey::new(kind, name));
            }
        }
        observation.nats_stateful_set = stateful_set;
    }
    // The NATS Secrets: kept for the planner, which keeps the certificates.
    for name in [
        &names.nats_ca_secret,
        &names.nats_server_secret,
        &names.nats_client_secret,
    ] {
        if let Some(secret) = secrets.get(name.as_str()) {
            seen.insert(ObjectKey::new("Secret", name), Seen::of(&secret.metadata));
            observation
                .nats_objects
                .push(ObjectKey::new("Secret", name));
        }
    }

    let had_autoscaler = broker
        .status
        .as_ref()
        .is_some_and(|s| s.autoscaler.is_some());
    let provider = broker.spec.autoscaling.as_ref().map(|a| a.provider);
    if provider == Some(AutoscalingProvider::Hpa) || had_autoscaler {
        if let Some(hpa) = get::<HorizontalPodAutoscaler>(client, namespace, &names.broker).await? {
            let key = ObjectKey::new("HorizontalPodAutoscaler", &names.broker);
            seen.insert(key.clone(), Seen::of(&hpa.metadata));
            observation.autoscalers.push(key);
        }
    }
    if provider == Some(AutoscalingProvider::Keda) || had_autoscaler {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &scaled_object_resource());
        let key = ObjectKey::new("ScaledObject", &names.broker);
        // Without KEDA there is no such resource: nothing exists.
        match api.get_opt(&names.broker).await {
            Ok(Some(object)) => {
                seen.insert(key.clone(), Seen::of(&object.metadata));
                observation.autoscalers.push(key);
            }
            Ok(None) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ObserveError {
                    object: key,
                    source,
                }
                .into())
            }
        }
    }
    Ok(observation)
}

/// Deletes the objects that exist but the plan no longer holds: the broker's
/// PodDisruptionBudget (one replica), the managed NATS (the spec dropped
/// it; its volumes stay) and an autoscaler (dropped, or of the other
/// provider). Returns what was deleted, for Events.
pub async fn delete_dropped(
    ctx: &Context,
    namespace: &str,
    names: &Names,
    plan: &Plan,
    observed: &ClusterObservation,
) -> Result<Vec<ObjectKey>, Error> {
    let planned: Vec<ObjectKey> = plan
        .objects()?
        .iter()
        .map(|o| {
            ObjectKey::new(
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let mut dropped: Vec<ObjectKey> = Vec::new();
    if observed.pod_disruption_budget {
        dropped.push(ObjectKey::new("PodDisruptionBudget", &names.broker));
    }
    dropped.extend(observed.nats_objects.iter().cloned());
    dropped.extend(observed.autoscalers.iter().cloned());
    dropped.retain(|key| !planned.contains(key));
    for key in &dropped {
        delete(&ctx.client, namespace, key).await?;
        info!(object = %key, "deleted: the spec no longer asks for it");
    }
    Ok(dropped)
}

async fn delete(client: &Client, namespace: &str, key: &ObjectKey) -> Result<(), Error> {
    let resource = match key.kind.as_str() {
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "PodDisruptionBudget" => ApiResource::erase::<PodDisruptionBudget>(&()),
        "HorizontalPodAutoscaler" => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        "ScaledObject" => scaled_object_resource(),
        _ => return Ok(()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    match api.delete(&key.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            object: key.clone(),
            source,
        }),
    }
}

/// What the broker pods' metrics say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodMetrics {
    /// Pods that answered.
    pub answered: i32,
    /// Client connections summed over them.
    pub connections: i64,
    /// Those that report a NATS connection.
    pub cluster_connected: i32,
}

impl PodMetrics {
    /// What the pods that answered say (`pods` as [`read_pods`] saw them).
    pub fn of(pods: &[ObservedPod]) -> PodMetrics {
        let mut metrics = PodMetrics::default();
        for text in pods.iter().filter_map(|pod| pod.metrics.as_deref()) {
            let (connections, connected) = parse_metrics(text);
            metrics.answered += 1;
            metrics.connections += connections;
            metrics.cluster_connected += i32::from(connected);
        }
        metrics
    }
}

/// The broker's `pods`, each with its `/metrics` text when it answered:
/// every running pod (not being deleted, with an IP address) is read, all
/// at once. Read once per reconcile: the status ([`PodMetrics::of`]) and
/// the replicas' step (their connections) both use what was read.
pub async fn read_pods(ctx: &Context, pods: &[Pod]) -> Vec<ObservedPod> {
    let reads = pods.iter().map(|pod| async move {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|_| pod.metadata.deletion_timestamp.is_none());
        let metrics = match ip {
            Some(ip) => match ctx.pod_metrics.read(ip).await {
                Ok(text) => Some(text),
                Err(error) => {
                    tracing::debug!(%error, "broker pod metrics");
                    None
                }
            },
            None => None,
        };
        ObservedPod {
            pod: pod.clone(),
            metrics,
        }
    });
    futures::future::join_all(reads).await
}

/// Client connections (`kubemqtt_connections`, summed over listeners) and
/// whether the pod reaches NATS (`kubemqtt_cluster_connected`), from a
/// Prometheus text exposition.
pub fn parse_metrics(text: &str) -> (i64, bool) {
    let mut connections = 0;
    let mut connected = false;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        match name {
            "kubemqtt_connections" => connections += value as i64,
            "kubemqtt_cluster_connected" => connected = value >= 1.0,
            _ => {}
        }
    }
    (connections, connected)
}

/// The cluster's part of the status.
pub(super) struct ClusterStatus {
    pub connections: Option<i64>,
    pub nats: Option<NatsStatus>,
    pub autoscaler: Option<String>,
    /// `ClusterDegraded`, for a clustered broker whose objects were
    /// applied.
    pub verdict: Option<Verdict>,
}

/// The NATS state, connections and `ClusterDegraded` of a broker whose
/// objects were applied; nothing for a broker without `spec.cluster`.
/// `pods` are the broker pods ready, wanted, and a message saying so.
pub(super) fn cluster_status(
    broker: &MqttBroker,
    seen: ClusterSeen<'_>,
    pods: (i32, i32, &str),
    previous: &MqttBrokerStatus,
) -> ClusterStatus {
    let (ready_pods, desired_pods, pods_message) = pods;
    let autoscaler = seen.autoscaler.map(str::to_owned);
    let Some(cluster) = &broker.spec.cluster else {
        return ClusterStatus {
            connections: None,
            nats: None,
            autoscaler,
            verdict: None,
        };
    };
    let name = broker.metadata.name.as_deref().unwrap_or_default();
    let namespace = broker.metadata.namespace.as_deref().unwrap_or_default();
    let metrics = seen.metrics.filter(|m| m.answered > 0);
    let connected = metrics.map(|m| m.cluster_connected);
    let unreachable = metrics.is_some_and(|m| m.cluster_connected == 0);
    let partly = metrics.is_some_and(|m| m.cluster_connected < m.answered);
    let nats = if cluster.nats.managed.is_some() {
        let ready = seen
            .nats_stateful_set
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let quorum = SERVERS / 2 + 1;
        let state = if ready < quorum {
            "QuorumLost"
        } else if unreachable {
            "Unreachable"
        } else if ready < SERVERS || partly {
            "Degraded"
        } else {
            "Ready"
        };
        NatsStatus {
            mode: "Managed".to_owned(),
            state: state.to_owned(),
            ready_servers: Some(ready),
            servers: Some(SERVERS),
            connected_brokers: connected,
            urls: (0..SERVERS)
                .map(|i| {
                    format!(
                        "tls://{name}-nats-{i}.{name}-nats-headless.{namespace}.svc:{CLIENT_PORT}"
                    )
                })
                .collect(),
        }
    } else {
        let state = match metrics {
            None => "Unknown",
            Some(_) if unreachable => "Unreachable",
            Some(_) if partly => "Degraded",
            Some(_) => "Ready",
        };
        NatsStatus {
            mode: "External".to_owned(),
            state: state.to_owned(),
            ready_servers: None,
            servers: None,
            connected_brokers: connected,
            urls: cluster
                .nats
                .external
                .as_ref()
                .map(|e| e.urls.clone())
                .unwrap_or_default(),
        }
    };
    let verdict = match nats.state.as_str() {
        "QuorumLost" => Verdict::yes(
            REASON_NATS_QUORUM_LOST,
            &format!(
                "{} of {SERVERS} NATS servers are ready: JetStream needs {} to accept writes \
                 (kubectl get pods -l app.kubernetes.io/name=kubemqtt-nats,app.kubernetes.io/instance={name})",
                nats.ready_servers.unwrap_or(0),
                SERVERS / 2 + 1
            ),
        ),
        "Unreachable" | "Degraded" if partly => Verdict::yes(
            REASON_NATS_UNREACHABLE,
            &format!(
                "{} of {} broker pods that answered report no connection to NATS ({}); see \
                 their logs",
                metrics.map_or(0, |m| m.answered - m.cluster_connected),
                metrics.map_or(0, |m| m.answered),
                nats.urls.join(", ")
            ),
        ),
        _ if ready_pods < desired_pods => Verdict::yes(REASON_REPLICA_DOWN, pods_message),
        _ if nats.state == "Degraded" => Verdict::no(
            "QuorumKept",
            &format!(
                "{} of {SERVERS} NATS servers are ready: one more down would stop the cluster",
                nats.ready_servers.unwrap_or(0)
            ),
        ),
        _ => Verdict::no("ClusterHealthy", pods_message),
    };
    ClusterStatus {
        connections: metrics.map(|m| m.connections).or(previous.connections),
        nats: Some(nats),
        autoscaler,
        verdict: Some(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_give_connections_and_the_nats_link() {
        let text = "# HELP kubemqtt_connections Open client connections\n\
                    # TYPE kubemqtt_connections gauge\n\
                    kubemqtt_connections{listener=\"mqtt\"} 120\n\
                    kubemqtt_connections{listener=\"mqtts\"} 30\n\
                    kubemqtt_connections_total{listener=\"mqtt\"} 999\n\
                    kubemqtt_cluster_connected 1\n";
        assert_eq!(parse_metrics(text), (150, true));
        assert_eq!(
            parse_metrics(
                "kubemqtt_cluster_connected 0\nkubemqtt_connections{listener=\"mqtt\"} 4\n"
            ),
            (4, false)
        );
        assert_eq!(parse_metrics("garbage\n"), (0, false));
    }
}
