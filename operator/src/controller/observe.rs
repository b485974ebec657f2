//! Reading what exists: each of a broker's objects, once per reconcile.
//!
//! The Secrets and the client Service's load balancer addresses feed the
//! planner ([`Observed`]); the resource versions tell which objects an
//! apply created or changed (for Events); the StatefulSet and the Service
//! feed the status when nothing is applied; the user's certificate Secret
//! (`spec.tls.secretName`) gives the status its expiry.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::ObjectKey;
use crate::api::{MqttBroker, MqttUser};
use crate::certs::{self, CertInfo};
use crate::plan::secrets::TLS_CERT_KEY;
use crate::plan::user_secret::{self, BROKER_LABEL};
use crate::plan::{Names, Observed};

/// What one reconcile saw of a broker's objects.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The planner's input: the Secrets and the load balancer addresses.
    pub planner: Observed,
    /// The `resourceVersion` of each of the broker's objects that exists.
    pub resource_versions: BTreeMap<ObjectKey, String>,
    /// The StatefulSet, if it exists.
    pub stateful_set: Option<StatefulSet>,
    /// The client Service, if it exists.
    pub client_service: Option<Service>,
    /// The certificate in the user's Secret, when `spec.tls.secretName`
    /// names one.
    pub user_certificate: Option<UserCertificate>,
}

/// The certificate in the Secret named by `spec.tls.secretName`.
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

/// Reads every object of `broker` (in `namespace`), in the order they are
/// applied.
pub async fn observe(
    client: &Client,
    broker: &MqttBroker,
    namespace: &str,
    names: &Names,
) -> Result<Observation, ObserveError> {
    let mut observation = Observation::default();
    let versions = &mut observation.resource_versions;
    get::<ConfigMap>(client, namespace, &names.config_map, versions).await?;
    let ca_secret = get::<Secret>(client, namespace, &names.ca_secret, versions).await?;
    let server_secret = get::<Secret>(client, namespace, &names.server_secret, versions).await?;
    let clients_ca_secret =
        get::<Secret>(client, namespace, &names.clients_ca_secret, versions).await?;
    let auth_secret = get::<Secret>(client, namespace, &names.auth_secret, versions).await?;
    get::<Service>(client, namespace, &names.headless_service, versions).await?;
    let client_service = get::<Service>(client, namespace, &names.broker, versions).await?;
    let stateful_set = get::<StatefulSet>(client, namespace, &names.broker, versions).await?;
    get::<PodDisruptionBudget>(client, namespace, &names.broker, versions).await?;
    if let Some(secret_name) = &broker.spec.tls.secret_name {
        let user_secret =
            get::<Secret>(client, namespace, secret_name, &mut BTreeMap::new()).await?;
        observation.user_certificate = Some(UserCertificate::read(user_secret.as_ref()));
    }
    let users = users(client, namespace, &names.broker).await?;
    observation.planner = Observed {
        ca_secret,
        server_secret,
        auth_secret,
        clients_ca_secret,
        users,
        load_balancer_ingress: load_balancer_ingress(client_service.as_ref()),
    };
    observation.client_service = client_service;
    observation.stateful_set = stateful_set;
    Ok(observation)
}

/// The `MqttUser`s of the broker `broker`, each with its credentials
/// Secret if it exists: two list calls.
pub async fn users(
    client: &Client,
    namespace: &str,
    broker: &str,
) -> Result<Vec<(MqttUser, Option<Secret>)>, ObserveError> {
    let all = Api::<MqttUser>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| ObserveError {
            object: ObjectKey::new("MqttUser", "*"),
            source,
        })?;
    let selector = format!("{BROKER_LABEL}={broker}");
    let mut secrets: BTreeMap<String, Secret> =
        Api::<Secret>::namespaced(client.clone(), namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ObserveError {
                object: ObjectKey::new("Secret", &selector),
                source,
            })?
            .items
            .into_iter()
            .map(|secret| (secret.name_any(), secret))
            .collect();
    Ok(all
        .items
        .into_iter()
        .filter(|user| user.spec.broker_ref.name == broker)
        .map(|user| {
            let secret = secrets.remove(&user_secret::secret_name(&user.name_any()));
            (user, secret)
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

/// Reads one object; `None` when it does not exist. Records its resource
/// version in `versions`.
async fn get<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    versions: &mut BTreeMap<ObjectKey, String>,
) -> Result<Option<K>, ObserveError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let key = ObjectKey::new(&K::kind(&()), name);
    let object = Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ObserveError {
            object: key.clone(),
            source,
        })?;
    if let Some(version) = object
        .as_ref()
        .and_then(|o| o.meta().resource_version.clone())
    {
        versions.insert(key, version);
    }
    Ok(object)
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
