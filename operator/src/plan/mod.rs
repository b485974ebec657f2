//! Planning: from an `MqttBroker` (and what the controller observed in the
//! cluster) to the full set of objects that run it.
//!
//! [`plan`] talks to no API server: the controller gathers an [`Observed`],
//! calls it, and applies every object of the [`Plan`] with server-side
//! apply; `kubemqtt-operator render` calls it with nothing observed. Given
//! the same input it returns the same objects, except for key material and
//! passwords, which it generates only when [`Observed`] has none to keep.
//!
//! One module per object: [`configmap`], [`tls`] (the server certificate
//! and its CA) with [`cert_manager`], [`secrets`] (the clients CA and the
//! credentials), [`statefulset`] with [`persistence`], [`service`],
//! [`pdb`]. What they share: the objects' names and labels (`names.rs`),
//! the listeners (`listeners.rs`), and the owner reference, here.
//! [`users`] builds the broker's credentials file from its `MqttUser`s;
//! [`user_secret`] plans one `MqttUser`'s own Secret (the user
//! controller's planner).

pub mod autoscaling;
pub mod bridge;
pub mod cert_manager;
pub mod cluster;
pub mod configmap;
pub mod fleet;
mod listeners;
mod names;
pub mod nats;
pub mod pdb;
pub mod persistence;
pub mod quantity;
pub mod rebalance;
pub mod restart;
pub mod rollout;
pub mod secrets;
pub mod service;
pub mod statefulset;
pub mod tls;
pub mod user_secret;
pub mod users;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, LoadBalancerIngress, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::api::{MqttBroker, MqttBrokerSpec, MqttUser};
use crate::certs::{CertError, RenewalReason};

pub(crate) use listeners::resolve_listeners;
pub use listeners::{Listener, ListenerKind, PROXY_PORT_OFFSET};
pub use names::{common_labels, selector_labels, Names};

/// `app.kubernetes.io/name` of every object the operator creates.
pub const APP_NAME: &str = "kubemqtt-broker";
/// `app.kubernetes.io/managed-by` of every object the operator creates.
pub const MANAGER: &str = "kubemqtt-operator";
/// Label key naming the application.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label key naming the broker (the `MqttBroker`'s name).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label key naming the manager.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Where the broker image lives; the default tag is the operator's version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/kubemqtt/kubemqtt-broker";

/// Where the pod sees the ConfigMap (`broker.toml`, `ca.crt`).
pub const CONFIG_DIR: &str = "/etc/kubemqtt/config";
/// Where the pod sees the server certificate Secret.
pub const TLS_DIR: &str = "/etc/kubemqtt/tls";
/// Where the pod sees the auth Secret.
pub const AUTH_DIR: &str = "/etc/kubemqtt/auth";
/// Where the pod's volume is mounted when persistence is on (the broker's
/// default `persistence.dir`).
pub const DATA_DIR: &str = "/var/lib/kubemqtt";
/// The broker's HTTP port: `/healthz`, `/readyz`, `/metrics` and the admin
/// API. It is on the pods and the headless Service, never on the client
/// Service.
pub const HTTP_PORT: u16 = 8080;

/// Operator-wide settings, chosen when the operator is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Image of brokers whose spec names none.
    pub default_image: String,
    /// Pull Secrets of brokers whose spec names none.
    pub default_image_pull_secrets: Vec<String>,
    /// The cluster's DNS domain, for the certificate's names.
    pub cluster_domain: String,
}

impl Default for Settings {
    /// The broker image of this operator's version, no pull Secrets, and
    /// `cluster.local`.
    fn default() -> Self {
        Settings {
            default_image: format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
            default_image_pull_secrets: Vec::new(),
            cluster_domain: "cluster.local".to_owned(),
        }
    }
}

/// What the controller saw in the cluster, so that a plan keeps what
/// already exists instead of regenerating it on every reconcile.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The ConfigMap (`<name>-config`), if it exists: the trust bundle it
    /// last gave clients.
    pub config_map: Option<ConfigMap>,
    /// The CA Secret (`<name>-ca`), if it exists.
    pub ca_secret: Option<Secret>,
    /// The team's CA Secret named by `spec.tls.ca.secretName`, if it
    /// exists.
    pub ca_source: Option<Secret>,
    /// The server certificate Secret (`<name>-tls`), if it exists (with
    /// cert-manager, the one it writes).
    pub server_secret: Option<Secret>,
    /// The auth Secret (`<name>-auth`), if it exists.
    pub auth_secret: Option<Secret>,
    /// The clients CA Secret (`<name>-clients-ca`), if it exists.
    pub clients_ca_secret: Option<Secret>,
    /// The broker's `MqttUser`s, each with its credentials Secret if it
    /// exists: they make up the credentials file.
    pub users: Vec<(MqttUser, Option<Secret>)>,
    /// `status.loadBalancer.ingress` of the external Service: the
    /// certificate covers these addresses too.
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// The StatefulSet, if it exists: its volume claim template tells
    /// whether persistence changes.
    pub stateful_set: Option<StatefulSet>,
    /// The managed NATS's CA Secret (`<name>-nats-ca`), if it exists.
    pub nats_ca_secret: Option<Secret>,
    /// The managed NATS servers' certificate (`<name>-nats-tls`), if it
    /// exists.
    pub nats_server_secret: Option<Secret>,
    /// The brokers' NATS client certificate (`<name>-nats-client`), if it
    /// exists.
    pub nats_client_secret: Option<Secret>,
}

/// Every object of one broker, ready to apply.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The broker's configuration file and the CA bundle for clients.
    pub config_map: ConfigMap,
    /// The operator's CA; `None` with a team's CA, cert-manager or a
    /// team's certificate.
    pub ca_secret: Option<Secret>,
    /// The server certificate; `None` with cert-manager or a team's
    /// certificate.
    pub server_secret: Option<Secret>,
    /// The cert-manager `Certificate`, with `spec.tls.certManager`.
    pub certificate_object: Option<serde_json::Value>,
    /// The credentials file (admin and `MqttUser`s) and admin token.
    pub auth_secret: Secret,
    /// The CA that signs `tls` users' certificates.
    pub clients_ca_secret: Secret,
    /// The broker pods.
    pub stateful_set: StatefulSet,
    /// The headless Service that gives each pod a DNS name.
    pub headless_service: Service,
    /// The in-cluster Service (`<name>`): every listener.
    pub internal_service: Service,
    /// The external Service (`<name>-external`): the external listeners;
    /// `None` with `service.type` ClusterIP.
    pub external_service: Option<Service>,
    /// Limits voluntary evictions of broker pods to one at a time; only
    /// with more than one replica (one replica has nothing to protect).
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// The NATS the operator runs for the broker
    /// (`spec.cluster.nats.managed`).
    pub nats: Option<nats::NatsPlan>,
    /// The HorizontalPodAutoscaler or KEDA ScaledObject
    /// (`spec.autoscaling`), as JSON.
    pub autoscaler: Option<serde_json::Value>,
    /// The issued certificate's state; `None` with cert-manager or a
    /// team's certificate.
    pub certificate: Option<CertificatePlan>,
    /// When the plan next differs because of time alone.
    pub recheck_at: Option<Timestamp>,
    /// What the spec exposes that a platform team should know about, for
    /// Warning Events.
    pub warnings: Vec<ExposureWarning>,
}

impl Plan {
    /// Every object, in the order to apply them (what pods mount first),
    /// as JSON with `apiVersion` and `kind`.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        let mut objects = vec![serde_json::to_value(&self.config_map)?];
        for secret in [&self.ca_secret, &self.server_secret].into_iter().flatten() {
            objects.push(serde_json::to_value(secret)?);
        }
        objects.extend(self.certificate_object.clone());
        objects.push(serde_json::to_value(&self.clients_ca_secret)?);
        objects.push(serde_json::to_value(&self.auth_secret)?);
        // NATS before the brokers that connect to it.
        if let Some(nats) = &self.nats {
            objects.extend(nats.objects()?);
        }
        objects.push(serde_json::to_value(&self.headless_service)?);
        objects.push(serde_json::to_value(&self.internal_service)?);
        if let Some(service) = &self.external_service {
            objects.push(serde_json::to_value(service)?);
        }
        objects.push(serde_json::to_value(&self.stateful_set)?);
        if let Some(pdb) = &self.pod_disruption_budget {
            objects.push(serde_json::to_value(pdb)?);
        }
        objects.extend(self.autoscaler.clone());
        Ok(objects)
    }
}

/// The issued server certificate and its CA after this plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePlan {
    /// When the server certificate expires.
    pub not_after: Timestamp,
    /// When the CA that issued it expires.
    pub ca_not_after: Timestamp,
    /// During a CA rotation, when the other CA in the bundle expires.
    pub next_ca_not_after: Option<Timestamp>,
    /// During a CA rotation, when the server certificate moves to the new
    /// CA.
    pub ca_rotation_completes_at: Option<Timestamp>,
    /// Certificates this plan (re-)issues, for Events.
    pub renewals: Vec<Renewal>,
    /// When the certificates next change because of time alone.
    pub recheck_at: Timestamp,
}

/// Something the spec exposes on purpose that deserves a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExposureWarning {
    /// A plain-text listener is on the external Service and any address
    /// may reach it.
    PlainTextOpenToTheWorld {
        /// The listener.
        listener: ListenerKind,
    },
}

impl ExposureWarning {
    /// A CamelCase reason for the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            ExposureWarning::PlainTextOpenToTheWorld { .. } => "PlainTextExposed",
        }
    }

    /// What the Event says.
    pub fn message(&self) -> String {
        match self {
            ExposureWarning::PlainTextOpenToTheWorld { listener } => format!(
                "listener {} carries MQTT without TLS on the external Service and any address \
                 may reach it: passwords cross the network in clear. Restrict \
                 spec.service.loadBalancerSourceRanges, or set \
                 spec.listeners.{}.external: false",
                listener.name(),
                listener.name()
            ),
        }
    }
}

/// One certificate (re-)issued by a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// Which certificate.
    pub certificate: CertificateKind,
    /// Why.
    pub reason: RenewalReason,
}

/// The operator's two certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateKind {
    /// The broker's CA.
    Ca,
    /// The server certificate the broker presents.
    Server,
}

/// Why a broker cannot be planned. Nothing is applied when this happens.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The object has no namespace (it must come from the API server or
    /// have one set).
    #[error("the MqttBroker has no namespace")]
    MissingNamespace,
    /// The name cannot name the broker's Services and pods (the CRD's
    /// validation rule refuses it too).
    #[error(
        "metadata.name `{0}` must be at most 52 characters of lower-case letters, digits and \
         '-', starting with a letter"
    )]
    InvalidName(String),
    /// A field has a value the operator cannot act on.
    #[error("spec.{field}: {message}")]
    InvalidSpec {
        /// Path of the field under `spec`, e.g. `listeners.mqtts.port`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The broker's configuration or credentials file built from the spec
    /// (with `spec.config`) is not one the broker accepts.
    #[error("invalid broker configuration: {0}")]
    BrokerConfig(String),
    /// A certificate could not be generated or read.
    #[error("certificate: {0}")]
    Certificate(#[from] CertError),
    /// The CA Secret named by `spec.tls.ca.secretName` cannot be used.
    #[error("spec.tls.ca.secretName: Secret {secret}: {message}")]
    CaSecret {
        /// The Secret.
        secret: String,
        /// What is wrong with it.
        message: String,
    },
    /// The system's random number generator failed.
    #[error("cannot generate a secret: {0}")]
    Random(String),
}

impl PlanError {
    /// A CamelCase reason for the `Degraded` condition and the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::MissingNamespace
            | PlanError::InvalidName(_)
            | PlanError::InvalidSpec { .. } => "InvalidSpec",
            PlanError::BrokerConfig(_) => "InvalidConfig",
            PlanError::Certificate(_) => "CertificateError",
            PlanError::CaSecret { .. } => "CaSecretInvalid",
            PlanError::Random(_) => "InternalError",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> PlanError {
        PlanError::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Plans every object of `broker` at time `now`.
///
/// Owner references point at `broker` when it has a UID (it came from the
/// API server); an offline render has none and its objects carry no owner.
pub fn plan(
    broker: &MqttBroker,
    observed: &Observed,
    settings: &Settings,
    now: Timestamp,
) -> Result<Plan, PlanError> {
    let ctx = Context::new(broker, settings)?;
    cluster::check(&ctx)?;
    let tls = tls::tls(&ctx, observed, now)?;
    let broker_config = configmap::broker_config(&ctx)?;
    let (clients_ca_secret, clients_ca) = secrets::clients_ca(&ctx, observed, now)?;
    let mut config_map = configmap::config_map(
        &ctx,
        &broker_config,
        tls.ca_bundle.as_deref(),
        &clients_ca.cert_pem,
    );
    if !tls.config_map_annotations.is_empty() {
        config_map.metadata.annotations = Some(tls.config_map_annotations);
    }
    let auth_secret = secrets::auth_secret(&ctx, observed, now)?;
    let nats = nats::nats(&ctx, observed, now)?;
    let nats_client_pem = nats
        .as_ref()
        .and_then(|nats| secrets::text(&nats.client_secret, tls::TLS_CERT_KEY).map(str::to_owned));
    let stateful_set = statefulset::stateful_set(&ctx, &broker_config, nats_client_pem.as_deref());
    persistence::check_change(&ctx, observed.stateful_set.as_ref())?;
    let recheck_at = match (tls.recheck_at, nats.as_ref().map(|n| n.recheck_at)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Plan {
        stateful_set,
        headless_service: service::headless_service(&ctx),
        internal_service: service::internal_service(&ctx),
        external_service: service::external_service(&ctx),
        pod_disruption_budget: pdb::pod_disruption_budget(&ctx),
        nats,
        autoscaler: autoscaling::autoscaler(&ctx),
        warnings: service::warnings(&ctx),
        config_map,
        ca_secret: tls.ca_secret,
        server_secret: tls.server_secret,
        certificate_object: tls.certificate_object,
        auth_secret,
        clients_ca_secret,
        certificate: tls.certificate,
        recheck_at,
    })
}

/// What every builder needs: the broker, its names and resolved settings.
struct Context<'a> {
    broker: &'a MqttBroker,
    spec: &'a MqttBrokerSpec,
    namespace: &'a str,
    names: Names,
    settings: &'a Settings,
    owner: Option<OwnerReference>,
    /// The enabled listeners.
    listeners: Vec<Listener>,
}

impl<'a> Context<'a> {
    fn new(broker: &'a MqttBroker, settings: &'a Settings) -> Result<Context<'a>, PlanError> {
        let namespace = broker
            .metadata
            .namespace
            .as_deref()
            .ok_or(PlanError::MissingNamespace)?;
        let name = broker.metadata.name.as_deref().unwrap_or_default();
        if !valid_broker_name(name) {
            return Err(PlanError::InvalidName(name.to_owned()));
        }
        let spec = &broker.spec;
        for key in spec.labels.keys() {
            if [NAME_LABEL, INSTANCE_LABEL, MANAGED_BY_LABEL].contains(&key.as_str()) {
                return Err(PlanError::invalid(
                    "labels",
                    format!("`{key}` is set by the operator"),
                ));
            }
        }
        for (index, sidecar) in spec.sidecars.iter().enumerate() {
            if sidecar.name == statefulset::CONTAINER_NAME {
                return Err(PlanError::invalid(
                    format!("sidecars[{index}].name"),
                    format!("`{}` is the broker's container", sidecar.name),
                ));
            }
        }
        Ok(Context {
            broker,
            spec,
            namespace,
            names: Names::new(name),
            settings,
            owner: broker.controller_owner_ref(&()),
            listeners: resolve_listeners(&spec.listeners)?,
        })
    }

    /// Metadata of an object called `name`: namespace, common labels and
    /// the owner reference.
    fn metadata(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(common_labels(&self.names.broker)),
            owner_references: self.owner.clone().map(|owner| vec![owner]),
            ..ObjectMeta::default()
        }
    }

    fn selector_labels(&self) -> BTreeMap<String, String> {
        selector_labels(&self.names.broker)
    }
}

/// Whether `name` can name a broker: a DNS-1035 label short enough that
/// `<name>-headless` and the pods' controller-revision-hash labels fit in
/// 63 characters.
fn valid_broker_name(name: &str) -> bool {
    name.len() <= 52
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
