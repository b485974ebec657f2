//! The NATS the operator runs for a broker (`spec.cluster.nats.managed`):
//! three JetStream servers from the official `nats` image, clustered by
//! routes, with TLS between them and to the brokers.
//!
//! Objects, all named after the broker (`mq`):
//! - `mq-nats-ca`: the CA of this NATS (made once by the operator, kept
//!   ten years, never mounted in a pod);
//! - `mq-nats-tls`: the servers' certificate (server and client use, for
//!   the routes) with the CA certificate, mounted in the NATS pods;
//! - `mq-nats-client`: the brokers' client certificate with the CA
//!   certificate, mounted in the broker pods (the servers verify clients);
//! - `mq-nats-config`: `nats.conf`;
//! - `mq-nats-headless` (the pods' DNS names, for routes and brokers) and
//!   `mq-nats` (a client Service, for tools);
//! - the StatefulSet `mq-nats` (a volume per server, kept when the broker
//!   is deleted) and its PodDisruptionBudget (one server at a time, so
//!   that JetStream keeps its quorum of two).
//!
//! Servers do not advertise their addresses to clients (`no_advertise`):
//! the brokers connect by the pods' DNS names, which the certificate
//! covers, instead of by IP addresses, which it does not.
//!
//! NATS does not reload its certificate from disk: the pod template holds
//! a checksum of it, so a renewed certificate (a year's validity, renewed
//! 30 days before expiry) rolls the servers one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;

use super::secrets::{text, Stored};
use super::statefulset::{
    config_checksum, container_security_context, default_spread, pod_security_context,
    retain_claims, rolling_update,
};
use super::tls::{CA_CERT_KEY, CA_PRIVATE_KEY_KEY, TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY};
use super::{Context, Observed, PlanError, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL};
use crate::api::{ManagedNatsSpec, DEFAULT_NATS_IMAGE};
use crate::certs::{self, CertifiedKeyPem, San};

/// `app.kubernetes.io/name` of the managed NATS objects (not the
/// broker's, so that the broker's selectors never take NATS pods).
pub const NATS_APP_NAME: &str = "kubemqtt-nats";
/// The number of NATS servers: three, the smallest JetStream cluster that
/// keeps its quorum with one server down.
pub const SERVERS: i32 = 3;
/// The client port.
pub const CLIENT_PORT: u16 = 4222;
/// The route port (between servers).
pub const CLUSTER_PORT: u16 = 6222;
/// The monitoring port (`/healthz`).
pub const MONITOR_PORT: u16 = 8222;
/// The longest broker name with a managed NATS: `<name>-nats` and its pods'
/// `controller-revision-hash` labels must fit in 63 characters.
pub const MAX_BROKER_NAME: usize = 47;
/// Key of the configuration file in the ConfigMap.
pub const CONFIG_FILE: &str = "nats.conf";
/// Pod template annotation: checksum of the configuration and the servers'
/// certificate (NATS reads both only when it starts).
pub const CHECKSUM_ANNOTATION: &str = "kubemqtt.io/nats-checksum";

const CONFIG_DIR: &str = "/etc/nats";
const TLS_DIR: &str = "/etc/nats/tls";
const DATA_DIR: &str = "/data";
const PID_DIR: &str = "/var/run/nats";
/// The user the NATS servers run as (the image's root is not needed).
const RUN_AS_USER: i64 = 1000;

const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 3650);
const CA_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 365);
const CERT_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 365);
const CERT_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 30);

/// Every object of a managed NATS, ready to apply.
#[derive(Debug, Clone)]
pub struct NatsPlan {
    /// The NATS CA (`<name>-nats-ca`).
    pub ca_secret: k8s_openapi::api::core::v1::Secret,
    /// The servers' certificate (`<name>-nats-tls`).
    pub server_secret: k8s_openapi::api::core::v1::Secret,
    /// The brokers' client certificate (`<name>-nats-client`).
    pub client_secret: k8s_openapi::api::core::v1::Secret,
    /// `nats.conf` (`<name>-nats-config`).
    pub config_map: ConfigMap,
    /// The pods' DNS names (`<name>-nats-headless`).
    pub headless_service: Service,
    /// The client Service (`<name>-nats`).
    pub client_service: Service,
    /// The servers (`<name>-nats`).
    pub stateful_set: StatefulSet,
    /// One server down at a time (`<name>-nats`).
    pub pod_disruption_budget: PodDisruptionBudget,
    /// When a certificate next needs renewing.
    pub recheck_at: Timestamp,
}

impl NatsPlan {
    /// Every object, in the order to apply them, as JSON.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        Ok(vec![
            serde_json::to_value(&self.ca_secret)?,
            serde_json::to_value(&self.server_secret)?,
            serde_json::to_value(&self.client_secret)?,
            serde_json::to_value(&self.config_map)?,
            serde_json::to_value(&self.headless_service)?,
            serde_json::to_value(&self.client_service)?,
            serde_json::to_value(&self.stateful_set)?,
            serde_json::to_value(&self.pod_disruption_budget)?,
        ])
    }
}

/// The labels that select the managed NATS pods of broker `name`.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), NATS_APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The DNS name of every NATS server, as the brokers and the routes reach
/// them.
fn server_hosts(ctx: &Context<'_>) -> Vec<String> {
    (0..SERVERS)
        .map(|ordinal| {
            format!(
                "{}-{ordinal}.{}.{}.svc.{}",
                ctx.names.nats,
                ctx.names.nats_headless_service,
                ctx.namespace,
                ctx.settings.cluster_domain
            )
        })
        .collect()
}

/// The URLs the brokers connect to: every server, over TLS.
pub(super) fn server_urls(ctx: &Context<'_>) -> Vec<String> {
    server_hosts(ctx)
        .into_iter()
        .map(|host| format!("tls://{host}:{CLIENT_PORT}"))
        .collect()
}

/// The managed NATS of `ctx`'s broker; `None` without
/// `spec.cluster.nats.managed`.
pub(super) fn nats(
    ctx: &Context<'_>,
    observed: &Observed,
    now: Timestamp,
) -> Result<Option<NatsPlan>, PlanError> {
    let Some(spec) = ctx
        .spec
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.nats.managed.as_ref())
    else {
        return Ok(None);
    };
    let names = &ctx.names;
    let ca = match Stored::read(
        observed.nats_ca_secret.as_ref(),
        CA_CERT_KEY,
        CA_PRIVATE_KEY_KEY,
    ) {
        Stored::Valid(ca, info) if now + CA_RENEW_BEFORE < info.not_after => ca,
        _ => certs::generate_ca(
            &format!("KubeMQTT NATS CA {}/{}", ctx.namespace, names.broker),
            now,
            CA_VALIDITY,
        )?,
    };
    let server_sans = server_names(ctx);
    let (server, server_expiry) = keep_or_issue(
        observed.nats_server_secret.as_ref(),
        &ca,
        Some(&server_sans),
        now,
        |ca| {
            certs::issue_peer_cert(
                ca,
                &format!("{}.{}.svc", names.nats, ctx.namespace),
                &server_sans,
                now,
                CERT_VALIDITY,
            )
        },
    )?;
    let (client, client_expiry) =
        keep_or_issue(observed.nats_client_secret.as_ref(), &ca, None, now, |ca| {
            certs::issue_client_cert(
                ca,
                &format!("kubemqtt-broker {}/{}", ctx.namespace, names.broker),
                now,
                CERT_VALIDITY,
            )
        })?;
    let ca_secret = secret(
        ctx,
        &names.nats_ca_secret,
        [
            (CA_CERT_KEY, ca.cert_pem.clone()),
            (CA_PRIVATE_KEY_KEY, ca.key_pem.clone()),
        ],
    );
    let server_secret = secret(
        ctx,
        &names.nats_server_secret,
        [
            (CA_CERT_KEY, ca.cert_pem.clone()),
            (TLS_CERT_KEY, server.cert_pem.clone()),
            (TLS_PRIVATE_KEY_KEY, server.key_pem),
        ],
    );
    let client_secret = secret(
        ctx,
        &names.nats_client_secret,
        [
            (CA_CERT_KEY, ca.cert_pem.clone()),
            (TLS_CERT_KEY, client.cert_pem),
            (TLS_PRIVATE_KEY_KEY, client.key_pem),
        ],
    );
    let config = config_file(ctx);
    let checksum = config_checksum(&format!("{config}{}{}", server.cert_pem, ca.cert_pem));
    let recheck_at = server_expiry.min(client_expiry) - CERT_RENEW_BEFORE;
    Ok(Some(NatsPlan {
        ca_secret,
        server_secret,
        client_secret,
        config_map: ConfigMap {
            metadata: metadata(ctx, &names.nats_config_map),
            data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), config)])),
            ..ConfigMap::default()
        },
        headless_service: headless_service(ctx),
        client_service: client_service(ctx),
        stateful_set: stateful_set(ctx, spec, &checksum),
        pod_disruption_budget: PodDisruptionBudget {
            metadata: metadata(ctx, &names.nats),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(ctx)),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        },
        recheck_at,
    }))
}

/// The names the servers' certificate covers: the client Service and every
/// pod under the headless Service.
fn server_names(ctx: &Context<'_>) -> BTreeSet<San> {
    let names = &ctx.names;
    let namespace = ctx.namespace;
    let domain = &ctx.settings.cluster_domain;
    [
        names.nats.clone(),
        format!("{}.{namespace}", names.nats),
        format!("{}.{namespace}.svc", names.nats),
        format!("{}.{namespace}.svc.{domain}", names.nats),
        format!("*.{}.{namespace}.svc", names.nats_headless_service),
        format!("*.{}.{namespace}.svc.{domain}", names.nats_headless_service),
    ]
    .into_iter()
    .map(San::Dns)
    .collect()
}

/// The stored certificate of `secret` when `ca` signed it, it covers
/// `sans` (when given) and is not due for renewal; else a new one from
/// `issue`. With the certificate's expiry.
fn keep_or_issue(
    secret: Option<&k8s_openapi::api::core::v1::Secret>,
    ca: &CertifiedKeyPem,
    sans: Option<&BTreeSet<San>>,
    now: Timestamp,
    issue: impl FnOnce(&CertifiedKeyPem) -> Result<CertifiedKeyPem, certs::CertError>,
) -> Result<(CertifiedKeyPem, Timestamp), PlanError> {
    if let Stored::Valid(cert, info) = Stored::read(secret, TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY) {
        let same_ca = secret
            .and_then(|s| text(s, CA_CERT_KEY))
            .is_some_and(|stored_ca| certs::same_certificate(stored_ca, &ca.cert_pem))
            && certs::is_signed_by(&cert.cert_pem, &ca.cert_pem);
        let names_match = sans.is_none_or(|sans| *sans == info.sans);
        if same_ca && names_match && now + CERT_RENEW_BEFORE < info.not_after {
            return Ok((cert, info.not_after));
        }
    }
    let cert = issue(ca)?;
    let expiry = certs::inspect(&cert.cert_pem)?.not_after;
    Ok((cert, expiry))
}

fn metadata(ctx: &Context<'_>, name: &str) -> ObjectMeta {
    let mut labels = selector_labels(&ctx.names.broker);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    ObjectMeta {
        labels: Some(labels),
        ..ctx.metadata(name)
    }
}

fn selector(ctx: &Context<'_>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(&ctx.names.broker)),
        ..LabelSelector::default()
    }
}

fn secret<const N: usize>(
    ctx: &Context<'_>,
    name: &str,
    data: [(&str, String); N],
) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: metadata(ctx, name),
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `nats.conf`: JetStream on the pod's volume, routes to every server,
/// TLS that verifies both ends on the client and route ports, lame duck
/// mode on the way out.
fn config_file(ctx: &Context<'_>) -> String {
    let tls = format!(
        "{{\n    cert_file: \"{TLS_DIR}/{TLS_CERT_KEY}\"\n    key_file: \"{TLS_DIR}/{TLS_PRIVATE_KEY_KEY}\"\n    \
         ca_file: \"{TLS_DIR}/{CA_CERT_KEY}\"\n    verify: true\n    timeout: 5\n  }}"
    );
    let routes: Vec<String> = server_hosts(ctx)
        .into_iter()
        .map(|host| format!("    \"nats-route://{host}:{CLUSTER_PORT}\""))
        .collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Written by the KubeMQTT operator for MqttBroker {}.",
        ctx.names.broker
    );
    let _ = writeln!(text, "server_name: $POD_NAME");
    let _ = writeln!(text, "listen: \"0.0.0.0:{CLIENT_PORT}\"");
    let _ = writeln!(text, "http: \"0.0.0.0:{MONITOR_PORT}\"");
    let _ = writeln!(text, "pid_file: \"{PID_DIR}/nats.pid\"");
    let _ = writeln!(text, "lame_duck_duration: \"30s\"");
    let _ = writeln!(text, "lame_duck_grace_period: \"10s\"");
    let _ = writeln!(text, "tls {}", tls.trim_start_matches("  "));
    let _ = writeln!(text, "jetstream {{\n  store_dir: \"{DATA_DIR}\"\n}}");
    let _ = writeln!(text, "cluster {{");
    let _ = writeln!(text, "  name: \"{}\"", ctx.names.nats);
    let _ = writeln!(text, "  listen: \"0.0.0.0:{CLUSTER_PORT}\"");
    let _ = writeln!(text, "  no_advertise: true");
    let _ = writeln!(text, "  routes: [\n{}\n  ]", routes.join(",\n"));
    let _ = writeln!(text, "  tls {tls}");
    let _ = writeln!(text, "}}");
    text
}

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn headless_service(ctx: &Context<'_>) -> Service {
    Service {
        metadata: metadata(ctx, &ctx.names.nats_headless_service),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            // Routes must resolve before the servers are ready: they become
            // ready only once they found each other.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&ctx.names.broker)),
            ports: Some(vec![
                port("client", CLIENT_PORT),
                port("cluster", CLUSTER_PORT),
                port("monitor", MONITOR_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn client_service(ctx: &Context<'_>) -> Service {
    Service {
        metadata: metadata(ctx, &ctx.names.nats),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&ctx.names.broker)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn stateful_set(ctx: &Context<'_>, spec: &ManagedNatsSpec, checksum: &str) -> StatefulSet {
    let names = &ctx.names;
    let labels = selector_labels(&names.broker);
    let mut pod_labels = labels.clone();
    pod_labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    StatefulSet {
        metadata: metadata(ctx, &names.nats),
        spec: Some(StatefulSetSpec {
            replicas: Some(SERVERS),
            service_name: Some(names.nats_headless_service.clone()),
            // The servers are peers: starting them together lets them form
            // the cluster (the second waits for nobody).
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(rolling_update()),
            // The JetStream data outlives the broker, as a volume of the
            // broker's own does.
            persistent_volume_claim_retention_policy: Some(retain_claims()),
            selector: selector(ctx),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CHECKSUM_ANNOTATION.to_owned(),
                        checksum.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(ctx, spec, &labels)),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            spec.storage.size.clone(),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(
    ctx: &Context<'_>,
    spec: &ManagedNatsSpec,
    labels: &BTreeMap<String, String>,
) -> PodSpec {
    let health = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("monitor".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let container = Container {
        name: "nats".to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| DEFAULT_NATS_IMAGE.to_owned()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(
            [
                ("client", CLIENT_PORT),
                ("cluster", CLUSTER_PORT),
                ("monitor", MONITOR_PORT),
            ]
            .into_iter()
            .map(|(name, number)| ContainerPort {
                name: Some(name.to_owned()),
                container_port: i32::from(number),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            })
            .collect(),
        ),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        // Recovering a large JetStream store can take minutes.
        startup_probe: Some(health("/healthz", 5, 60)),
        liveness_probe: Some(health("/healthz?js-enabled-only=true", 30, 3)),
        readiness_probe: Some(health("/healthz?js-server-only=true", 10, 3)),
        lifecycle: Some(Lifecycle {
            // Lame duck mode: clients move to the other servers before this
            // one stops.
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "nats-server".to_owned(),
                        "--signal".to_owned(),
                        format!("ldm={PID_DIR}/nats.pid"),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("tls", TLS_DIR, true),
            mount("data", DATA_DIR, false),
            mount("pid", PID_DIR, false),
        ]),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ctx.names.nats_config_map.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tls".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ctx.names.nats_server_secret.clone()),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "pid".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        security_context: Some(pod_security_context(RUN_AS_USER)),
        // Lame duck mode (30 s) and the store's flush.
        termination_grace_period_seconds: Some(60),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        topology_spread_constraints: Some(default_spread(labels)),
        node_selector: (!ctx.spec.node_selector.is_empty()).then(|| ctx.spec.node_selector.clone()),
        tolerations: (!ctx.spec.tolerations.is_empty()).then(|| ctx.spec.tolerations.clone()),
        priority_class_name: ctx.spec.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("256Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("1Gi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
