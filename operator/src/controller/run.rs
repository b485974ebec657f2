//! `kubemqtt-operator run`: the HTTP server, the leader election and the
//! controllers.
//!
//! Every replica serves `/metrics`, `/healthz` and `/readyz` and takes
//! part in the election on a Lease (through `kube-lease-manager`). Only
//! the holder of the Lease runs the controllers; the others wait. A leader
//! that loses the Lease stops its controllers at once and waits again. On
//! SIGTERM or SIGINT the controllers finish the reconciles in flight, and
//! the Lease is released so that a standby takes over without waiting for
//! it to expire.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use super::{error_policy, reconcile, user, Context};
use crate::api::{MqttBroker, MqttUser};
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::plan::user_secret::BROKER_LABEL;
use crate::plan::{Settings, MANAGED_BY_LABEL, MANAGER};

/// Seconds a Lease stays held without renewal.
const LEASE_DURATION_SECONDS: u64 = 15;
/// How long before expiry the holder renews it.
const LEASE_GRACE_SECONDS: u64 = 5;

/// How to run the operator.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Namespaces whose brokers to manage; empty means all.
    pub namespaces: Vec<String>,
    /// The planner's settings.
    pub settings: Settings,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`.
    pub http_address: SocketAddr,
    /// Name of the leader election Lease.
    pub lease_name: String,
    /// Namespace of the Lease; default: the client's namespace (in a pod,
    /// the pod's own).
    pub lease_namespace: Option<String>,
    /// This replica's name in the election and in Events (its pod name).
    pub identity: String,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes configuration was found, or it is unusable.
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[from] kube::Error),
    /// The metrics could not be set up.
    #[error("cannot create the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] LeaseManagerError),
    /// The leader election task stopped on its own.
    #[error("the leader election stopped unexpectedly")]
    LeaseStopped,
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let metrics = Metrics::new()?;
    let readiness = Readiness::default();
    let listener = TcpListener::bind(config.http_address)
        .await
        .map_err(|source| RunError::Listen {
            address: config.http_address,
            source,
        })?;
    let router = http::router(metrics.clone(), readiness.clone());
    let server = tokio::spawn(async move {
        if let Err(error) = http::serve(listener, router).await {
            error!(%error, "the HTTP server stopped");
        }
    });
    info!(address = %config.http_address, "serving /metrics, /healthz and /readyz");

    let client = Client::try_default().await?;
    let lease_namespace = config
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&lease_namespace)
        .with_identity(&config.identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut leader, election) = manager.watch().await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.settings.clone(),
        metrics.clone(),
        Some(config.identity.clone()),
    ));
    readiness.set_ready();
    info!(
        lease = %config.lease_name,
        namespace = %lease_namespace,
        identity = %config.identity,
        "waiting for the leader lease"
    );

    let mut shutdown = std::pin::pin!(shutdown_signal());
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            acquired = leader.wait_for(|is_leader| *is_leader) => {
                if acquired.is_err() {
                    break Err(RunError::LeaseStopped);
                }
            }
        }
        info!("acquired the leader lease: starting the controllers");
        metrics.leader.set(1);
        tokio::select! {
            () = controllers(&client, &config.namespaces, ctx.clone()) => {
                info!("the controllers stopped");
                break Ok(());
            }
            lost = leader.wait_for(|is_leader| !*is_leader) => {
                metrics.leader.set(0);
                if lost.is_err() {
                    break Err(RunError::LeaseStopped);
                }
                warn!("lost the leader lease: stopped the controllers");
            }
        }
    };
    metrics.leader.set(0);
    // Closing the channel makes the election task release the Lease.
    drop(leader);
    match election.await {
        Ok(Ok(_)) => info!("released the leader lease"),
        Ok(Err(error)) => warn!(%error, "cannot release the leader lease"),
        Err(error) => warn!(%error, "the leader election task failed"),
    }
    server.abort();
    result
}

/// Runs one controller per watched namespace (one for all when
/// `namespaces` is empty) until they shut down on a signal.
async fn controllers(client: &Client, namespaces: &[String], ctx: Arc<Context>) {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|ns| Some(ns.as_str())).collect()
    };
    // Only the operator's own objects are watched (and cached).
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let brokers = scopes.iter().map(|&scope| -> Run<'_> {
        Box::pin(
            Controller::new(
                scoped::<MqttBroker>(client, scope),
                watcher::Config::default(),
            )
            .owns(scoped::<StatefulSet>(client, scope), owned.clone())
            .owns(scoped::<Service>(client, scope), owned.clone())
            .owns(scoped::<Secret>(client, scope), owned.clone())
            .owns(scoped::<ConfigMap>(client, scope), owned.clone())
            .owns(scoped::<PodDisruptionBudget>(client, scope), owned.clone())
            // A user, or its credentials Secret, changed: rebuild its broker's
            // credentials file.
            .watches(
                scoped::<MqttUser>(client, scope),
                watcher::Config::default(),
                |user| broker_of_user(&user),
            )
            .watches(
                scoped::<Secret>(client, scope),
                watcher::Config::default().labels(BROKER_LABEL),
                |secret| {
                    let broker = secret.labels().get(BROKER_LABEL)?;
                    Some(ObjectRef::<MqttBroker>::new(broker).within(&secret.namespace()?))
                },
            )
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((broker, _)) => debug!(broker = %broker, "reconciled"),
                    // Failed reconciles are logged by `error_policy`.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    Err(error) => warn!(%error, "controller error"),
                }
            }),
        )
    });
    let users = scopes.iter().map(|&scope| -> Run<'_> {
        let controller = Controller::new(
            scoped::<MqttUser>(client, scope),
            watcher::Config::default(),
        );
        let by_broker = controller.store();
        let by_password_secret = controller.store();
        // Only the metadata of Secrets: enough to notice that a user's
        // password Secret changed, without caching every Secret's data.
        let secrets = watcher(
            scoped::<PartialObjectMeta<Secret>>(client, scope),
            watcher::Config::default(),
        )
        .touched_objects();
        Box::pin(
            controller
                .owns(scoped::<Secret>(client, scope), owned.clone())
                .watches(
                    scoped::<MqttBroker>(client, scope),
                    watcher::Config::default(),
                    move |broker| users_of_broker(&by_broker.state(), &broker),
                )
                .watches_stream(secrets, move |secret| {
                    users_of_password_secret(&by_password_secret.state(), &secret)
                })
                .shutdown_on_signal()
                .run(user::reconcile, user::error_policy, ctx.clone())
                .for_each(|result| async move {
                    match result {
                        Ok((user, _)) => debug!(user = %user, "reconciled"),
                        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                        Err(error) => warn!(%error, "user controller error"),
                    }
                }),
        )
    });
    let bridges = scopes
        .iter()
        .map(|&scope| -> Run<'_> { Box::pin(super::bridge::controller(client, scope)) });
    let runs: Vec<_> = brokers.chain(users).chain(bridges).collect();
    futures::future::join_all(runs).await;
}

/// One running controller.
type Run<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The broker a user belongs to.
fn broker_of_user(user: &MqttUser) -> Option<ObjectRef<MqttBroker>> {
    Some(ObjectRef::new(&user.spec.broker_ref.name).within(&user.namespace()?))
}

/// The users of `broker` (their Secrets carry its address and CA).
pub fn users_of_broker(users: &[Arc<MqttUser>], broker: &MqttBroker) -> Vec<ObjectRef<MqttUser>> {
    users
        .iter()
        .filter(|user| {
            user.spec.broker_ref.name == broker.name_any() && user.namespace() == broker.namespace()
        })
        .map(|user| ObjectRef::from_obj(user.as_ref()))
        .collect()
}

/// The users whose password comes from the Secret `secret`.
pub fn users_of_password_secret<K: Resource>(
    users: &[Arc<MqttUser>],
    secret: &K,
) -> Vec<ObjectRef<MqttUser>> {
    let name = secret.meta().name.as_deref();
    let namespace = secret.meta().namespace.as_deref();
    users
        .iter()
        .filter(|user| {
            let from = user.spec.authentication.password.value_from.as_ref();
            from.is_some_and(|from| Some(from.secret_key_ref.name.as_str()) == name)
                && user.namespace().as_deref() == namespace
        })
        .map(|user| ObjectRef::from_obj(user.as_ref()))
        .collect()
}

/// An API for `K` in `namespace`, or in all namespaces.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned,
    K: std::fmt::Debug,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        result = tokio::signal::ctrl_c() => {
            if let Err(error) = result {
                warn!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
    info!("shutting down");
}
