//! Who may connect and what each client may do, as currently configured:
//! the authenticator and ACL built from the auth files, swapped atomically
//! when the files change or on SIGHUP, and per-user connection counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::auth::{Acl, AuthFileError, Authenticator};
use crate::config::AuthConfig;
use crate::filewatch::{self, FileStamp};

pub struct Access {
    config: AuthConfig,
    authenticator: ArcSwap<Authenticator>,
    acl: ArcSwap<Acl>,
    /// Incremented on every successful reload; holders of a resolved
    /// per-client ACL re-resolve when it changes.
    generation: AtomicU64,
    stamps: Mutex<Vec<Option<FileStamp>>>,
    /// Open connections per user name, for the `connections` quota.
    user_connections: Arc<Mutex<HashMap<String, u32>>>,
}

/// Holds one of a user's connection slots; released on drop.
pub struct UserSlot {
    username: String,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.username) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.username);
            }
        }
    }
}

impl Access {
    pub fn load(config: &AuthConfig) -> Result<Access, AuthFileError> {
        let (authenticator, acl) = load_files(config)?;
        Ok(Access {
            stamps: Mutex::new(file_stamps(config)),
            config: config.clone(),
            authenticator: ArcSwap::from_pointee(authenticator),
            acl: ArcSwap::from_pointee(acl),
            generation: AtomicU64::new(1),
            user_connections: Arc::default(),
        })
    }

    /// Whether any password or credentials file is configured.
    pub fn has_user_files(&self) -> bool {
        self.config.password_file.is_some() || self.config.credentials_file.is_some()
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.load_full()
    }

    pub fn acl(&self) -> Arc<Acl> {
        self.acl.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads every file. On error nothing changes.
    pub fn reload(&self) -> Result<(), AuthFileError> {
        *self.stamps.lock() = file_stamps(&self.config);
        let (authenticator, acl) = load_files(&self.config)?;
        self.authenticator.store(Arc::new(authenticator));
        self.acl.store(Arc::new(acl));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Reloads when a file changed since the last look.
    pub fn reload_if_changed(&self) -> Option<Result<(), AuthFileError>> {
        if *self.stamps.lock() == file_stamps(&self.config) {
            return None;
        }
        Some(self.reload())
    }

    /// Takes a connection slot of `username`, unless it already holds `max`.
    pub fn acquire_user_slot(&self, username: &str, max: Option<u32>) -> Option<UserSlot> {
        let mut counts = self.user_connections.lock();
        let n = counts.entry(username.to_owned()).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            if *n == 0 {
                counts.remove(username);
            }
            return None;
        }
        *n += 1;
        Some(UserSlot {
            username: username.to_owned(),
            counts: self.user_connections.clone(),
        })
    }
}

fn load_files(config: &AuthConfig) -> Result<(Authenticator, Acl), AuthFileError> {
    let authenticator = Authenticator::load(
        config.password_file.as_deref(),
        config.credentials_file.as_deref(),
    )?;
    let acl = Acl::load(
        config.acl_file.as_deref(),
        config.credentials_file.as_deref(),
    )?;
    Ok((authenticator, acl))
}

fn file_stamps(config: &AuthConfig) -> Vec<Option<FileStamp>> {
    let files = [
        config.password_file.as_ref(),
        config.credentials_file.as_ref(),
        config.acl_file.as_ref(),
    ];
    filewatch::stamps(files.into_iter().flatten().map(|p| p.as_path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_slots_are_counted_and_released() {
        let access = Access::load(&AuthConfig::default()).unwrap();
        let a = access.acquire_user_slot("u", Some(2)).unwrap();
        let _b = access.acquire_user_slot("u", Some(2)).unwrap();
        assert!(access.acquire_user_slot("u", Some(2)).is_none());
        assert!(access.acquire_user_slot("other", Some(2)).is_some());
        drop(a);
        assert!(access.acquire_user_slot("u", Some(2)).is_some());
        assert!(access.acquire_user_slot("v", None).is_some());
    }

    #[test]
    fn reload_swaps_only_valid_files_and_bumps_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("acl");
        std::fs::write(&acl, "topic read a/#\n").unwrap();
        let config = AuthConfig {
            acl_file: Some(acl.clone()),
            ..AuthConfig::default()
        };
        let access = Access::load(&config).unwrap();
        assert!(access.reload_if_changed().is_none());
        let g = access.generation();
        assert!(access.acl().client(None, "c").can_receive("a/b"));

        std::fs::write(&acl, "topic read b/#\n# longer\n").unwrap();
        assert!(matches!(access.reload_if_changed(), Some(Ok(()))));
        assert_eq!(access.generation(), g + 1);
        assert!(!access.acl().client(None, "c").can_receive("a/b"));

        std::fs::write(&acl, "topic sideways x\n# broken, and longer again\n").unwrap();
        assert!(matches!(access.reload_if_changed(), Some(Err(_))));
        assert_eq!(access.generation(), g + 1);
        assert!(access.acl().client(None, "c").can_receive("b/c"));
    }
}
