//! The operator's cache of `MqttUser`s, shared by both controllers: which
//! users a broker has, and which users share a broker (for user name
//! conflicts), without listing them from the API on every reconcile.
//!
//! It reads the reflector stores the user controllers keep (one per
//! watched namespace scope), once they hold a complete list.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::runtime::reflector::Store;
use kube::ResourceExt;

use super::Error;
use crate::api::MqttUser;

/// How long a reconcile waits for the cache's first complete list.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `MqttUser`s the operator watches.
#[derive(Clone, Default)]
pub struct UserIndex {
    stores: Arc<RwLock<Vec<Store<MqttUser>>>>,
}

impl std::fmt::Debug for UserIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserIndex").finish_non_exhaustive()
    }
}

impl UserIndex {
    /// Adds the store of one watched scope.
    pub fn add(&self, store: Store<MqttUser>) {
        self.stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(store);
    }

    /// Forgets every store (the controllers are starting again, after a
    /// lost and regained leadership: the old stores no longer follow the
    /// cluster).
    pub fn clear(&self) {
        self.stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The users of the broker `broker` in `namespace`, once every store
    /// has its first complete list (a partial list would drop users from
    /// the broker's credentials file).
    pub async fn users_of(
        &self,
        namespace: &str,
        broker: &str,
    ) -> Result<Vec<Arc<MqttUser>>, Error> {
        let stores = self
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if stores.is_empty() {
            return Err(Error::UserCache("no MqttUser cache runs".to_owned()));
        }
        let mut users = Vec::new();
        for store in stores {
            tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready())
                .await
                .map_err(|_| {
                    Error::UserCache(format!(
                        "the MqttUser cache has no complete list after {READY_TIMEOUT:?}"
                    ))
                })?
                .map_err(|_| Error::UserCache("the MqttUser watch stopped".to_owned()))?;
            users.extend(store.state_filter(|user| {
                user.spec.broker_ref.name == broker
                    && user.namespace().as_deref() == Some(namespace)
            }));
        }
        users.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::plan::testing::user;

    #[tokio::test]
    async fn users_by_broker_once_the_list_is_complete() {
        let index = UserIndex::default();
        assert!(
            index.users_of("iot", "mq").await.is_err(),
            "nothing to read"
        );
        let (store, mut writer) = reflector::store();
        index.add(store);
        let mut other = user("other", "");
        other.spec.broker_ref.name = "elsewhere".to_owned();
        let mut moved = user("moved", "");
        moved.metadata.namespace = Some("lab".to_owned());
        writer.apply_watcher_event(&Event::Init);
        for object in [user("b", ""), user("a", ""), other, moved] {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let names: Vec<String> = index
            .users_of("iot", "mq")
            .await
            .unwrap()
            .iter()
            .map(|u| u.name_any())
            .collect();
        assert_eq!(names, ["a", "b"]);
        index.clear();
        assert!(
            index.users_of("iot", "mq").await.is_err(),
            "nothing to read"
        );
    }
}
