//! Pushing a broker's fleet revocation lists to its pods' admin API
//! (`PUT /api/v1/fleets/revocations`), so that a revocation is in force
//! within a second instead of when the kubelet next refreshes the fleets
//! Secret volume (a minute or more).
//!
//! The fleets Secret is written first, then pushed: the broker keeps
//! whichever of its fleets directory and the last push has the higher
//! revision, and a broker that restarts reads the directory (and is pushed
//! again: its pod key changes with the container's restarts). Pods that
//! already confirmed the revision are not sent it again; the admin token
//! is read only when a pod needs a push.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::{api_error, FleetContext, FleetError};
use crate::api::MqttBroker;
use crate::controller::observe::pod_selector;
use crate::controller::push::{self, PushError};
use crate::plan::fleet::BrokerFleets;
use crate::plan::secrets::{text, ADMIN_TOKEN_KEY};
use crate::plan::statefulset::CONTAINER_NAME;
use crate::plan::{Names, HTTP_PORT};

/// Where the revocation lists are pushed.
pub const FLEETS_PUSH_PATH: &str = "/api/v1/fleets/revocations";

/// How far a revision of the fleets Secret got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// The revision.
    pub revision: u64,
    /// Broker pods that confirmed it.
    pub pods_confirmed: usize,
    /// Every pod of the broker (as many as it should have) confirmed it.
    pub everywhere: bool,
}

/// Pushes the revocation lists of `revision` to every pod of `broker` that
/// has not confirmed it yet.
pub async fn propagate(
    ctx: &FleetContext,
    broker: &MqttBroker,
    built: &BrokerFleets,
    revision: u64,
) -> Result<Propagation, FleetError> {
    let namespace = broker.namespace().unwrap_or_default();
    let name = broker.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels(&pod_selector(&name)))
        .await
        .map_err(api_error("list the broker's pods"))?
        .items;
    let targets = push::targets_at(&listed, CONTAINER_NAME, HTTP_PORT, FLEETS_PUSH_PATH);
    let waiting: Vec<_> = targets
        .iter()
        .filter(|target| !ctx.pushed.is_current(&target.key, revision))
        .collect();
    let mut confirmed = targets.len() - waiting.len();
    if !waiting.is_empty() {
        let token = admin_token(ctx, &namespace, &name).await?;
        let body = built.revocation_push(revision);
        for target in waiting {
            let (Some(url), Some(token)) = (&target.url, &token) else {
                tracing::debug!(pod = %target.name, "no address or admin token yet: cannot push the revocations");
                continue;
            };
            match ctx.pusher.push(url, token, &body).await {
                Ok(reply) => {
                    tracing::info!(pod = %target.name, revision, ?reply, "fleet revocations pushed");
                    ctx.pushed.confirm(&target.key, revision);
                    confirmed += 1;
                }
                Err(error @ PushError::Unreachable { .. }) => {
                    tracing::debug!(%error, "cannot push the fleet revocations yet");
                    ctx.pushed.forget(&target.key);
                }
                Err(error) => {
                    tracing::warn!(%error, "the broker refused the pushed fleet revocations");
                    ctx.pushed.forget(&target.key);
                }
            }
        }
    }
    let desired = usize::try_from(broker.spec.replicas.max(0)).unwrap_or(0);
    Ok(Propagation {
        revision,
        pods_confirmed: confirmed,
        everywhere: confirmed == targets.len() && targets.len() >= desired,
    })
}

/// The broker's admin token (in its auth Secret), when there is one.
async fn admin_token(
    ctx: &FleetContext,
    namespace: &str,
    broker: &str,
) -> Result<Option<String>, FleetError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = Names::new(broker).auth_secret;
    let secret = secrets
        .get_opt(&name)
        .await
        .map_err(api_error(format!("read Secret {name}")))?;
    Ok(secret.and_then(|s| text(&s, ADMIN_TOKEN_KEY).map(str::to_owned)))
}
