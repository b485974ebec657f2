//! Reloading at run time, without dropping a connection.
//!
//! On SIGHUP and `POST /api/v1/reload` the broker re-reads `broker.toml`,
//! puts in force what can change while it runs, and names the keys that
//! need a restart; then it re-reads the auth and TLS files. Between those,
//! `broker.toml` and the auth and TLS files are also re-read when they
//! change on disk (checked every `auth.reload_interval_secs`), so a
//! Kubernetes ConfigMap update reaches the broker without a signal.
//!
//! What applies at once (see [`applies_at_run_time`]): `allow_anonymous`,
//! `presence_events`, `[limits]` (but `memory_budget_bytes`), `[log]`,
//! `[auth]`, `http.admin_token_file`, `[drain]`, and each listener's
//! `limits`, `max_connections` and `max_connection_rate`. New connections
//! get the new limits; connected clients keep the ones they were given at
//! CONNECT (MQTT 5.0 clients were told some of them in CONNACK). Everything
//! else (listeners' addresses, protocols and TLS file paths, persistence,
//! `node_name`, `[http] bind`, `[sys]`, `[cluster]`) keeps its running value
//! until the broker restarts, and the reload says so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::broker::Broker;
use crate::config::{Config, ConfigError, Limits, ListenerConfig, LogFormat};
use crate::filewatch::{self, FileStamp};
use crate::transport::tls::TlsReloader;

mod plan;

pub use plan::{applies_at_run_time, plan, Changes};

/// Command-line settings that win over the file, at start and at every
/// reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `-v`: log every packet.
    pub verbose: bool,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--allow-anonymous` or `KUBEMQTT_ALLOW_ANONYMOUS=true`.
    pub allow_anonymous: bool,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if self.verbose {
            config.log.verbose = true;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if self.allow_anonymous {
            config.allow_anonymous = true;
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file (`-c`); `None`: the built-in defaults, or a configuration
    /// built in code, which a reload leaves as it is.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads and validates the configuration, with the overrides applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.path {
            Some(path) => Config::load(path)?,
            None => Config::local_default(),
        };
        self.overrides.apply(&mut config);
        Ok(config)
    }
}

/// Fills in the values the broker works out itself when the file leaves
/// them at 0 (the memory budget). Returns a line for the log when it did.
pub fn resolve_defaults(config: &mut Config) -> Option<String> {
    if config.limits.memory_budget_bytes != 0 {
        return None;
    }
    let (bytes, why) = crate::budget::default_limit();
    config.limits.memory_budget_bytes = bytes as u64;
    Some(format!(
        "Queued messages may take up to {} MiB ({why}).",
        bytes / (1024 * 1024)
    ))
}

/// What a listener's connections get that a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Broker-wide limits with the listener's overrides, for new connections.
    pub limits: Arc<Limits>,
    /// 0: no limit.
    pub max_connections: u32,
    /// 0: no limit.
    pub max_connection_rate: u32,
}

impl ListenerSettings {
    pub fn new(listener: &ListenerConfig, global: &Limits) -> ListenerSettings {
        ListenerSettings {
            limits: Arc::new(listener.limits.apply(global)),
            max_connections: listener.max_connections,
            max_connection_rate: listener.max_connection_rate,
        }
    }
}

/// A listener's settings, shared by its accept loop and the reloader.
pub type SharedListenerSettings = Arc<ArcSwap<ListenerSettings>>;

/// Re-reads the configuration and the files it names.
pub struct Reloader {
    source: ConfigSource,
    /// Each listener's settings, in the order of `listeners` in the file.
    listeners: Vec<SharedListenerSettings>,
    tls: Vec<(Arc<str>, Arc<TlsReloader>)>,
    /// The version of `broker.toml` last read (at start or by a reload).
    config_stamp: Mutex<Option<FileStamp>>,
    /// One reload at a time (SIGHUP and the admin API may race).
    busy: Mutex<()>,
}

/// What a forced reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// The configuration file could not be used (nothing of it applied).
    pub config_error: Option<String>,
    pub changes: Changes,
    /// The auth files could not be used (the previous ones stay).
    pub auth_error: Option<String>,
    /// Clients whose user was removed.
    pub disconnected: usize,
}

impl ReloadReport {
    pub fn ok(&self) -> bool {
        self.config_error.is_none() && self.auth_error.is_none()
    }
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        listeners: Vec<SharedListenerSettings>,
        tls: Vec<(Arc<str>, Arc<TlsReloader>)>,
    ) -> Reloader {
        let config_stamp = Mutex::new(source.path.as_deref().and_then(filewatch::stamp));
        Reloader {
            source,
            listeners,
            tls,
            config_stamp,
            busy: Mutex::new(()),
        }
    }

    /// Re-reads `broker.toml` (when the broker runs from one), then every
    /// auth and TLS file (SIGHUP, `POST /api/v1/reload`).
    pub fn reload(&self, broker: &Broker) -> ReloadReport {
        let _one_at_a_time = self.busy.lock();
        let mut report = ReloadReport::default();
        self.reload_config(broker, &mut report);
        self.reload_tls(broker);
        match broker.access.reload() {
            Ok(()) => {
                broker
                    .logger
                    .info("Reloaded the password, credentials and ACL files.");
                report.disconnected = broker.disconnect_removed_users();
            }
            Err(e) => {
                broker.logger.error(&format!(
                    "Refused the changed auth files, keeping the previous ones: {e}."
                ));
                report.auth_error = Some(e.to_string());
            }
        }
        report
    }

    /// Re-reads `broker.toml` (when the broker runs from one) and puts the
    /// run-time keys in force.
    fn reload_config(&self, broker: &Broker, report: &mut ReloadReport) {
        if let Some(path) = &self.source.path {
            *self.config_stamp.lock() = filewatch::stamp(path);
            match self.source.load() {
                Ok(wanted) => {
                    let changes = self.apply(broker, wanted, report);
                    report.changes = changes;
                }
                Err(e) => {
                    broker.logger.error(&format!(
                        "Refused the changed configuration, keeping the running one: {e}."
                    ));
                    report.config_error = Some(e.to_string());
                }
            }
            log_changes(broker, path, &report.changes);
        }
    }

    /// Re-reads `broker.toml` and the auth and TLS files that changed on
    /// disk.
    pub fn reload_changed_files(&self, broker: &Broker) {
        let _one_at_a_time = self.busy.lock();
        let config_changed = self
            .source
            .path
            .as_deref()
            .is_some_and(|path| filewatch::stamp(path) != *self.config_stamp.lock());
        if config_changed {
            self.reload_config(broker, &mut ReloadReport::default());
        }
        self.reload_tls(broker);
        match broker.access.reload_if_changed() {
            None => {}
            Some(Ok(())) => {
                broker
                    .logger
                    .info("Reloaded the password, credentials and ACL files.");
                broker.disconnect_removed_users();
            }
            Some(Err(e)) => broker.logger.error(&format!(
                "Refused the changed auth files, keeping the previous ones: {e}."
            )),
        }
    }

    /// Puts the run-time keys of `wanted` in force.
    fn apply(&self, broker: &Broker, mut wanted: Config, report: &mut ReloadReport) -> Changes {
        let running = broker.config().as_ref().clone();
        if wanted.limits.memory_budget_bytes == 0 {
            // Worked out at start; a file that leaves it at 0 keeps that.
            wanted.limits.memory_budget_bytes = running.limits.memory_budget_bytes;
        }
        let (mut next, mut changes) = plan(&running, &wanted);
        if next.auth != running.auth {
            if let Err(e) = broker.access.reconfigure(&next.auth) {
                broker.logger.error(&format!(
                    "Refused the new [auth] settings, keeping the previous ones: {e}."
                ));
                report.auth_error = Some(e.to_string());
                next.auth = running.auth.clone();
                changes.applied.retain(|key| !key.starts_with("auth."));
            }
        }
        if changes.applied.is_empty() {
            return changes;
        }
        broker.logger.apply(&next.log);
        for (listener, settings) in next.listeners.iter().zip(&self.listeners) {
            settings.store(Arc::new(ListenerSettings::new(listener, &next.limits)));
        }
        broker.replace_config(next);
        changes
    }

    fn reload_tls(&self, broker: &Broker) {
        for (name, reloader) in &self.tls {
            match reloader.reload_if_changed() {
                None => {}
                Some(Ok(())) => broker
                    .logger
                    .info(&format!("Reloaded the TLS certificate of listener {name}.")),
                Some(Err(e)) => broker.logger.error(&format!(
                    "Refused the new TLS certificate of listener {name}, keeping the old one: {e}."
                )),
            }
        }
    }
}

fn log_changes(broker: &Broker, path: &std::path::Path, changes: &Changes) {
    let file = path.display();
    if !changes.applied.is_empty() {
        broker.logger.info(&format!(
            "Reloaded {file}: changed {}.",
            changes.applied.join(", ")
        ));
    }
    if !changes.need_restart.is_empty() {
        broker.logger.warning(&format!(
            "Changes in {file} that need a restart, not applied: {}.",
            changes.need_restart.join(", ")
        ));
    }
}

/// Re-reads `broker.toml` and the auth and TLS files when they change on
/// disk (every `auth.reload_interval_secs`), and everything when asked (SIGHUP, the
/// admin API's reload goes through [`Reloader::reload`] directly).
pub async fn run(broker: Arc<Broker>, reloader: Arc<Reloader>) {
    loop {
        let period = Duration::from_secs(broker.config().auth.reload_interval_secs.max(1));
        let forced = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            _ = broker.reload_requested.notified() => true,
        };
        if forced {
            reloader.reload(&broker);
        } else {
            reloader.reload_changed_files(&broker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_file() {
        let mut config = Config::from_toml_str("", "broker.toml").unwrap();
        Overrides {
            verbose: true,
            log_format: Some(LogFormat::Json),
            allow_anonymous: true,
        }
        .apply(&mut config);
        assert!(config.log.verbose && config.allow_anonymous);
        assert_eq!(config.log.format, LogFormat::Json);
    }
}
