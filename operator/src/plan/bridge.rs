//! What an `MqttBridge` becomes: pure, from the resource alone.
//!
//! - an `MqttUser` `<bridge>-bridge` on the bridge's broker, allowed to
//!   subscribe to the routes' filters and publish to the dead-letter
//!   topics and command topics; its credentials Secret
//!   (`<bridge>-bridge-mqtt-credentials`, made by the user controller) is
//!   the bridge's MQTT identity;
//! - a ConfigMap `<bridge>-bridge-config` with `bridge.toml`, rendered with
//!   the bridge crate's own configuration types and checked by its own
//!   validation (so an expression that does not parse is refused here,
//!   with the field it is in, instead of in a crash-looping pod);
//! - a StatefulSet `<bridge>-bridge` running `kubemqtt-bridge`: a
//!   StatefulSet rather than a Deployment because each pod's MQTT session
//!   is named after the pod, and a stable name is what lets a replaced pod
//!   resume its session, with the messages the broker kept for it;
//! - a Service `<bridge>-bridge` (port 9090: `/metrics`, `/status`,
//!   `POST /publish`) and a headless Service `<bridge>-bridge-pods` (each
//!   pod's address, for the operator to read its `/status`).
//!
//! Every Secret the spec names is mounted at
//! `/var/run/kubemqtt-bridge/secrets/<secret>/<key>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use kubemqtt_bridge::config as bridge;

use crate::api::bridge::{
    CommandSpec, DeadLetterSpec, RouteSpec, SecretKeySelector, SinkSpec, TlsSpec,
};
use crate::api::{AclAction, AclRuleSpec, MqttBridge, MqttUser, MqttUserSpec};
use crate::plan::{INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL};

/// `app.kubernetes.io/name` of a bridge's objects.
pub const BRIDGE_APP: &str = "kubemqtt-bridge";
/// Default image repository of the bridge.
pub const DEFAULT_BRIDGE_IMAGE: &str = "ghcr.io/kubemqtt/kubemqtt-bridge";
/// The bridge's HTTP port.
pub const BRIDGE_HTTP_PORT: u16 = 9090;
/// Where the configuration is mounted.
pub const BRIDGE_CONFIG_DIR: &str = "/etc/kubemqtt-bridge";
/// Where the bridge's own MQTT credentials are mounted.
pub const BRIDGE_MQTT_DIR: &str = "/var/run/kubemqtt-bridge/mqtt";
/// Where the Secrets the spec names are mounted.
pub const BRIDGE_SECRETS_DIR: &str = "/var/run/kubemqtt-bridge/secrets";
/// The configuration file's key in the ConfigMap.
pub const BRIDGE_CONFIG_KEY: &str = "bridge.toml";

/// The names of a bridge's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNames {
    /// StatefulSet, Service, MqttUser: `<bridge>-bridge`.
    pub workload: String,
    /// ConfigMap: `<bridge>-bridge-config`.
    pub config_map: String,
    /// Headless Service: `<bridge>-bridge-pods`.
    pub pods_service: String,
    /// The MqttUser's credentials Secret.
    pub credentials_secret: String,
}

impl BridgeNames {
    /// The names for the bridge `name`.
    pub fn new(name: &str) -> BridgeNames {
        let workload = format!("{name}-bridge");
        BridgeNames {
            config_map: format!("{workload}-config"),
            pods_service: format!("{workload}-pods"),
            credentials_secret: format!("{workload}-mqtt-credentials"),
            workload,
        }
    }
}

/// The objects of one bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgePlan {
    /// The bridge's MQTT identity.
    pub user: MqttUser,
    /// `bridge.toml`.
    pub config_map: ConfigMap,
    /// The pods.
    pub stateful_set: StatefulSet,
    /// Port 9090 of the pods, load-balanced.
    pub service: Service,
    /// Each pod's address.
    pub pods_service: Service,
    /// The configuration the pods run, as rendered.
    pub config: bridge::BridgeConfig,
}

impl BridgePlan {
    /// The objects, as the API server takes them, in the order they are
    /// applied.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        Ok(vec![
            serde_json::to_value(&self.user)?,
            serde_json::to_value(&self.config_map)?,
            serde_json::to_value(&self.service)?,
            serde_json::to_value(&self.pods_service)?,
            serde_json::to_value(&self.stateful_set)?,
        ])
    }
}

/// Why a bridge cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgePlanError {
    /// The resource has no namespace.
    #[error("the MqttBridge has no {0}")]
    Incomplete(&'static str),
    /// A field the schema cannot check is invalid (an expression, a
    /// topic filter).
    #[error("{field}: {message}")]
    Invalid {
        /// Where, as in the spec (`routes[0].where`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The labels selecting a bridge's pods.
pub fn bridge_selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), BRIDGE_APP.to_owned()),
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
    ])
}

fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = bridge_selector(name);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    labels
}

/// The Secrets a bridge mounts, each with its mount path.
struct Mounts {
    secrets: BTreeSet<String>,
}

impl Mounts {
    fn file(&mut self, selector: &SecretKeySelector) -> PathBuf {
        self.secrets.insert(selector.name.clone());
        PathBuf::from(format!(
            "{BRIDGE_SECRETS_DIR}/{}/{}",
            selector.name, selector.key
        ))
    }

    fn optional(&mut self, selector: Option<&SecretKeySelector>) -> Option<PathBuf> {
        selector.map(|selector| self.file(selector))
    }

    fn tls(&mut self, tls: Option<&TlsSpec>) -> Option<bridge::TlsConfig> {
        tls.map(|tls| bridge::TlsConfig {
            ca_file: self.optional(tls.ca_secret_ref.as_ref()),
            cert_file: self.optional(tls.cert_secret_ref.as_ref()),
            key_file: self.optional(tls.key_secret_ref.as_ref()),
            server_name: tls.server_name.clone(),
        })
    }
}

fn sink(spec: &SinkSpec, mounts: &mut Mounts) -> Option<bridge::SinkConfig> {
    if let Some(pg) = &spec.postgres {
        return Some(bridge::SinkConfig::Postgres(bridge::PostgresSink {
            connection: bridge::PostgresConnection {
                connection: pg.connection.clone(),
                password_file: mounts.optional(pg.password_secret_ref.as_ref()),
                tls: mounts.tls(pg.tls.as_ref()),
            },
            table: pg.table.clone(),
            key_column: pg.key_column.clone(),
        }));
    }
    if let Some(http) = &spec.http {
        return Some(bridge::SinkConfig::Http(bridge::HttpSink {
            url: http.url.clone(),
            mode: match http.mode {
                crate::api::bridge::HttpModeSpec::Single => bridge::HttpMode::Single,
                crate::api::bridge::HttpModeSpec::Batch => bridge::HttpMode::Batch,
            },
            hmac_secret_file: mounts.optional(http.hmac_secret_ref.as_ref()),
            bearer_token_file: mounts.optional(http.bearer_token_secret_ref.as_ref()),
            tls: mounts.tls(http.tls.as_ref()),
            timeout_ms: u64::from(http.timeout_ms),
        }));
    }
    if let Some(nats) = &spec.nats {
        return Some(bridge::SinkConfig::Nats(bridge::NatsSink {
            url: nats.url.clone(),
            subject: nats.subject.clone(),
            username_file: mounts.optional(nats.username_secret_ref.as_ref()),
            password_file: mounts.optional(nats.password_secret_ref.as_ref()),
            token_file: mounts.optional(nats.token_secret_ref.as_ref()),
            tls: mounts.tls(nats.tls.as_ref()),
        }));
    }
    if let Some(amqp) = &spec.amqp {
        return Some(bridge::SinkConfig::Amqp(bridge::AmqpSink {
            url: amqp.url.clone(),
            password_file: mounts.optional(amqp.password_secret_ref.as_ref()),
            exchange: amqp.exchange.clone(),
            routing_key: amqp.routing_key.clone(),
            tls: mounts.tls(amqp.tls.as_ref()),
        }));
    }
    spec.mqtt.as_ref().map(|mqtt| {
        bridge::SinkConfig::Mqtt(bridge::MqttSink {
            broker: bridge::RemoteBroker {
                host: mqtt.host.clone(),
                port: mqtt.port,
                client_id: None,
                username_file: mounts.optional(mqtt.username_secret_ref.as_ref()),
                password_file: mounts.optional(mqtt.password_secret_ref.as_ref()),
                tls: mounts.tls(mqtt.tls.as_ref()),
            },
            topic: mqtt.topic.clone(),
            qos: mqtt.qos,
        })
    })
}

fn route(
    index: usize,
    spec: &RouteSpec,
    mounts: &mut Mounts,
) -> Result<bridge::RouteConfig, BridgePlanError> {
    let sink = sink(&spec.sink, mounts).ok_or_else(|| BridgePlanError::Invalid {
        field: format!("routes[{index}].sink"),
        message: "set exactly one sink".into(),
    })?;
    let dead_letter = match &spec.dead_letter {
        Some(DeadLetterSpec {
            mqtt_topic: Some(topic),
            ..
        }) => Some(bridge::DeadLetterConfig::MqttTopic(topic.clone())),
        Some(DeadLetterSpec {
            table: Some(table), ..
        }) => Some(bridge::DeadLetterConfig::Table(table.clone())),
        _ => None,
    };
    Ok(bridge::RouteConfig {
        name: spec.name.clone(),
        filters: spec.filters.clone(),
        qos: spec.qos,
        condition: spec.where_.clone(),
        key: spec.key.clone(),
        map: spec.map.clone(),
        batch: bridge::BatchConfig {
            max_messages: spec.batch.max_messages as usize,
            linger_ms: u64::from(spec.batch.linger_ms),
        },
        retry: bridge::RetryConfig {
            initial_ms: u64::from(spec.retry.initial_ms),
            max_ms: u64::from(spec.retry.max_ms),
        },
        sink,
        dead_letter,
    })
}

fn command(
    index: usize,
    spec: &CommandSpec,
    mounts: &mut Mounts,
) -> Result<bridge::CommandConfig, BridgePlanError> {
    let from = if let Some(http) = &spec.http {
        bridge::CommandSource::Http {
            token_file: mounts.file(&http.token_secret_ref),
        }
    } else if let Some(nats) = &spec.nats {
        bridge::CommandSource::Nats {
            url: nats.url.clone(),
            stream: nats.stream.clone(),
            consumer: nats.consumer.clone(),
            filter_subject: nats.filter_subject.clone(),
            token_file: mounts.optional(nats.token_secret_ref.as_ref()),
            tls: mounts.tls(nats.tls.as_ref()),
        }
    } else if let Some(amqp) = &spec.amqp {
        bridge::CommandSource::Amqp {
            url: amqp.url.clone(),
            password_file: mounts.optional(amqp.password_secret_ref.as_ref()),
            queue: amqp.queue.clone(),
            tls: mounts.tls(amqp.tls.as_ref()),
        }
    } else {
        return Err(BridgePlanError::Invalid {
            field: format!("commands[{index}]"),
            message: "set exactly one command source".into(),
        });
    };
    Ok(bridge::CommandConfig {
        name: spec.name.clone(),
        from,
        topic: spec.topic.clone().unwrap_or_else(|| "headers.topic".into()),
        qos: spec.qos,
        allowed_topics: spec.allowed_topics.clone(),
    })
}

/// The bridge's configuration file content, and the Secrets it reads.
fn render_config(
    bridge_resource: &MqttBridge,
    namespace: &str,
) -> Result<(bridge::BridgeConfig, BTreeSet<String>), BridgePlanError> {
    let spec = &bridge_resource.spec;
    let mut mounts = Mounts {
        secrets: BTreeSet::new(),
    };
    let routes = spec
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(i, r, &mut mounts))
        .collect::<Result<Vec<_>, _>>()?;
    let commands = spec
        .commands
        .iter()
        .enumerate()
        .map(|(i, c)| command(i, c, &mut mounts))
        .collect::<Result<Vec<_>, _>>()?;
    let broker = &spec.broker;
    let host = format!("{}.{namespace}.svc", spec.broker_ref.name);
    let config = bridge::BridgeConfig {
        name: bridge_resource.name_any(),
        broker: bridge::BrokerConfig {
            port: broker.port.unwrap_or(if broker.tls { 8883 } else { 1883 }),
            tls: broker.tls.then(|| bridge::TlsConfig {
                ca_file: Some(PathBuf::from(format!("{BRIDGE_MQTT_DIR}/ca.crt"))),
                server_name: Some(host.clone()),
                ..Default::default()
            }),
            host,
            client_id: None,
            username_file: Some(PathBuf::from(format!("{BRIDGE_MQTT_DIR}/username"))),
            password_file: Some(PathBuf::from(format!("{BRIDGE_MQTT_DIR}/password"))),
            keep_alive_secs: 30,
            session_expiry_secs: broker.session_expiry_seconds,
            receive_maximum: broker.receive_maximum,
            client_id_property: "client_id".into(),
            max_packet_bytes: 1024 * 1024,
        },
        http: bridge::HttpServerConfig {
            bind: format!("0.0.0.0:{BRIDGE_HTTP_PORT}"),
        },
        routes,
        commands,
    };
    config.validate().map_err(|error| match error {
        bridge::ConfigError::Invalid { key, message, .. } => BridgePlanError::Invalid {
            field: spec_field(&key),
            message,
        },
        other => BridgePlanError::Invalid {
            field: "spec".into(),
            message: other.to_string(),
        },
    })?;
    Ok((config, mounts.secrets))
}

/// A configuration key as the spec's field: `routes[0].map.x` is
/// `spec.routes[0].map.x`, `sink.nats.subject` stays, snake_case becomes
/// camelCase.
fn spec_field(key: &str) -> String {
    let mut field = String::from("spec.");
    let mut upper = false;
    for c in key.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                field.extend(c.to_uppercase());
                upper = false;
            }
            c => field.push(c),
        }
    }
    field
}

/// The MqttUser of the bridge: exactly the topics it uses.
fn user(bridge_resource: &MqttBridge, names: &BridgeNames, meta: ObjectMeta) -> MqttUser {
    let spec = &bridge_resource.spec;
    let mut acl: Vec<AclRuleSpec> = Vec::new();
    let mut push = |action, topic: &str| {
        let rule = AclRuleSpec {
            action,
            topic: topic.to_owned(),
            allow: true,
        };
        if !acl.contains(&rule) {
            acl.push(rule);
        }
    };
    for route in &spec.routes {
        for filter in &route.filters {
            push(AclAction::Subscribe, filter);
        }
        if let Some(topic) = route
            .dead_letter
            .as_ref()
            .and_then(|d| d.mqtt_topic.as_deref())
        {
            push(AclAction::Publish, topic);
        }
    }
    for command in &spec.commands {
        if command.allowed_topics.is_empty() {
            push(AclAction::Publish, "#");
        }
        for topic in &command.allowed_topics {
            push(AclAction::Publish, topic);
        }
    }
    MqttUser {
        metadata: ObjectMeta {
            name: Some(names.workload.clone()),
            ..meta
        },
        spec: MqttUserSpec {
            broker_ref: spec.broker_ref.clone(),
            username: Some(names.workload.clone()),
            authentication: Default::default(),
            acl,
            quotas: Default::default(),
            rotation: Default::default(),
        },
        status: None,
    }
}

/// Plans the bridge's objects.
pub fn plan_bridge(
    bridge_resource: &MqttBridge,
    image: Option<&str>,
) -> Result<BridgePlan, BridgePlanError> {
    let name = bridge_resource.name_any();
    let namespace = bridge_resource
        .namespace()
        .ok_or(BridgePlanError::Incomplete("namespace"))?;
    // Without a uid (an offline render) the objects have no owner.
    let owner = bridge_resource.controller_owner_ref(&());
    let names = BridgeNames::new(&name);
    let (config, secrets) = render_config(bridge_resource, &namespace)?;
    let toml = config.to_toml().map_err(|e| BridgePlanError::Invalid {
        field: "spec".into(),
        message: format!("cannot render the configuration: {e}"),
    })?;
    let meta = |object_name: &str| ObjectMeta {
        name: Some(object_name.to_owned()),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name)),
        owner_references: owner.clone().map(|owner| vec![owner]),
        ..ObjectMeta::default()
    };
    let config_map = ConfigMap {
        metadata: meta(&names.config_map),
        data: Some(BTreeMap::from([(
            BRIDGE_CONFIG_KEY.to_owned(),
            toml.clone(),
        )])),
        ..ConfigMap::default()
    };
    // A new configuration rolls the pods.
    let config_hash = {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(toml.as_bytes());
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let http_port = ServicePort {
        name: Some("http".into()),
        port: i32::from(BRIDGE_HTTP_PORT),
        target_port: Some(IntOrString::String("http".into())),
        ..ServicePort::default()
    };
    let service = Service {
        metadata: meta(&names.workload),
        spec: Some(ServiceSpec {
            selector: Some(bridge_selector(&name)),
            ports: Some(vec![http_port.clone()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pods_service = Service {
        metadata: meta(&names.pods_service),
        spec: Some(ServiceSpec {
            selector: Some(bridge_selector(&name)),
            ports: Some(vec![http_port]),
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let stateful_set = stateful_set(
        bridge_resource,
        &names,
        meta(&names.workload),
        &secrets,
        image,
        &config_hash,
    );
    Ok(BridgePlan {
        user: user(bridge_resource, &names, meta(&names.workload)),
        config_map,
        stateful_set,
        service,
        pods_service,
        config,
    })
}

fn stateful_set(
    bridge_resource: &MqttBridge,
    names: &BridgeNames,
    metadata: ObjectMeta,
    secrets: &BTreeSet<String>,
    image: Option<&str>,
    config_hash: &str,
) -> StatefulSet {
    let name = bridge_resource.name_any();
    let default_image = format!("{DEFAULT_BRIDGE_IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    let image = bridge_resource
        .spec
        .image
        .clone()
        .or_else(|| image.map(str::to_owned))
        .unwrap_or(default_image);
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "mqtt".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.credentials_secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: BRIDGE_CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "mqtt".into(),
            mount_path: BRIDGE_MQTT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    for (i, secret) in secrets.iter().enumerate() {
        let volume = format!("secret-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{BRIDGE_SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let container = Container {
        name: "bridge".into(),
        image: Some(image),
        args: Some(vec![
            "-c".into(),
            format!("{BRIDGE_CONFIG_DIR}/{BRIDGE_CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(BRIDGE_HTTP_PORT),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe {
            failure_threshold: Some(6),
            ..probe("/healthz")
        }),
        resources: bridge_resource.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut pod_labels = labels(&name);
    pod_labels.retain(|key, _| key != MANAGED_BY_LABEL);
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(bridge_resource.spec.replicas),
            service_name: Some(names.pods_service.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(bridge_selector(&name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        "kubemqtt.io/config-hash".to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The bridge finishes what it holds on SIGTERM.
                    termination_grace_period_seconds: Some(60),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
pub(crate) mod tests;
