//! Server-side apply of a plan's objects, under one field manager.
//!
//! The objects go out twice, in the plan's order: first as a dry run, so
//! that an object the API server refuses (a resource quantity it cannot
//! parse, an admission webhook saying no) stops the reconcile before
//! anything is written, then for real. An error on the real pass (the
//! API server going away halfway) can leave some objects applied; the
//! next reconcile applies them all again.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

use super::ObjectKey;

/// The field manager of every object and status the operator writes.
pub const FIELD_MANAGER: &str = "kubemqtt-operator";

/// One object as the API server stored it.
#[derive(Debug, Clone)]
pub struct AppliedObject {
    /// Its kind and name.
    pub key: ObjectKey,
    /// What the API server returned (with its status and resource version).
    pub object: DynamicObject,
}

/// Why the objects could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused an object as invalid (HTTP 400 or 422): the
    /// spec asks for something Kubernetes does not accept. Retrying the
    /// same spec cannot help.
    #[error("the API server refused {object}: {message}")]
    Rejected {
        /// The object refused.
        object: ObjectKey,
        /// The API server's explanation.
        message: String,
    },
    /// Any other failure: the connection, the API server, permissions.
    #[error("cannot apply {object}: {source}")]
    Api {
        /// The object being applied.
        object: ObjectKey,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The plan holds an object of a kind this module does not know: a
    /// bug in the planner.
    #[error("cannot apply {0}: unknown kind")]
    UnknownKind(ObjectKey),
}

impl ApplyError {
    /// Whether retrying the same objects can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Api { .. })
    }
}

/// Applies `objects` (from [`crate::plan::Plan::objects`]) in `namespace`
/// with server-side apply, forcing ownership of every field it sets: a dry
/// run of them all, then the real apply. Returns the stored objects in the
/// same order.
pub async fn apply_all(
    client: &Client,
    namespace: &str,
    objects: &[Value],
) -> Result<Vec<AppliedObject>, ApplyError> {
    let targets = objects
        .iter()
        .map(Target::new)
        .collect::<Result<Vec<_>, _>>()?;
    for target in &targets {
        target.apply(client, namespace, true).await?;
    }
    let mut applied = Vec::with_capacity(targets.len());
    for target in &targets {
        applied.push(target.apply(client, namespace, false).await?);
    }
    Ok(applied)
}

/// One object to apply, with the API resource it belongs to.
struct Target<'a> {
    key: ObjectKey,
    resource: ApiResource,
    object: &'a Value,
}

impl<'a> Target<'a> {
    fn new(object: &'a Value) -> Result<Target<'a>, ApplyError> {
        let field = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let key = ObjectKey::new(
            field("/kind").unwrap_or_default(),
            field("/metadata/name").unwrap_or_default(),
        );
        let resource = match (field("/apiVersion"), key.kind.as_str()) {
            (Some("v1"), "ConfigMap") => ApiResource::erase::<ConfigMap>(&()),
            (Some("v1"), "Secret") => ApiResource::erase::<Secret>(&()),
            (Some("v1"), "Service") => ApiResource::erase::<Service>(&()),
            (Some("apps/v1"), "StatefulSet") => ApiResource::erase::<StatefulSet>(&()),
            (Some("policy/v1"), "PodDisruptionBudget") => {
                ApiResource::erase::<PodDisruptionBudget>(&())
            }
            _ => return Err(ApplyError::UnknownKind(key)),
        };
        Ok(Target {
            key,
            resource,
            object,
        })
    }

    async fn apply(
        &self,
        client: &Client,
        namespace: &str,
        dry_run: bool,
    ) -> Result<AppliedObject, ApplyError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &self.resource);
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if dry_run {
            params = params.dry_run();
        }
        match api
            .patch(&self.key.name, &params, &Patch::Apply(self.object))
            .await
        {
            Ok(object) => Ok(AppliedObject {
                key: self.key.clone(),
                object,
            }),
            Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
                Err(ApplyError::Rejected {
                    object: self.key.clone(),
                    message: status.message,
                })
            }
            Err(source) => Err(ApplyError::Api {
                object: self.key.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_planned_kinds_are_applied() {
        let object = |api_version: &str, kind: &str| serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "mq"}});
        for (api_version, kind, plural) in [
            ("v1", "ConfigMap", "configmaps"),
            ("v1", "Secret", "secrets"),
            ("v1", "Service", "services"),
            ("apps/v1", "StatefulSet", "statefulsets"),
            ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        ] {
            let value = object(api_version, kind);
            let target = Target::new(&value).unwrap();
            assert_eq!(target.resource.plural, plural);
            assert_eq!(target.key, ObjectKey::new(kind, "mq"));
        }
        let deployment = object("apps/v1", "Deployment");
        assert!(matches!(
            Target::new(&deployment),
            Err(ApplyError::UnknownKind(_))
        ));
        let wrong_group = object("apps/v1", "Secret");
        assert!(Target::new(&wrong_group).is_err());
    }
}
