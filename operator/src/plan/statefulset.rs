//! The StatefulSet: the broker pods.
//!
//! Pods run as a non-root user on a read-only root filesystem and see the
//! ConfigMap, the certificate Secret and the auth Secret as files. The pod
//! template carries a checksum of the configuration file, so a change the
//! broker cannot reload (anything in `broker.toml` today) rolls the pods,
//! while a renewed certificate, which the broker reloads from its files,
//! does not.
//!
//! Choices for several replicas (`spec.cluster`):
//! - `podManagementPolicy: OrderedReady` (the default, set explicitly since
//!   it cannot change later): a scale-down removes one pod at a time, each
//!   draining its clients at the configured rate before the next starts,
//!   so the cluster as a whole never cuts clients faster than that rate.
//!   `Parallel` would make scale-ups a few seconds faster and scale-downs
//!   cut several pods' clients at once.
//! - `updateStrategy: RollingUpdate`: one pod at a time, highest ordinal
//!   first, each replaced pod Ready before the next.
//! - `persistentVolumeClaimRetentionPolicy` Retain/Retain: a clustered
//!   broker has no volumes (its state is in JetStream), so nothing is left
//!   behind when it scales down; a single broker with persistence keeps its
//!   volume when scaled to 0 (that is how it is stopped) or deleted.
//! - Unless the spec sets its own, topology spread constraints over zones
//!   and nodes (`ScheduleAnyway`: a preference, never a pod left pending).
//! - `terminationGracePeriodSeconds` long enough to drain the clients a
//!   pod is expected to hold at the drain rate
//!   ([`termination_grace_seconds`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::configmap::{CONFIG_FILE, DRAIN_DEADLINE_SECONDS};
use super::{cluster, fleet, rollout, Context, AUTH_DIR, CONFIG_DIR, DATA_DIR, HTTP_PORT, TLS_DIR};
use crate::api::{MqttBrokerSpec, ProbeSpec};

/// Pod template annotation: SHA-256 of the broker's configuration file.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "kubemqtt.io/config-checksum";
/// Name of the broker container.
pub const CONTAINER_NAME: &str = "broker";
/// Name of the volume claim template (and so of each pod's PVC,
/// `data-<pod>`).
pub const DATA_VOLUME: &str = "data";
/// Name of the broker's HTTP port (health, metrics, admin API).
pub const HTTP_PORT_NAME: &str = "http";
/// Seconds a stopping pod gets when no connection count is expected: the
/// broker's default drain deadline plus time to flush its store and exit.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = DRAIN_DEADLINE_SECONDS as i64 + 5;
/// Clients a stopping broker disconnects per second when nothing says
/// otherwise (the broker's default).
pub const DEFAULT_DRAIN_RATE: u32 = 500;
/// Pod template annotation: SHA-256 of the brokers' NATS client
/// certificate (managed NATS), so that a renewed one is taken up.
pub const NATS_CLIENT_CHECKSUM_ANNOTATION: &str = "kubemqtt.io/nats-client-checksum";
/// The user and group the broker runs as (the distroless "nonroot" user).
pub const RUN_AS_USER: i64 = 65532;
/// The memory limit of a broker whose spec sets no resources.
pub const DEFAULT_MEMORY_LIMIT: &str = "1Gi";

/// The broker's drain deadline (`drain.deadline_secs`), in seconds: long
/// enough to send away the clients a pod is expected to hold at the drain
/// rate and hand their sessions over ([`drain_inputs`], and the formula
/// of [`rollout::drain_budget`]).
pub fn drain_deadline_seconds(spec: &MqttBrokerSpec) -> u64 {
    let (expected, rate) = drain_inputs(spec);
    rollout::drain_budget(expected, rate).deadline_secs
}

/// The pods' `terminationGracePeriodSeconds`: the drain deadline
/// ([`drain_deadline_seconds`]) and a few seconds to flush and exit.
pub fn termination_grace_seconds(spec: &MqttBrokerSpec) -> i64 {
    let (expected, rate) = drain_inputs(spec);
    rollout::drain_budget(expected, rate).grace_secs
}

/// What the drain of a broker's pods is planned for: the connections one
/// pod is expected to hold (`spec.drain.expectedConnectionsPerReplica`,
/// else the autoscaler's connection target, else none) and the drain rate
/// (`spec.drain.ratePerSecond`, else `drain.rate_per_sec` of
/// `spec.config`, else [`DEFAULT_DRAIN_RATE`]).
pub fn drain_inputs(spec: &MqttBrokerSpec) -> (u64, u32) {
    let expected = spec
        .drain
        .expected_connections_per_replica
        .or_else(|| {
            spec.autoscaling
                .as_ref()
                .and_then(|a| a.targets.connections_per_replica)
        })
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let from_config = spec
        .config
        .as_ref()
        .and_then(|config| config.get("drain"))
        .and_then(|drain| drain.get("rate_per_sec"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|rate| u32::try_from(rate).ok());
    let rate = spec
        .drain
        .rate_per_second
        .or(from_config)
        .unwrap_or(DEFAULT_DRAIN_RATE);
    (expected, rate)
}

/// Topology spread constraints over zones and nodes, as a preference
/// (`ScheduleAnyway`), for the pods with `labels`.
pub fn default_spread(labels: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// The broker pods of `ctx`'s broker, configured by `broker_config`;
/// `nats_client_cert` is the brokers' certificate for a managed NATS.
pub(super) fn stateful_set(
    ctx: &Context<'_>,
    broker_config: &str,
    nats_client_cert: Option<&str>,
) -> StatefulSet {
    let spec = ctx.spec;
    let mut pod_labels = spec.labels.clone();
    pod_labels.extend(super::common_labels(&ctx.names.broker));
    let mut pod_annotations = spec.annotations.clone();
    // What the broker applies while it runs (it re-reads the file when
    // the kubelet updates it) restarts no pod.
    pod_annotations.insert(
        CONFIG_CHECKSUM_ANNOTATION.to_owned(),
        super::restart::restart_checksum(broker_config),
    );
    if let Some(cert) = nats_client_cert {
        pod_annotations.insert(
            NATS_CLIENT_CHECKSUM_ANNOTATION.to_owned(),
            config_checksum(cert),
        );
    }

    StatefulSet {
        metadata: ctx.metadata(&ctx.names.broker),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(ctx.names.headless_service.clone()),
            selector: LabelSelector {
                match_labels: Some(ctx.selector_labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(ctx)),
            },
            volume_claim_templates: spec
                .persistence
                .enabled
                .then(|| vec![volume_claim_template(ctx)]),
            pod_management_policy: Some("OrderedReady".to_owned()),
            update_strategy: Some(rolling_update()),
            persistent_volume_claim_retention_policy: Some(retain_claims()),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// SHA-256 of the configuration file, hex.
pub fn config_checksum(broker_config: &str) -> String {
    Sha256::digest(broker_config.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn pod_spec(ctx: &Context<'_>) -> PodSpec {
    let spec = ctx.spec;
    let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    let mut containers = vec![container(ctx)];
    let spread = if !spec.topology_spread_constraints.is_empty() {
        Some(spec.topology_spread_constraints.clone())
    } else if spec.cluster.is_some() {
        Some(default_spread(&ctx.selector_labels()))
    } else {
        None
    };
    containers.extend(spec.sidecars.iter().cloned());
    let pull_secrets: Vec<LocalObjectReference> = if spec.image_pull_secrets.is_empty() {
        ctx.settings
            .default_image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    } else {
        spec.image_pull_secrets.clone()
    };
    PodSpec {
        containers,
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        service_account_name: spec.service_account_name.clone(),
        volumes: Some(volumes(ctx)),
        security_context: Some(pod_security_context(RUN_AS_USER)),
        termination_grace_period_seconds: Some(termination_grace_seconds(spec)),
        // The broker never calls the Kubernetes API, and needs no Service
        // environment variables.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        node_selector: non_empty(&spec.node_selector),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        affinity: spec.affinity.clone(),
        topology_spread_constraints: spread,
        priority_class_name: spec.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

fn container(ctx: &Context<'_>) -> Container {
    let spec = ctx.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| ctx.settings.default_image.clone());
    let mut mounts = vec![
        mount("config", CONFIG_DIR),
        mount("tls", TLS_DIR),
        mount("auth", AUTH_DIR),
        mount("fleets", fleet::FLEETS_DIR),
    ];
    if spec.persistence.enabled {
        mounts.push(VolumeMount {
            read_only: None,
            ..mount(DATA_VOLUME, DATA_DIR)
        });
    }
    mounts.extend(cluster::volumes(ctx).1);
    let (startup, liveness, readiness) = probes(ctx.spec);
    let proxy_ports = ctx.listeners.iter().filter_map(|listener| {
        listener
            .proxy_port
            .map(|port| (listener.kind.proxy_port_name(), port))
    });
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(image),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        ports: Some(
            ctx.listeners
                .iter()
                .map(|listener| (listener.kind.name(), listener.port))
                .chain(proxy_ports)
                .chain([(HTTP_PORT_NAME, i32::from(HTTP_PORT))])
                .map(|(name, port)| ContainerPort {
                    name: Some(name.to_owned()),
                    container_port: port,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        startup_probe: Some(startup),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        ..Container::default()
    }
}

/// One pod at a time, each Ready before the next.
pub(super) fn rolling_update() -> StatefulSetUpdateStrategy {
    StatefulSetUpdateStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: None,
    }
}

/// Claims kept when pods are scaled away and when the StatefulSet is
/// deleted.
pub(super) fn retain_claims() -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some("Retain".to_owned()),
        when_scaled: Some("Retain".to_owned()),
    }
}

/// A pod running as the non-root `user` (and group), with the runtime's
/// default seccomp profile.
pub(super) fn pod_security_context(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// A container without privileges: no escalation, a read-only root file
/// system, every capability dropped.
pub(super) fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// Startup, liveness and readiness probes on the broker's HTTP port:
/// `/healthz` answers while the process runs, `/readyz` until it starts
/// draining. `spec.probes` tunes their timing.
fn probes(spec: &MqttBrokerSpec) -> (Probe, Probe, Probe) {
    let probe =
        |path: &str, tuning: &ProbeSpec, period_seconds: i32, failure_threshold: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String(HTTP_PORT_NAME.to_owned()),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: tuning.initial_delay_seconds,
            period_seconds: Some(tuning.period_seconds.unwrap_or(period_seconds)),
            timeout_seconds: tuning.timeout_seconds,
            failure_threshold: Some(tuning.failure_threshold.unwrap_or(failure_threshold)),
            ..Probe::default()
        };
    let tuning = &spec.probes;
    (
        // Startup may replay a large persistence log: allow two minutes.
        probe("/readyz", &tuning.startup, 2, 60),
        probe("/healthz", &tuning.liveness, 10, 3),
        probe("/readyz", &tuning.readiness, 5, 2),
    )
}

/// The broker container's resources when the spec sets none.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("256Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(DEFAULT_MEMORY_LIMIT.to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn volumes(ctx: &Context<'_>) -> Vec<Volume> {
    let tls_secret = ctx
        .spec
        .tls
        .secret_name
        .clone()
        .unwrap_or_else(|| ctx.names.server_secret.clone());
    let secret_volume = |name: &str, secret_name: String| Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: ctx.names.config_map.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume("tls", tls_secret),
        secret_volume("auth", ctx.names.auth_secret.clone()),
        // The device fleets (MqttDeviceFleet): optional, so that a broker
        // without fleets needs no Secret; it fills in when one appears.
        Volume {
            name: "fleets".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(fleet::fleets_secret_name(&ctx.names.broker)),
                default_mode: Some(0o440),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(cluster::volumes(ctx).0);
    volumes
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn volume_claim_template(ctx: &Context<'_>) -> PersistentVolumeClaim {
    let persistence = &ctx.spec.persistence;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(ctx.selector_labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: persistence.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    persistence.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;
