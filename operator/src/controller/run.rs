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
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use super::{error_policy, reconcile, user, watch, Context};
use crate::api::{MqttBroker, MqttUser, REFERENCED_LABEL};
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::plan::user_secret::USER_LABEL;
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

/// How many watch events a shared stream buffers for a slow subscriber.
const SHARED_BUFFER: usize = 256;

/// Runs the broker and user controllers of each watched namespace (of all
/// of them when `namespaces` is empty) until they shut down on a signal.
///
/// Per scope, one watch of `MqttBroker`s and one of `MqttUser`s, each
/// feeding a cache (the users' is [`Context::index`]) and both
/// controllers, filtered by [`watch`]: a status write wakes nothing up.
/// The operator's own objects are watched by their `managed-by` label, its
/// users' credentials Secrets by their user label, and the Secrets it only
/// reads by [`REFERENCED_LABEL`] (metadata only: no Secret's data is
/// watched).
async fn controllers(client: &Client, namespaces: &[String], ctx: Arc<Context>) {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|ns| Some(ns.as_str())).collect()
    };
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let referenced = watcher::Config::default().labels(REFERENCED_LABEL);
    let mut roots: Vec<Run<'_>> = Vec::new();
    let mut runs: Vec<Run<'_>> = Vec::new();
    // Stores of an earlier leadership no longer follow the cluster.
    ctx.index.clear();
    for scope in scopes {
        runs.push(Box::pin(super::bridge::controller(client, scope)));
        runs.push(Box::pin(super::fleet::controller(client, scope)));
        let (users, user_writer) = reflector::store_shared::<MqttUser>(SHARED_BUFFER);
        let (brokers, broker_writer) = reflector::store_shared::<MqttBroker>(SHARED_BUFFER);
        let (Some(users_for_users), Some(users_for_brokers)) =
            (user_writer.subscribe(), user_writer.subscribe())
        else {
            error!("cannot subscribe to the MqttUser watch");
            return;
        };
        let (Some(brokers_for_brokers), Some(brokers_for_users)) =
            (broker_writer.subscribe(), broker_writer.subscribe())
        else {
            error!("cannot subscribe to the MqttBroker watch");
            return;
        };
        ctx.index.add(users.clone());
        roots.push(shared_watch(scoped::<MqttUser>(client, scope), user_writer));
        roots.push(shared_watch(
            scoped::<MqttBroker>(client, scope),
            broker_writer,
        ));

        let broker_secrets = watch::changed_or_deleted(
            watcher(
                scoped::<PartialObjectMeta<Secret>>(client, scope),
                owned.clone(),
            )
            .default_backoff(),
            watch::secret_fingerprint,
        );
        let users_of_brokers = watch::changed(users_for_brokers, watch::user_spec_fingerprint);
        let referencing = brokers.clone();
        runs.push(Box::pin(
            Controller::for_shared_stream(
                watch::changed(brokers_for_brokers, watch::broker_fingerprint),
                brokers.clone(),
            )
            .owns(scoped::<StatefulSet>(client, scope), owned.clone())
            .owns(scoped::<Service>(client, scope), owned.clone())
            .owns(scoped::<ConfigMap>(client, scope), owned.clone())
            .owns(scoped::<PodDisruptionBudget>(client, scope), owned.clone())
            .watches_stream(broker_secrets, |secret| watch::broker_of_secret(&secret))
            .watches_shared_stream(users_of_brokers, |user| watch::broker_of_user(&user))
            .watches_stream(
                watcher(
                    scoped::<PartialObjectMeta<Secret>>(client, scope),
                    referenced.clone(),
                )
                .default_backoff()
                .touched_objects(),
                move |secret| watch::brokers_referencing(&referencing.state(), &secret),
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
        ));

        let by_broker = users.clone();
        let by_password_secret = users.clone();
        let users_to_update = watch::UsersToUpdate::default();
        let user_secrets = watcher::Config::default().labels(USER_LABEL);
        runs.push(Box::pin(
            Controller::for_shared_stream(
                watch::changed(users_for_users, watch::user_fingerprint),
                users.clone(),
            )
            .owns_stream(
                watcher(
                    scoped::<PartialObjectMeta<Secret>>(client, scope),
                    user_secrets,
                )
                .default_backoff()
                .touched_objects(),
            )
            .watches_shared_stream(
                watch::changed(brokers_for_users, watch::broker_credentials_fingerprint),
                move |broker| users_to_update.of(&by_broker.state(), &broker),
            )
            .watches_stream(
                watcher(
                    scoped::<PartialObjectMeta<Secret>>(client, scope),
                    referenced.clone(),
                )
                .default_backoff()
                .touched_objects(),
                move |secret| watch::users_of_password_secret(&by_password_secret.state(), &secret),
            )
            .shutdown_on_signal()
            .run(user::reconcile, user::error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((user, _)) => debug!(user = %user, "reconciled"),
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    Err(error) => warn!(%error, "user controller error"),
                }
            }),
        ));
    }
    // The watches feed the controllers; they stop when the controllers do.
    tokio::select! {
        _ = futures::future::join_all(runs) => {}
        _ = futures::future::join_all(roots) => warn!("the watches stopped"),
    }
}

/// One running controller or watch.
type Run<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The watch of every `K` of `api`, feeding `writer`'s store and its
/// subscribers; errors are logged and the watch backs off and resumes.
fn shared_watch<'a, K>(api: Api<K>, writer: reflector::store::Writer<K>) -> Run<'a>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Box::pin(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect_shared(writer)
            .for_each(|event| async move {
                if let Err(error) = event {
                    warn!(%error, kind = %K::kind(&()), "watch");
                }
            }),
    )
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
