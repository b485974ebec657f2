//! Server-side apply of a plan's objects, under one field manager, and
//! only of the objects that changed.
//!
//! Each object goes out with an annotation holding the SHA-256 of what the
//! operator wants it to be ([`APPLIED_HASH_ANNOTATION`]). An object whose
//! stored annotation matches is left alone: a reconcile where nothing
//! changed writes nothing. To notice someone else's edit of an object
//! whose hash still matches, the operator remembers the version of each
//! object it last applied (its `generation` when it has one, else its
//! `resourceVersion`) and applies again when that moved. (After a restart
//! it trusts the annotations until the object next changes.)
//!
//! The objects to apply go out twice, in the plan's order: first as a dry
//! run, so that an object the API server refuses (a resource quantity it
//! cannot parse, an admission webhook saying no) stops the reconcile
//! before anything is written, then for real. An error on the real pass
//! (the API server going away halfway) can leave some objects applied;
//! the next reconcile applies the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ObjectKey;
use crate::api::REFERENCED_LABEL;

/// The field manager of every object and status the operator writes.
pub const FIELD_MANAGER: &str = "kubemqtt-operator";

/// The field manager of the annotations the broker controller writes on
/// users' Secrets (which revision of the credentials file holds them).
pub const CREDENTIALS_MANAGER: &str = "kubemqtt-operator-credentials";
/// The field manager of the label the operator puts on Secrets it only
/// reads ([`crate::api::REFERENCED_LABEL`]).
pub const REFERENCES_MANAGER: &str = "kubemqtt-operator-references";

/// Annotation on every object the operator applies: the SHA-256 (hex) of
/// the object as the operator wants it, without this annotation.
pub const APPLIED_HASH_ANNOTATION: &str = "kubemqtt.io/applied-hash";

/// One object as the API server stored it.
#[derive(Debug, Clone)]
pub struct AppliedObject {
    /// Its kind and name.
    pub key: ObjectKey,
    /// What the API server returned (with its status and resource version).
    pub object: DynamicObject,
}

/// What a reconcile saw of an existing object, to decide whether it
/// needs applying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `metadata.generation`, for objects that have one.
    pub generation: Option<i64>,
    /// The [`APPLIED_HASH_ANNOTATION`], if any.
    pub applied_hash: Option<String>,
}

impl Seen {
    /// What `meta` tells.
    pub fn of(meta: &ObjectMeta) -> Seen {
        Seen {
            resource_version: meta.resource_version.clone(),
            generation: meta.generation,
            applied_hash: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(APPLIED_HASH_ANNOTATION))
                .cloned(),
        }
    }

    /// The version that moves when the object's content does: its
    /// generation (which status updates leave alone) when it has one.
    fn version(&self) -> Option<String> {
        match (self.generation, &self.resource_version) {
            (Some(generation), _) => Some(format!("g{generation}")),
            (None, Some(version)) => Some(format!("r{version}")),
            (None, None) => None,
        }
    }
}

/// The hash and version of each object this process last applied.
#[derive(Debug, Default)]
pub struct AppliedVersions {
    entries: Mutex<HashMap<(String, ObjectKey), (String, String)>>,
}

impl AppliedVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ObjectKey), (String, String)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, namespace: &str, key: &ObjectKey, hash: &str, seen: &Seen) {
        if let Some(version) = seen.version() {
            self.lock().insert(
                (namespace.to_owned(), key.clone()),
                (hash.to_owned(), version),
            );
        }
    }

    /// Takes the version of an object the operator changed under another
    /// field manager (annotations only), so that the change is not taken
    /// for someone else's edit.
    pub fn refresh(&self, namespace: &str, stored: &AppliedObject) {
        let seen = Seen::of(&stored.object.metadata);
        let mut entries = self.lock();
        if let (Some(entry), Some(version)) = (
            entries.get_mut(&(namespace.to_owned(), stored.key.clone())),
            seen.version(),
        ) {
            entry.1 = version;
        }
    }

    fn get(&self, namespace: &str, key: &ObjectKey) -> Option<(String, String)> {
        self.lock()
            .get(&(namespace.to_owned(), key.clone()))
            .cloned()
    }
}

/// Why an object is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It does not exist.
    Create,
    /// What the operator wants of it changed.
    Update,
    /// Someone else changed it since the operator last applied it.
    Restore,
}

/// Decides whether an object with the desired `hash` must be applied,
/// given what was `seen` of it and what this process last applied.
pub fn decide(hash: &str, seen: Option<&Seen>, last: Option<&(String, String)>) -> Option<Change> {
    let Some(seen) = seen else {
        return Some(Change::Create);
    };
    if seen.applied_hash.as_deref() != Some(hash) {
        return Some(Change::Update);
    }
    match last {
        Some((last_hash, version))
            if last_hash == hash && seen.version().as_ref() != Some(version) =>
        {
            Some(Change::Restore)
        }
        _ => None,
    }
}

/// Stamps `object` with the hash of its content, and returns the hash.
pub fn stamp(object: &mut Value) -> String {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let empty = match metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            Some(annotations) => {
                annotations.remove(APPLIED_HASH_ANNOTATION);
                annotations.is_empty()
            }
            None => false,
        };
        if empty {
            metadata.remove("annotations");
        }
    }
    let hash: String = Sha256::digest(object.to_string().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let metadata = &mut object["metadata"];
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = Value::Object(serde_json::Map::new());
    }
    metadata["annotations"][APPLIED_HASH_ANNOTATION] = Value::String(hash.clone());
    hash
}

/// Why the objects could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused an object as invalid (HTTP 400 or 422), or
    /// does not serve its kind (HTTP 404: cert-manager not installed): the
    /// spec asks for something this cluster does not accept. Retrying the
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

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The objects written, as stored, in the plan's order.
    pub objects: Vec<AppliedObject>,
    /// Objects created.
    pub created: Vec<ObjectKey>,
    /// Objects whose content changed (for the operator's reasons, or back
    /// from someone else's edit).
    pub updated: Vec<ObjectKey>,
}

/// Applies those of `objects` (from [`crate::plan::Plan::objects`]) that
/// changed, given what was `seen`, in `namespace` with server-side apply,
/// forcing ownership of every field it sets: a dry run of them all, then
/// the real apply.
pub async fn apply_changed(
    client: &Client,
    namespace: &str,
    objects: Vec<Value>,
    seen: &BTreeMap<ObjectKey, Seen>,
    versions: &AppliedVersions,
) -> Result<Applied, ApplyError> {
    let pending = Pending::new(namespace, objects, seen, versions)?;
    pending.dry_run(client, namespace, None).await?;
    pending.commit(client, namespace, versions).await
}

/// The objects of a plan that need applying.
pub struct Pending {
    targets: Vec<(Target, String, Change, Option<Seen>)>,
}

impl Pending {
    /// Sorts out which of `objects` changed (and remembers the version of
    /// those that did not).
    pub fn new(
        namespace: &str,
        objects: Vec<Value>,
        seen: &BTreeMap<ObjectKey, Seen>,
        versions: &AppliedVersions,
    ) -> Result<Pending, ApplyError> {
        let mut targets = Vec::new();
        for mut object in objects {
            let hash = stamp(&mut object);
            let target = Target::new(object)?;
            let observed = seen.get(&target.key);
            let last = versions.get(namespace, &target.key);
            match decide(&hash, observed, last.as_ref()) {
                Some(change) => targets.push((target, hash, change, observed.cloned())),
                None => {
                    if let Some(observed) = observed {
                        versions.record(namespace, &target.key, &hash, observed);
                    }
                }
            }
        }
        Ok(Pending { targets })
    }

    /// Whether nothing needs applying.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Applies every pending object as a dry run, but `skip`.
    pub async fn dry_run(
        &self,
        client: &Client,
        namespace: &str,
        skip: Option<&ObjectKey>,
    ) -> Result<(), ApplyError> {
        for (target, ..) in &self.targets {
            if Some(&target.key) != skip {
                target.apply(client, namespace, true).await?;
            }
        }
        Ok(())
    }

    /// Applies every pending object for real.
    pub async fn commit(
        self,
        client: &Client,
        namespace: &str,
        versions: &AppliedVersions,
    ) -> Result<Applied, ApplyError> {
        let mut applied = Applied::default();
        for (target, hash, change, observed) in self.targets {
            let object = target.apply(client, namespace, false).await?;
            let stored = Seen::of(&object.object.metadata);
            versions.record(namespace, &target.key, &hash, &stored);
            match change {
                Change::Create => applied.created.push(target.key.clone()),
                Change::Update => applied.updated.push(target.key.clone()),
                Change::Restore => {
                    let before = observed.and_then(|o| o.resource_version);
                    if before != stored.resource_version {
                        applied.updated.push(target.key.clone());
                    }
                }
            }
            applied.objects.push(object);
        }
        Ok(applied)
    }
}

/// Applies a metadata-only change (`annotations` or `labels` of another
/// manager's object) under `manager`, so that the operator's main apply
/// neither owns nor removes them.
pub async fn apply_metadata(
    client: &Client,
    namespace: &str,
    manager: &str,
    object: Value,
) -> Result<AppliedObject, ApplyError> {
    let target = Target::new(object)?;
    target.apply_as(client, namespace, false, manager).await
}

/// Labels the objects of `objects` (Secrets, or the ConfigMaps fleets
/// name) that lack [`REFERENCED_LABEL`], so that the operator's watch of
/// referenced objects sees their changes. A failure is logged: without the
/// label, changes are seen at the next periodic reconcile.
pub async fn mark_referenced<K>(client: &Client, namespace: &str, objects: &[K])
where
    K: Resource<DynamicType = ()>,
{
    for object in objects {
        let labelled = object
            .meta()
            .labels
            .as_ref()
            .is_some_and(|labels| labels.contains_key(REFERENCED_LABEL));
        let Some(name) = object.meta().name.as_deref().filter(|_| !labelled) else {
            continue;
        };
        let kind = K::kind(&());
        let label = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "labels": {REFERENCED_LABEL: "true"}},
        });
        if let Err(error) = apply_metadata(client, namespace, REFERENCES_MANAGER, label).await {
            tracing::warn!(%error, %kind, name, "cannot label a referenced object");
        }
    }
}

/// One object to apply, with the API resource it belongs to.
struct Target {
    key: ObjectKey,
    resource: ApiResource,
    object: Value,
}

impl Target {
    fn new(object: Value) -> Result<Target, ApplyError> {
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
            (Some("cert-manager.io/v1"), "Certificate") => certificate_resource(),
            (Some("autoscaling/v2"), "HorizontalPodAutoscaler") => {
                ApiResource::erase::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(&())
            }
            (Some("keda.sh/v1alpha1"), "ScaledObject") => super::cluster::scaled_object_resource(),
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
        self.apply_as(client, namespace, dry_run, FIELD_MANAGER)
            .await
    }

    async fn apply_as(
        &self,
        client: &Client,
        namespace: &str,
        dry_run: bool,
        manager: &str,
    ) -> Result<AppliedObject, ApplyError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &self.resource);
        let mut params = PatchParams::apply(manager).force();
        if dry_run {
            params = params.dry_run();
        }
        match api
            .patch(&self.key.name, &params, &Patch::Apply(&self.object))
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
            Err(kube::Error::Api(status))
                if status.code == 404 && self.resource.group == "cert-manager.io" =>
            {
                Err(ApplyError::Rejected {
                    object: self.key.clone(),
                    message: format!(
                        "this cluster does not serve cert-manager's Certificates ({}): install \
                         cert-manager, or remove spec.tls.certManager",
                        status.message
                    ),
                })
            }
            Err(kube::Error::Api(status))
                if status.code == 404 && self.resource.group == "keda.sh" =>
            {
                Err(ApplyError::Rejected {
                    object: self.key.clone(),
                    message: format!(
                        "this cluster does not serve KEDA's ScaledObjects ({}): install KEDA, \
                         or set spec.autoscaling.provider to hpa",
                        status.message
                    ),
                })
            }
            Err(source) => Err(ApplyError::Api {
                object: self.key.clone(),
                source,
            }),
        }
    }
}

/// cert-manager's `Certificate` resource.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
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
            ("cert-manager.io/v1", "Certificate", "certificates"),
            (
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            ("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        ] {
            let target = Target::new(object(api_version, kind)).unwrap();
            assert_eq!(target.resource.plural, plural);
            assert_eq!(target.key, ObjectKey::new(kind, "mq"));
        }
        assert!(matches!(
            Target::new(object("apps/v1", "Deployment")),
            Err(ApplyError::UnknownKind(_))
        ));
        assert!(Target::new(object("apps/v1", "Secret")).is_err());
    }

    #[test]
    fn the_stamp_is_the_hash_of_the_content_without_it() {
        let mut object =
            serde_json::json!({"kind": "Secret", "metadata": {"name": "a"}, "data": {"k": "dg=="}});
        let hash = stamp(&mut object);
        assert_eq!(hash.len(), 64);
        assert_eq!(
            object["metadata"]["annotations"][APPLIED_HASH_ANNOTATION],
            hash
        );
        // Stamping again (the annotation present) gives the same hash.
        assert_eq!(stamp(&mut object.clone()), hash);
        let mut changed = object.clone();
        changed["data"]["k"] = "dw==".into();
        assert_ne!(stamp(&mut changed), hash);
    }

    #[test]
    fn only_what_changed_is_applied() {
        let seen = |hash: &str, generation: Option<i64>, version: &str| Seen {
            resource_version: Some(version.to_owned()),
            generation,
            applied_hash: Some(hash.to_owned()),
        };
        assert_eq!(decide("h", None, None), Some(Change::Create));
        assert_eq!(
            decide("h", Some(&seen("old", None, "1")), None),
            Some(Change::Update)
        );
        let legacy = Seen {
            applied_hash: None,
            ..seen("h", None, "1")
        };
        assert_eq!(decide("h", Some(&legacy), None), Some(Change::Update));
        // Same hash, nothing remembered (after a restart): trusted.
        assert_eq!(decide("h", Some(&seen("h", None, "1")), None), None);
        // Same hash and version as last applied: nothing to do.
        let last = ("h".to_owned(), "r1".to_owned());
        assert_eq!(decide("h", Some(&seen("h", None, "1")), Some(&last)), None);
        // Someone edited it since: applied again.
        assert_eq!(
            decide("h", Some(&seen("h", None, "2")), Some(&last)),
            Some(Change::Restore)
        );
        // A StatefulSet's status moves its resourceVersion, not its
        // generation: nothing to do.
        let last = ("h".to_owned(), "g3".to_owned());
        assert_eq!(
            decide("h", Some(&seen("h", Some(3), "9")), Some(&last)),
            None
        );
        assert_eq!(
            decide("h", Some(&seen("h", Some(4), "9")), Some(&last)),
            Some(Change::Restore)
        );
    }
}
