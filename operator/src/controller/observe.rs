//! Reading what exists, in few requests: a broker's Secrets and Services
//! each in one list (by the broker's labels), its ConfigMap, StatefulSet
//! and PodDisruptionBudget, its pods, its users' Secrets in one list, and
//! its users from the operator's cache ([`UserIndex`]), not from the API.
//!
//! The Secrets and the external Service's load balancer addresses feed the
//! planner ([`Observed`]); what was [`Seen`] of each object tells the apply
//! which objects changed; the StatefulSet, the Services and the pods feed
//! the status; a certificate the operator does not issue (a team's, or
//! cert-manager's) gives the status its expiry.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::apply::{certificate_resource, Seen};
use super::cluster::{self, ClusterObservation};
use super::index::UserIndex;
use super::{Error, ObjectKey};
use crate::api::{MqttBroker, MqttUser};
use crate::certs::{self, CertInfo};
use crate::plan::tls::TLS_CERT_KEY;
use crate::plan::user_secret::{self, BROKER_LABEL};
use crate::plan::{
    Names, Observed, APP_NAME, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL,
};

/// What one reconcile saw of a broker's objects.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The planner's input.
    pub planner: Observed,
    /// What was seen of each of the broker's objects that exists.
    pub seen: BTreeMap<ObjectKey, Seen>,
    /// The StatefulSet, if it exists.
    pub stateful_set: Option<StatefulSet>,
    /// The in-cluster Service, if it exists.
    pub internal_service: Option<Service>,
    /// The external Service, if it exists.
    pub external_service: Option<Service>,
    /// The cert-manager `Certificate`, with `spec.tls.certManager`.
    pub certificate_object: Option<DynamicObject>,
    /// The served certificate when the operator does not issue it (a
    /// team's Secret, or cert-manager's).
    pub user_certificate: Option<UserCertificate>,
    /// The broker's pods.
    pub pods: Vec<Pod>,
    /// Secrets the broker reads but does not own, as read (to label them
    /// for the operator's watch).
    pub referenced: Vec<Secret>,
    /// The managed NATS, the autoscaler and the PodDisruptionBudget, as
    /// far as they exist.
    pub cluster: ClusterObservation,
}

/// A certificate the operator does not issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCertificate {
    /// The Secret does not exist.
    Missing,
    /// The Secret has no readable `tls.crt`; why.
    Unreadable(String),
    /// The certificate.
    Valid(CertInfo),
}

impl UserCertificate {
    /// Reads the certificate of a `kubernetes.io/tls` Secret.
    pub fn read(secret: Option<&Secret>) -> UserCertificate {
        let Some(secret) = secret else {
            return UserCertificate::Missing;
        };
        let Some(bytes) = secret.data.as_ref().and_then(|data| data.get(TLS_CERT_KEY)) else {
            return UserCertificate::Unreadable(format!("it has no `{TLS_CERT_KEY}`"));
        };
        let Ok(pem) = std::str::from_utf8(&bytes.0) else {
            return UserCertificate::Unreadable(format!("`{TLS_CERT_KEY}` is not PEM text"));
        };
        match certs::inspect(pem) {
            Ok(info) => UserCertificate::Valid(info),
            Err(error) => UserCertificate::Unreadable(error.to_string()),
        }
    }
}

/// A read that failed for another reason than the object's absence.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {object}: {source}")]
pub struct ObserveError {
    /// The object being read.
    pub object: ObjectKey,
    /// What the API server or the connection said.
    #[source]
    pub source: kube::Error,
}

/// The label selector of every object the operator made for the broker
/// `name`.
pub fn owned_selector(name: &str) -> String {
    format!("{INSTANCE_LABEL}={name},{MANAGED_BY_LABEL}={MANAGER}")
}

/// The label selector of the broker `name`'s pods.
pub fn pod_selector(name: &str) -> String {
    format!("{NAME_LABEL}={APP_NAME},{INSTANCE_LABEL}={name}")
}

/// Reads every object of `broker` (in `namespace`).
pub async fn observe(
    client: &Client,
    index: &UserIndex,
    broker: &MqttBroker,
    namespace: &str,
    names: &Names,
) -> Result<Observation, Error> {
    let mut observation = Observation::default();
    let owned = owned_selector(&names.broker);
    let mut secrets = list::<Secret>(client, namespace, &owned).await?;
    let mut services = list::<Service>(client, namespace, &owned).await?;
    let config_map = get::<ConfigMap>(client, namespace, &names.config_map).await?;
    let stateful_set = get::<StatefulSet>(client, namespace, &names.broker).await?;
    let pdb = get::<PodDisruptionBudget>(client, namespace, &names.broker).await?;
    let seen = &mut observation.seen;
    let mut take_secret = |name: &str| {
        let secret = secrets.remove(name)?;
        seen.insert(ObjectKey::new("Secret", name), Seen::of(&secret.metadata));
        Some(secret)
    };
    let ca_secret = take_secret(&names.ca_secret);
    let server_secret = take_secret(&names.server_secret);
    let clients_ca_secret = take_secret(&names.clients_ca_secret);
    let auth_secret = take_secret(&names.auth_secret);
    let mut take_service = |name: &str| {
        let service = services.remove(name)?;
        seen.insert(ObjectKey::new("Service", name), Seen::of(&service.metadata));
        Some(service)
    };
    take_service(&names.headless_service);
    let internal_service = take_service(&names.broker);
    let external_service = take_service(&names.external_service);
    let mut cluster = cluster::observe(
        client,
        broker,
        namespace,
        names,
        &mut secrets,
        &mut services,
        &mut observation.seen,
    )
    .await?;
    cluster.pod_disruption_budget = pdb.is_some();
    let seen = &mut observation.seen;
    for (kind, name, meta) in [
        (
            "ConfigMap",
            &names.config_map,
            config_map.as_ref().map(|o| &o.metadata),
        ),
        (
            "StatefulSet",
            &names.broker,
            stateful_set.as_ref().map(|o| &o.metadata),
        ),
        (
            "PodDisruptionBudget",
            &names.broker,
            pdb.as_ref().map(|o| &o.metadata),
        ),
    ] {
        if let Some(meta) = meta {
            seen.insert(ObjectKey::new(kind, name), Seen::of(meta));
        }
    }

    let tls = &broker.spec.tls;
    if tls.cert_manager.is_some() {
        let certificates: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &certificate_resource());
        let key = ObjectKey::new("Certificate", &names.server_secret);
        // Without cert-manager there is no such resource: nothing exists.
        let certificate = match certificates.get_opt(&names.server_secret).await {
            Ok(certificate) => certificate,
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(source) => {
                return Err(ObserveError {
                    object: key,
                    source,
                }
                .into())
            }
        };
        if let Some(certificate) = &certificate {
            seen.insert(key, Seen::of(&certificate.metadata));
        }
        observation.certificate_object = certificate;
        observation.user_certificate = Some(UserCertificate::read(server_secret.as_ref()));
    }
    if let Some(name) = &tls.secret_name {
        let secret = get::<Secret>(client, namespace, name).await?;
        observation.user_certificate = Some(UserCertificate::read(secret.as_ref()));
        observation.referenced.extend(secret);
    }
    let mut ca_source = None;
    if let Some(name) = &tls.ca.secret_name {
        ca_source = get::<Secret>(client, namespace, name).await?;
        observation.referenced.extend(ca_source.clone());
    }

    let users = users(client, index, namespace, &names.broker).await?;
    observation.pods = list::<Pod>(client, namespace, &pod_selector(&names.broker))
        .await?
        .into_values()
        .collect();
    observation.planner = Observed {
        config_map,
        ca_secret,
        ca_source,
        server_secret,
        auth_secret,
        clients_ca_secret,
        users,
        load_balancer_ingress: load_balancer_ingress(external_service.as_ref()),
        stateful_set: stateful_set.clone(),
        nats_ca_secret: secrets.remove(&names.nats_ca_secret),
        nats_server_secret: secrets.remove(&names.nats_server_secret),
        nats_client_secret: secrets.remove(&names.nats_client_secret),
    };
    observation.cluster = cluster;
    observation.internal_service = internal_service;
    observation.external_service = external_service;
    observation.stateful_set = stateful_set;
    Ok(observation)
}

/// The `MqttUser`s of the broker `broker` (from the cache), each with the
/// metadata of its credentials Secret if it exists (one list): the
/// credentials file takes only the password hashes in its annotations,
/// never a password.
pub async fn users(
    client: &Client,
    index: &UserIndex,
    namespace: &str,
    broker: &str,
) -> Result<Vec<(MqttUser, Option<Secret>)>, Error> {
    let users = index.users_of(namespace, broker).await?;
    let selector = format!("{BROKER_LABEL}={broker}");
    let mut secrets: BTreeMap<String, Secret> =
        Api::<Secret>::namespaced(client.clone(), namespace)
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ObserveError {
                object: ObjectKey::new("Secret", &selector),
                source,
            })?
            .items
            .into_iter()
            .map(|meta| {
                let secret = Secret {
                    metadata: meta.metadata,
                    ..Secret::default()
                };
                (secret.name_any(), secret)
            })
            .collect();
    Ok(users
        .into_iter()
        .map(|user| {
            let secret = secrets.remove(&user_secret::secret_name(&user.name_any()));
            (user.as_ref().clone(), secret)
        })
        .collect())
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
pub fn load_balancer_ingress(
    service: Option<&Service>,
) -> Vec<k8s_openapi::api::core::v1::LoadBalancerIngress> {
    service
        .and_then(|service| service.status.as_ref())
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|load_balancer| load_balancer.ingress.clone())
        .unwrap_or_default()
}

/// Reads one object; `None` when it does not exist.
pub async fn get<K>(client: &Client, namespace: &str, name: &str) -> Result<Option<K>, ObserveError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ObserveError {
            object: ObjectKey::new(&K::kind(&()), name),
            source,
        })
}

/// Lists the objects matching `selector`, by name.
pub async fn list<K>(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<BTreeMap<String, K>, ObserveError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| ObserveError {
            object: ObjectKey::new(&K::kind(&()), selector),
            source,
        })?
        .items
        .into_iter()
        .map(|object| (object.name_any(), object))
        .collect())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn load_balancer_addresses_come_from_the_service_status() {
        assert!(load_balancer_ingress(None).is_empty());
        assert!(load_balancer_ingress(Some(&Service::default())).is_empty());
        let ingress = vec![LoadBalancerIngress {
            ip: Some("203.0.113.7".to_owned()),
            ..LoadBalancerIngress::default()
        }];
        let service = Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress.clone()),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        };
        assert_eq!(load_balancer_ingress(Some(&service)), ingress);
    }

    #[test]
    fn selectors_name_the_broker_and_the_operator() {
        assert_eq!(
            owned_selector("mq"),
            "app.kubernetes.io/instance=mq,app.kubernetes.io/managed-by=kubemqtt-operator"
        );
        assert_eq!(
            pod_selector("mq"),
            "app.kubernetes.io/name=kubemqtt-broker,app.kubernetes.io/instance=mq"
        );
    }

    #[test]
    fn user_certificates_are_read_or_explained() {
        assert_eq!(UserCertificate::read(None), UserCertificate::Missing);
        let secret = |data: &[(&str, &[u8])]| Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        assert_eq!(
            UserCertificate::read(Some(&secret(&[]))),
            UserCertificate::Unreadable("it has no `tls.crt`".to_owned())
        );
        assert!(matches!(
            UserCertificate::read(Some(&secret(&[("tls.crt", b"not a certificate")]))),
            UserCertificate::Unreadable(_)
        ));
        let now = "2025-06-01T12:00:00Z".parse().unwrap();
        let ca = certs::generate_ca(
            "test",
            now,
            k8s_openapi::jiff::SignedDuration::from_hours(24),
        )
        .unwrap();
        match UserCertificate::read(Some(&secret(&[("tls.crt", ca.cert_pem.as_bytes())]))) {
            UserCertificate::Valid(info) => {
                assert_eq!(
                    info.not_after,
                    now + k8s_openapi::jiff::SignedDuration::from_hours(24)
                )
            }
            other => panic!("expected a valid certificate, got {other:?}"),
        }
    }
}
