//! Which watch events start which reconciles, so that a reconcile runs
//! when something it depends on changed, and not on every write (a
//! status, an annotation only the other controller reads, a watch
//! restarting and listing everything again).
//!
//! - A broker reconciles on a change of its spec (its `generation`) or of
//!   the annotations it acts on; of any object it owns; of one of its
//!   users' spec, or of what the credentials file takes from a user's
//!   Secret; of a Secret it reads but does not own.
//! - A user reconciles on a change of its spec or rotate annotation; of its
//!   Secret; of its password Secret; of what its Secret takes from its
//!   broker (listeners, addresses, CA) — or, while it waits for its
//!   credentials to be confirmed, of the broker's confirmed revision.
//!
//! The functions here are pure filters and mappers; [`super::run`] wires
//! them to the watches.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{future, Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::api::{
    MqttBroker, MqttUser, CONDITION_USER_READY, FORCE_RENEW_ANNOTATION, PAUSED_ANNOTATION,
    ROTATE_ANNOTATION, ROTATE_CA_ANNOTATION,
};
use crate::plan::user_secret::{
    BROKER_LABEL, PASSWORD_HASH_ANNOTATION, PREVIOUS_PASSWORD_HASH_ANNOTATION,
    PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION,
};
use crate::plan::{INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER};

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// An object's identity across its life (a new object of the same name is
/// another one).
fn identity<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    )
}

/// Remembers the fingerprint of each object and tells whether a new one
/// differs.
#[derive(Debug, Default)]
pub struct Fingerprints {
    seen: HashMap<String, u64>,
}

impl Fingerprints {
    /// Records `fingerprint` for `object`; whether it changed (or the
    /// object is new).
    pub fn changed<K: Resource>(&mut self, object: &K, fingerprint: u64) -> bool {
        self.seen.insert(identity(object), fingerprint) != Some(fingerprint)
    }

    /// Forgets `object` (deleted).
    pub fn forget<K: Resource>(&mut self, object: &K) {
        self.seen.remove(&identity(object));
    }
}

/// The objects of a shared stream whose `fingerprint` changed.
pub fn changed<K, S>(
    stream: S,
    fingerprint: impl Fn(&K) -> u64 + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource + Send + Sync + 'static,
    S: Stream<Item = Arc<K>> + Send,
{
    let mut fingerprints = Fingerprints::default();
    stream.filter(move |object| {
        let keep = fingerprints.changed(object.as_ref(), fingerprint(object));
        future::ready(keep)
    })
}

/// The objects of a watch whose `fingerprint` changed, and every deleted
/// one.
pub fn changed_or_deleted<K, S>(
    events: S,
    fingerprint: impl Fn(&K) -> u64 + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut fingerprints = Fingerprints::default();
    events.filter_map(move |event| {
        let item = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let print = fingerprint(&object);
                fingerprints.changed(&object, print).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                fingerprints.forget(&object);
                Some(Ok(object))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        };
        future::ready(item)
    })
}

/// What a broker reconcile acts on in the broker itself: its spec and the
/// annotations that pause it or renew its certificates.
pub fn broker_fingerprint(broker: &MqttBroker) -> u64 {
    let annotations = broker.annotations();
    hash_of((
        broker.metadata.generation,
        [
            PAUSED_ANNOTATION,
            FORCE_RENEW_ANNOTATION,
            ROTATE_CA_ANNOTATION,
        ]
        .map(|key| annotations.get(key)),
    ))
}

/// What a user reconcile acts on in the user itself: its spec and the
/// rotate annotation.
pub fn user_fingerprint(user: &MqttUser) -> u64 {
    hash_of((
        user.metadata.generation,
        user.annotations().get(ROTATE_ANNOTATION),
    ))
}

/// What the broker's credentials file takes from a user: its spec.
pub fn user_spec_fingerprint(user: &MqttUser) -> u64 {
    hash_of(user.metadata.generation)
}

/// What the broker's credentials file takes from a Secret: for a user's
/// credentials Secret, its password hashes (not the annotations the broker
/// controller writes on it); for the broker's own Secrets, any change.
pub fn secret_fingerprint<K: Resource>(secret: &K) -> u64 {
    let meta = secret.meta();
    let is_user_secret = meta
        .labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(BROKER_LABEL));
    if is_user_secret {
        let annotations = meta.annotations.clone().unwrap_or_default();
        hash_of(
            [
                PASSWORD_HASH_ANNOTATION,
                PREVIOUS_PASSWORD_HASH_ANNOTATION,
                PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION,
            ]
            .map(|key| annotations.get(key).cloned()),
        )
    } else {
        hash_of(&meta.resource_version)
    }
}

/// What a user's Secret takes from its broker: the spec (listeners, SANs),
/// the addresses and the certificates. The confirmed credentials revision
/// is not part of it: see [`UsersToUpdate`].
pub fn broker_for_users_fingerprint(broker: &MqttBroker) -> u64 {
    let status = broker.status.clone().unwrap_or_default();
    hash_of((
        broker.metadata.generation,
        serde_json::to_string(&(&status.endpoints, &status.certificate)).unwrap_or_default(),
    ))
}

/// The confirmed credentials revision of a broker, with everything
/// [`broker_for_users_fingerprint`] covers.
pub fn broker_credentials_fingerprint(broker: &MqttBroker) -> u64 {
    hash_of((
        broker_for_users_fingerprint(broker),
        broker
            .status
            .as_ref()
            .and_then(|s| s.credentials.as_ref())
            .and_then(|c| c.confirmed_revision),
    ))
}

/// The broker a user belongs to.
pub fn broker_of_user(user: &MqttUser) -> Option<ObjectRef<MqttBroker>> {
    Some(ObjectRef::new(&user.spec.broker_ref.name).within(&user.namespace()?))
}

/// The broker a Secret of the operator's belongs to: a user's credentials
/// Secret by its broker label, the broker's own by its instance label.
pub fn broker_of_secret<K: Resource>(secret: &K) -> Option<ObjectRef<MqttBroker>> {
    let meta = secret.meta();
    let labels = meta.labels.as_ref()?;
    let broker = match labels.get(BROKER_LABEL) {
        Some(broker) => broker,
        None if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER) => {
            labels.get(INSTANCE_LABEL)?
        }
        None => return None,
    };
    Some(ObjectRef::new(broker).within(meta.namespace.as_deref()?))
}

/// The brokers that read the Secret `secret` (a team's CA or certificate).
pub fn brokers_referencing<K: Resource>(
    brokers: &[Arc<MqttBroker>],
    secret: &K,
) -> Vec<ObjectRef<MqttBroker>> {
    let name = secret.meta().name.as_deref();
    let namespace = secret.meta().namespace.as_deref();
    brokers
        .iter()
        .filter(|broker| broker.namespace().as_deref() == namespace)
        .filter(|broker| {
            let tls = &broker.spec.tls;
            [tls.secret_name.as_deref(), tls.ca.secret_name.as_deref()].contains(&name)
        })
        .map(|broker| ObjectRef::from_obj(broker.as_ref()))
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

/// Which users a change of their broker concerns: all of them when what
/// their Secrets take from it changed, else (the confirmed credentials
/// revision moved) only those not Ready yet.
#[derive(Debug, Default)]
pub struct UsersToUpdate {
    last: Mutex<Fingerprints>,
}

impl UsersToUpdate {
    /// The users of `broker` among `users` to reconcile.
    pub fn of(&self, users: &[Arc<MqttUser>], broker: &MqttBroker) -> Vec<ObjectRef<MqttUser>> {
        let all = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changed(broker, broker_for_users_fingerprint(broker));
        users
            .iter()
            .filter(|user| {
                user.spec.broker_ref.name == broker.name_any()
                    && user.namespace() == broker.namespace()
            })
            .filter(|user| all || !is_ready(user))
            .map(|user| ObjectRef::from_obj(user.as_ref()))
            .collect()
    }
}

fn is_ready(user: &MqttUser) -> bool {
    user.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_USER_READY && c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use kube::core::PartialObjectMeta;

    use super::*;
    use crate::api::{CredentialsStatus, MqttBrokerStatus, MqttUserStatus};
    use crate::plan::testing::{broker, user};

    fn events<K>(
        items: Vec<watcher::Event<K>>,
    ) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> {
        futures::stream::iter(items.into_iter().map(Ok))
    }

    fn names<K: Resource>(objects: Vec<Result<K, watcher::Error>>) -> Vec<String> {
        objects
            .into_iter()
            .map(|o| o.unwrap().meta().name.clone().unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn a_status_write_does_not_reconcile_a_broker_a_spec_change_does() {
        let first = broker(Default::default());
        let mut with_status = first.clone();
        with_status.status = Some(MqttBrokerStatus {
            replicas: 1,
            ..MqttBrokerStatus::default()
        });
        let mut new_generation = with_status.clone();
        new_generation.metadata.generation = Some(2);
        let mut paused = new_generation.clone();
        paused.metadata.annotations =
            Some([(PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into());
        let stream = futures::stream::iter(
            [
                first,
                with_status,
                new_generation.clone(),
                new_generation,
                paused,
            ]
            .map(Arc::new),
        );
        let passed: Vec<Arc<MqttBroker>> = changed(stream, broker_fingerprint).collect().await;
        assert_eq!(
            passed
                .iter()
                .map(|b| b.metadata.generation)
                .collect::<Vec<_>>(),
            [None, Some(2), Some(2)]
        );
        assert!(passed[2].annotations().contains_key(PAUSED_ANNOTATION));
    }

    #[tokio::test]
    async fn a_user_status_write_or_a_relist_does_not_reach_the_broker() {
        let mut spec_v1 = user("device", "");
        spec_v1.metadata.generation = Some(1);
        let mut status_write = spec_v1.clone();
        status_write.status = Some(MqttUserStatus::default());
        let mut spec_v2 = status_write.clone();
        spec_v2.metadata.generation = Some(2);
        let stream = events(vec![
            watcher::Event::Init,
            watcher::Event::InitApply(spec_v1.clone()),
            watcher::Event::InitDone,
            watcher::Event::Apply(status_write),
            // The watch restarts and lists everything again.
            watcher::Event::Init,
            watcher::Event::InitApply(spec_v1.clone()),
            watcher::Event::InitDone,
            watcher::Event::Apply(spec_v2.clone()),
            watcher::Event::Delete(spec_v2),
        ]);
        let passed: Vec<_> = changed_or_deleted(stream, user_spec_fingerprint)
            .collect()
            .await;
        // The first sight, the new generation and the deletion; not the
        // status write, nor the same generation listed again.
        assert_eq!(names(passed), ["device", "device", "device"]);
    }

    fn user_secret(annotations: &[(&str, &str)]) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some("device-mqtt-credentials".into()),
                namespace: Some("iot".into()),
                labels: Some([(BROKER_LABEL.to_owned(), "mq".to_owned())].into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn what_the_broker_records_on_a_user_secret_does_not_reconcile_it() {
        let base = user_secret(&[(PASSWORD_HASH_ANNOTATION, "h1")]);
        let recorded = user_secret(&[
            (PASSWORD_HASH_ANNOTATION, "h1"),
            (crate::plan::users::CREDENTIALS_REVISION_ANNOTATION, "7"),
        ]);
        let rotated = user_secret(&[(PASSWORD_HASH_ANNOTATION, "h2")]);
        assert_eq!(secret_fingerprint(&base), secret_fingerprint(&recorded));
        assert_ne!(secret_fingerprint(&base), secret_fingerprint(&rotated));
        assert_eq!(
            broker_of_secret(&base),
            Some(ObjectRef::new("mq").within("iot"))
        );
        // The broker's own Secrets: by their instance label, any change.
        let mut own = user_secret(&[]);
        own.metadata.labels = Some(crate::plan::common_labels("mq"));
        own.metadata.resource_version = Some("5".into());
        let mut changed = own.clone();
        changed.metadata.resource_version = Some("6".into());
        assert_ne!(secret_fingerprint(&own), secret_fingerprint(&changed));
        assert_eq!(
            broker_of_secret(&own),
            Some(ObjectRef::new("mq").within("iot"))
        );
        // Someone else's Secret with a look-alike instance label is not ours.
        let mut foreign = own.clone();
        foreign.metadata.labels = Some([(INSTANCE_LABEL.to_owned(), "mq".to_owned())].into());
        assert_eq!(broker_of_secret(&foreign), None);
    }

    fn ready_user(name: &str, ready: bool) -> Arc<MqttUser> {
        let mut user = user(name, "");
        user.status = Some(MqttUserStatus {
            conditions: vec![Condition {
                type_: CONDITION_USER_READY.to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                reason: "x".to_owned(),
                message: String::new(),
                last_transition_time: Time("2025-01-01T00:00:00Z".parse().unwrap()),
                observed_generation: None,
            }],
            ..MqttUserStatus::default()
        });
        Arc::new(user)
    }

    #[test]
    fn a_confirmed_revision_reaches_only_users_waiting_for_it() {
        let users = vec![ready_user("ready", true), ready_user("waiting", false)];
        let mapper = UsersToUpdate::default();
        let mut mq = broker(Default::default());
        let names =
            |refs: Vec<ObjectRef<MqttUser>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        // First sight: everyone.
        assert_eq!(names(mapper.of(&users, &mq)), ["ready", "waiting"]);
        // Only the confirmed revision moved.
        mq.status = Some(MqttBrokerStatus {
            credentials: Some(CredentialsStatus {
                revision: 3,
                confirmed_revision: Some(3),
                pods_confirmed: 1,
            }),
            ..MqttBrokerStatus::default()
        });
        assert_ne!(
            broker_credentials_fingerprint(&broker(Default::default())),
            broker_credentials_fingerprint(&mq)
        );
        assert_eq!(names(mapper.of(&users, &mq)), ["waiting"]);
        // The spec changed: everyone's Secret may change.
        mq.metadata.generation = Some(2);
        assert_eq!(names(mapper.of(&users, &mq)), ["ready", "waiting"]);
    }

    #[test]
    fn brokers_and_users_reading_a_secret() {
        let mut own_ca = broker(Default::default());
        own_ca.spec.tls.ca.secret_name = Some("team-ca".into());
        let brokers = vec![Arc::new(own_ca), Arc::new(broker(Default::default()))];
        let secret = |name: &str| Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("iot".into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        assert_eq!(brokers_referencing(&brokers, &secret("team-ca")).len(), 1);
        assert!(brokers_referencing(&brokers, &secret("other")).is_empty());
        let users = vec![Arc::new(user(
            "app",
            "authentication: {password: {valueFrom: {secretKeyRef: {name: app-pw, key: pw}}}}",
        ))];
        assert_eq!(users_of_password_secret(&users, &secret("app-pw")).len(), 1);
        assert!(users_of_password_secret(&users, &secret("team-ca")).is_empty());
    }
}
