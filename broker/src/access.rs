//! Who may connect and what each client may do, as currently configured:
//! the authenticator and ACL built from the auth files, swapped atomically
//! when the files change, on SIGHUP or when credentials are pushed through
//! the admin API, and per-user connection counts.
//!
//! Pushed credentials stand in for the credentials file until the file
//! catches up: each version carries a `revision`, and whichever of the file
//! and the last push has the higher one is in force. The operator writes
//! the file (a Secret volume, which the kubelet refreshes only every minute
//! or so) and pushes the same text, so a change applies in about a second
//! and still survives a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::auth::fleet::config as fleet_config;
use crate::auth::fleet::pushed::{self, PushedRevocations, RevocationPush};
use crate::auth::fleet::{ExpiryWatch, FleetDevice, FleetTrust, Fleets, TopicAction};
use crate::auth::{self, Acl, AuthFileError, AuthText, Authenticator, ClientAcl};
use crate::client::ClientInfo;
use crate::config::{AuthConfig, CertificateUsers};
use crate::filewatch::{self, FileStamp};

/// One client's topic rules, resolved for the ACL generation in force when
/// they were looked up; re-resolved after a reload. Used by the connection
/// for what its client publishes (and its will) and by the session for what
/// it receives.
#[derive(Debug, Clone)]
pub struct AclCache {
    generation: u64,
    acl: Arc<ClientAcl>,
}

impl AclCache {
    /// Resolves the rules of the client `info` / `client_id` now.
    pub fn resolve(access: &Access, info: &ClientInfo, client_id: &str) -> AclCache {
        AclCache {
            generation: access.generation(),
            acl: access.client_acl(info, client_id),
        }
    }

    /// The rules, resolved again when the ACL changed since the last call.
    pub fn current(&mut self, access: &Access, info: &ClientInfo, client_id: &str) -> &ClientAcl {
        let generation = access.generation();
        if self.generation != generation {
            *self = AclCache {
                generation,
                acl: access.client_acl(info, client_id),
            };
        }
        &self.acl
    }
}

pub struct Access {
    /// The `[auth]` settings in force (a configuration reload may change
    /// them, see [`Access::reconfigure`]).
    config: ArcSwap<AuthConfig>,
    authenticator: ArcSwap<Authenticator>,
    acl: ArcSwap<Acl>,
    /// Incremented on every successful reload; holders of a resolved
    /// per-client ACL re-resolve when it changes.
    generation: AtomicU64,
    stamps: Mutex<Vec<Option<FileStamp>>>,
    /// The credentials in force: from the file or from the last push.
    credentials: Mutex<Credentials>,
    /// Open connections per user name (and per fleet device), for the
    /// `connections` quota.
    user_connections: Arc<Mutex<HashMap<String, u32>>>,
    /// The device fleets, reloaded when their files change (shared with
    /// the TLS listeners, which trust the certificate fleets' CAs).
    fleets: FleetTrust,
    fleet_stamps: Mutex<Vec<Option<FileStamp>>>,
    /// Revocation lists pushed through the admin API (held while fleets
    /// are reloaded, so that a reload and a push do not cross).
    fleet_revocations: Mutex<PushedRevocations>,
    /// Devices to disconnect when their token expires.
    expiry: ExpiryWatch,
}

/// Where the credentials in force come from.
#[derive(Debug, Clone, Default)]
struct Credentials {
    /// The last push that is newer than the file, if any.
    pushed: Option<Pushed>,
    /// The revision in force (0: none).
    revision: u64,
}

#[derive(Debug, Clone)]
struct Pushed {
    text: AuthText,
    revision: u64,
}

/// What a push of credentials did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The pushed revision is now in force.
    Applied { revision: u64 },
    /// The same revision is already in force; nothing changed.
    Unchanged { revision: u64 },
    /// An older revision than the one in force: refused.
    Stale { current: u64 },
}

/// Holds one of a user's connection slots; released on drop.
pub struct UserSlot {
    username: String,
    counts: Arc<Mutex<HashMap<String, u32>>>,
    /// A fleet device's: its fleet's devices-online gauge.
    online: Option<prometheus::IntGauge>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some(online) = &self.online {
            online.dec();
        }
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
        let mut credentials = Credentials::default();
        let (authenticator, acl) = load_files(config, &mut credentials)?;
        let fleets = Fleets::load(&configured_fleets(config)?, None)?;
        let mut fleet_revocations = PushedRevocations::default();
        let fleets = fleet_revocations.over_files(fleets, fleets_revision(config)?);
        Ok(Access {
            stamps: Mutex::new(file_stamps(config)),
            config: ArcSwap::from_pointee(config.clone()),
            authenticator: ArcSwap::from_pointee(authenticator),
            acl: ArcSwap::from_pointee(acl),
            generation: AtomicU64::new(1),
            credentials: Mutex::new(credentials),
            user_connections: Arc::default(),
            fleet_stamps: Mutex::new(fleet_stamps(config)),
            fleets: Arc::new(ArcSwap::from_pointee(fleets)),
            fleet_revocations: Mutex::new(fleet_revocations),
            expiry: ExpiryWatch::default(),
        })
    }

    /// The device fleets in force.
    pub fn fleets(&self) -> Arc<Fleets> {
        self.fleets.load_full()
    }

    /// The fleets as the TLS listeners see them.
    pub fn fleet_trust(&self) -> FleetTrust {
        self.fleets.clone()
    }

    /// Whether a client certificate may make a fleet login.
    pub fn has_certificate_fleets(&self) -> bool {
        self.fleets.load().has_certificate_fleets()
    }

    /// Devices disconnected when their token expires.
    pub fn expiry(&self) -> &ExpiryWatch {
        &self.expiry
    }

    /// The topic rules of a client: a fleet device's from its fleet, any
    /// other's from the ACL.
    pub fn client_acl(&self, info: &ClientInfo, client_id: &str) -> Arc<ClientAcl> {
        match &info.fleet {
            Some(device) => self.fleets().client_acl(device, client_id),
            None => self.acl().client(info.username.as_deref(), client_id),
        }
    }

    /// Whether a hook fleet's registry lets the device use the topic
    /// (always true for other clients and fleets).
    pub async fn fleet_allows(
        &self,
        device: Option<&FleetDevice>,
        client_id: &str,
        action: TopicAction,
        topic: &str,
    ) -> bool {
        match device {
            None => true,
            Some(device) => {
                let fleets = self.fleets();
                fleets.allows(device, client_id, action, topic).await
            }
        }
    }

    /// Whether any users are defined: a password or credentials file, or
    /// pushed credentials.
    pub fn has_user_files(&self) -> bool {
        let config = self.config.load();
        config.password_file.is_some()
            || config.credentials_file.is_some()
            || self.credentials.lock().pushed.is_some()
    }

    /// Whether a client that logged in with a certificate naming
    /// `username` may stay (see `auth.certificate_users`).
    pub fn certificate_user_allowed(&self, username: &str) -> bool {
        match self.config.load().certificate_users {
            CertificateUsers::Any => true,
            CertificateUsers::Known => self.authenticator().has_user(username),
        }
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

    /// The `revision` of the credentials in force (0 when they have none).
    pub fn credentials_revision(&self) -> u64 {
        self.credentials.lock().revision
    }

    /// Re-reads every file. On error nothing changes (of the files in
    /// error: the auth files and the fleets' are loaded apart).
    pub fn reload(&self) -> Result<(), AuthFileError> {
        let auth = self.reload_auth_files();
        let fleets = self.reload_fleets();
        auth.and(fleets)
    }

    fn reload_auth_files(&self) -> Result<(), AuthFileError> {
        let config = self.config.load_full();
        *self.stamps.lock() = file_stamps(&config);
        let mut credentials = self.credentials.lock();
        let mut next = credentials.clone();
        let (authenticator, acl) = load_files(&config, &mut next)?;
        self.swap(authenticator, acl);
        *credentials = next;
        Ok(())
    }

    /// Re-reads the fleets' files (revocation lists, CAs, secrets, keys).
    fn reload_fleets(&self) -> Result<(), AuthFileError> {
        let mut pushed = self.fleet_revocations.lock();
        let config = self.config.load_full();
        *self.fleet_stamps.lock() = fleet_stamps(&config);
        let fleets = Fleets::load(&configured_fleets(&config)?, Some(&self.fleets.load()))?;
        let fleets = pushed.over_files(fleets, fleets_revision(&config)?);
        self.fleets.store(Arc::new(fleets));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Reloads the files that changed since the last look.
    pub fn reload_if_changed(&self) -> Option<Result<(), AuthFileError>> {
        let config = self.config.load();
        let auth = *self.stamps.lock() != file_stamps(&config);
        let fleets = *self.fleet_stamps.lock() != fleet_stamps(&config);
        drop(config);
        let auth = auth.then(|| self.reload_auth_files());
        let fleets = fleets.then(|| self.reload_fleets());
        match (auth, fleets) {
            (None, None) => None,
            (Some(a), Some(f)) => Some(a.and(f)),
            (Some(one), None) | (None, Some(one)) => Some(one),
        }
    }

    /// Puts new `[auth]` settings in force (a configuration reload): the
    /// files they name are read at once. On error nothing changes.
    pub fn reconfigure(&self, config: &AuthConfig) -> Result<(), AuthFileError> {
        let mut credentials = self.credentials.lock();
        let mut next = credentials.clone();
        let (authenticator, acl) = load_files(config, &mut next)?;
        let running = self.config.load();
        let mut pushed = self.fleet_revocations.lock();
        let fleets = if config.fleets != running.fleets || config.fleets_dir != running.fleets_dir {
            let configured = configured_fleets(config)?;
            let loaded = Fleets::load(&configured, Some(&self.fleets.load()))?;
            Some(pushed.over_files(loaded, fleets_revision(config)?))
        } else {
            None
        };
        drop(running);
        *self.stamps.lock() = file_stamps(config);
        *self.fleet_stamps.lock() = fleet_stamps(config);
        self.config.store(Arc::new(config.clone()));
        if let Some(fleets) = fleets {
            self.fleets.store(Arc::new(fleets));
        }
        self.swap(authenticator, acl);
        *credentials = next;
        Ok(())
    }

    /// Puts the credentials file `text` (which must have a `revision`) in
    /// force in place of the file's, unless the revision in force is the
    /// same or newer. Invalid text changes nothing.
    pub fn push_credentials(&self, text: String) -> Result<PushOutcome, AuthFileError> {
        let mut credentials = self.credentials.lock();
        let origin = "pushed credentials".to_owned();
        let revision = auth::credentials_revision(&AuthText {
            text: text.clone(),
            origin: origin.clone(),
        })?
        .ok_or_else(|| AuthFileError::Invalid {
            file: origin.clone(),
            line: None,
            message: "pushed credentials need a `revision`".to_owned(),
        })?;
        if revision < credentials.revision {
            return Ok(PushOutcome::Stale {
                current: credentials.revision,
            });
        }
        if revision == credentials.revision {
            return Ok(PushOutcome::Unchanged { revision });
        }
        let mut next = credentials.clone();
        next.pushed = Some(Pushed {
            text: AuthText {
                text,
                origin: format!("{origin} (revision {revision})"),
            },
            revision,
        });
        let (authenticator, acl) = load_files(&self.config.load(), &mut next)?;
        self.swap(authenticator, acl);
        *credentials = next;
        Ok(PushOutcome::Applied { revision })
    }

    /// Puts pushed revocation lists (see [`pushed`]) in force at once,
    /// unless the revision in force is the same or newer. An invalid push
    /// changes nothing.
    pub fn push_fleet_revocations(&self, text: &str) -> Result<PushOutcome, AuthFileError> {
        let push = RevocationPush::parse(text)?;
        let mut pushed = self.fleet_revocations.lock();
        let (outcome, fleets) = pushed.push(push, &self.fleets.load());
        if let Some(fleets) = fleets {
            self.fleets.store(Arc::new(fleets));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(outcome)
    }

    /// The revision of the fleets in force (the fleets directory's or the
    /// last push's; 0 when neither has one).
    pub fn fleets_revision(&self) -> u64 {
        self.fleet_revocations.lock().revision()
    }

    fn swap(&self, authenticator: Authenticator, acl: Acl) {
        self.authenticator.store(Arc::new(authenticator));
        self.acl.store(Arc::new(acl));
        self.generation.fetch_add(1, Ordering::AcqRel);
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
            online: None,
        })
    }

    /// Takes a connection slot of a fleet device (counted per fleet and
    /// device id, apart from users of the same name), unless it already
    /// holds `max`; counts the device online in `online` while held.
    pub fn acquire_device_slot(
        &self,
        device: &FleetDevice,
        max: Option<u32>,
        online: prometheus::IntGauge,
    ) -> Option<UserSlot> {
        let key = format!("\0{}\0{}", device.fleet, device.device_id);
        let mut slot = self.acquire_user_slot(&key, max)?;
        online.inc();
        slot.online = Some(online);
        Some(slot)
    }
}

/// Reads the files and builds the authenticator and ACL, with the pushed
/// credentials of `credentials` standing in for the credentials file while
/// their revision is the higher. Updates `credentials` (a push the file
/// has caught up with is dropped).
fn load_files(
    config: &AuthConfig,
    credentials: &mut Credentials,
) -> Result<(Authenticator, Acl), AuthFileError> {
    let read = |path: Option<&std::path::PathBuf>| path.map(|p| AuthText::read(p)).transpose();
    let passwd = read(config.password_file.as_ref())?;
    let file = read(config.credentials_file.as_ref())?;
    let acl = read(config.acl_file.as_ref())?;
    let file_revision = match &file {
        Some(file) => auth::credentials_revision(file)?.unwrap_or(0),
        None => 0,
    };
    if credentials
        .pushed
        .as_ref()
        .is_some_and(|pushed| pushed.revision <= file_revision)
    {
        credentials.pushed = None;
    }
    let (creds, revision) = match &credentials.pushed {
        Some(pushed) => (Some(&pushed.text), pushed.revision),
        None => (file.as_ref(), file_revision),
    };
    let built = auth::build(passwd.as_ref(), creds, acl.as_ref())?;
    credentials.revision = revision;
    Ok(built)
}

fn fleet_stamps(config: &AuthConfig) -> Vec<Option<FileStamp>> {
    let files = fleet_config::watched_files(&config.fleets, config.fleets_dir.as_deref());
    filewatch::stamps(files.iter().map(|path| path.as_path()))
}

/// The revision of the fleets directory's files.
fn fleets_revision(config: &AuthConfig) -> Result<u64, AuthFileError> {
    pushed::dir_revision(config.fleets_dir.as_deref())
}

/// The fleets of `[[auth.fleets]]` and of `auth.fleets_dir`.
fn configured_fleets(config: &AuthConfig) -> Result<Vec<auth::fleet::FleetConfig>, AuthFileError> {
    fleet_config::all_fleets(&config.fleets, config.fleets_dir.as_deref())
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
mod tests;
