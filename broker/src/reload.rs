//! Reloading at run time, without dropping a connection.
//!
//! On SIGHUP and `POST /api/v1/reload` the broker re-reads `broker.toml`,
//! puts in force what can change while it runs, and names the keys that
//! need a restart; then it re-reads the auth and TLS files. Between those,
//! the auth and TLS files are also re-read when they change on disk.
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
use serde_json::Value;

use crate::broker::Broker;
use crate::config::{Config, ConfigError, Limits, ListenerConfig, LogFormat};
use crate::transport::tls::TlsReloader;

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

/// The keys a reload found changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Now in force.
    pub applied: Vec<String>,
    /// Changed in the file, still running with the old value.
    pub need_restart: Vec<String>,
}

/// Whether a change of `key` (a dotted path such as `limits.max_inflight`
/// or `listeners[1].limits.publish_rate`) can be put in force while the
/// broker runs.
pub fn applies_at_run_time(key: &str) -> bool {
    const RUN_TIME: &[&str] = &[
        "allow_anonymous",
        "presence_events",
        "limits",
        "log",
        "auth",
        "http.admin_token_file",
        "drain",
        "listeners[].limits",
        "listeners[].max_connections",
        "listeners[].max_connection_rate",
    ];
    // Sized once at start: the budget of queued bytes.
    const RESTART: &[&str] = &["limits.memory_budget_bytes"];
    let key = without_indexes(key);
    let under = |prefix: &&str| {
        key == *prefix
            || key
                .strip_prefix(*prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    RUN_TIME.iter().any(under) && !RESTART.iter().any(under)
}

/// `listeners[1].bind` -> `listeners[].bind`.
fn without_indexes(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Compares the running configuration with the one just read: returns the
/// configuration to put in force (`wanted`, with every key that needs a
/// restart kept at its running value) and the keys that changed.
pub fn plan(running: &Config, wanted: &Config) -> (Config, Changes) {
    let (Ok(old), Ok(new)) = (serde_json::to_value(running), serde_json::to_value(wanted)) else {
        // Every configuration serializes (the operator writes this file).
        return (running.clone(), Changes::default());
    };
    let mut changed = Vec::new();
    diff(String::new(), Some(&old), Some(&new), &mut changed);
    let mut merged = new;
    let mut changes = Changes::default();
    for key in changed {
        if applies_at_run_time(&key) {
            changes.applied.push(key);
        } else {
            restore(&mut merged, &old, &key);
            changes.need_restart.push(key);
        }
    }
    match serde_json::from_value(merged) {
        Ok(config) => (config, changes),
        Err(_) => {
            // Cannot happen: the value was made of two valid configurations.
            let need_restart = [changes.applied, changes.need_restart].concat();
            (
                running.clone(),
                Changes {
                    applied: Vec::new(),
                    need_restart,
                },
            )
        }
    }
}

/// The dotted paths of every leaf that differs. Arrays of different
/// lengths (a listener added or removed) count as one change of the array.
fn diff(path: String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                diff(join(key), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a != b => out.push(path),
        _ => {}
    }
}

/// Sets `key` in `target` to its value in `source` (or removes it when
/// `source` has none).
fn restore(target: &mut Value, source: &Value, key: &str) {
    let steps = split_key(key);
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut to = target;
    let mut from = Some(source);
    for step in parents {
        from = from.and_then(|v| step.get(v));
        let Some(next) = step.get_mut(to) else { return };
        to = next;
    }
    let value = from.and_then(|v| last.get(v)).cloned();
    match (last, to, value) {
        (Step::Key(k), Value::Object(map), Some(v)) => {
            map.insert(k.clone(), v);
        }
        (Step::Key(k), Value::Object(map), None) => {
            map.remove(k);
        }
        (Step::Index(i), Value::Array(items), Some(v)) if *i < items.len() => items[*i] = v,
        _ => {}
    }
}

enum Step {
    Key(String),
    Index(usize),
}

impl Step {
    fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        match self {
            Step::Key(k) => value.get(k),
            Step::Index(i) => value.get(i),
        }
    }

    fn get_mut<'a>(&self, value: &'a mut Value) -> Option<&'a mut Value> {
        match self {
            Step::Key(k) => value.get_mut(k),
            Step::Index(i) => value.get_mut(i),
        }
    }
}

/// `listeners[1].limits.x` -> Key(listeners), Index(1), Key(limits), Key(x).
fn split_key(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next() {
            steps.push(Step::Key(name.to_owned()));
        }
        for index in pieces {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(i));
            }
        }
    }
    steps
}

/// Re-reads the configuration and the files it names.
pub struct Reloader {
    source: ConfigSource,
    /// Each listener's settings, in the order of `listeners` in the file.
    listeners: Vec<SharedListenerSettings>,
    tls: Vec<(Arc<str>, Arc<TlsReloader>)>,
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
        Reloader {
            source,
            listeners,
            tls,
            busy: Mutex::new(()),
        }
    }

    /// Re-reads `broker.toml` (when the broker runs from one), then every
    /// auth and TLS file (SIGHUP, `POST /api/v1/reload`).
    pub fn reload(&self, broker: &Broker) -> ReloadReport {
        let _one_at_a_time = self.busy.lock();
        let mut report = ReloadReport::default();
        if let Some(path) = &self.source.path {
            match self.source.load() {
                Ok(wanted) => {
                    let changes = self.apply(broker, wanted, &mut report);
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

    /// Re-reads the auth and TLS files that changed on disk.
    pub fn reload_changed_files(&self, broker: &Broker) {
        let _one_at_a_time = self.busy.lock();
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

/// Re-reads the auth and TLS files when they change on disk (every
/// `auth.reload_interval_secs`), and everything when asked (SIGHUP, the
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
    use crate::config::LogLevel;

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, "broker.toml").unwrap()
    }

    const BASE: &str = r#"
node_name = "n1"
[[listeners]]
bind = "127.0.0.1:1883"
[[listeners]]
name = "edge"
bind = "127.0.0.1:1884"
[listeners.limits]
publish_rate = 10
[limits]
max_inflight = 10
memory_budget_bytes = 1000000
"#;

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = parse(BASE);
        let (next, changes) = plan(&running, &parse(BASE));
        assert_eq!(next, running);
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn run_time_keys_apply_and_the_others_keep_their_running_value() {
        let running = parse(BASE);
        let wanted = parse(
            &BASE
                .replace(
                    "node_name = \"n1\"",
                    "node_name = \"n2\"\nallow_anonymous = true",
                )
                .replace("max_inflight = 10", "max_inflight = 5")
                .replace("publish_rate = 10", "publish_rate = 20")
                .replace("127.0.0.1:1884", "127.0.0.1:1885")
                .replace(
                    "memory_budget_bytes = 1000000",
                    "memory_budget_bytes = 2000000\n[log]\nlevel = \"debug\"",
                ),
        );
        let (next, changes) = plan(&running, &wanted);
        assert_eq!(
            changes.applied,
            [
                "allow_anonymous",
                "limits.max_inflight",
                "listeners[1].limits.publish_rate",
                "log.level",
            ]
        );
        assert_eq!(
            changes.need_restart,
            [
                "limits.memory_budget_bytes",
                "listeners[1].bind",
                "node_name"
            ]
        );
        assert!(next.allow_anonymous);
        assert_eq!(next.limits.max_inflight, 5);
        assert_eq!(next.log.level, LogLevel::Debug);
        assert_eq!(next.listeners[1].limits.publish_rate, Some(20));
        assert_eq!(next.node_name, "n1");
        assert_eq!(next.listeners[1].bind, running.listeners[1].bind);
        assert_eq!(next.limits.memory_budget_bytes, 1_000_000);
    }

    #[test]
    fn keys_absent_from_one_side_are_restored_or_removed() {
        let running = parse(&format!("{BASE}[http]\nbind = \"127.0.0.1:8080\"\n"));
        let wanted = parse(&format!(
            "{BASE}[http]\nadmin_token_file = \"/run/token\"\n"
        ));
        let (next, changes) = plan(&running, &wanted);
        assert_eq!(changes.applied, ["http.admin_token_file"]);
        assert_eq!(changes.need_restart, ["http.bind"]);
        assert_eq!(next.http.bind, running.http.bind);
        assert_eq!(
            next.http.admin_token_file.as_deref(),
            Some(std::path::Path::new("/run/token"))
        );
    }

    #[test]
    fn adding_a_listener_needs_a_restart_and_keeps_the_running_ones() {
        let running = parse(BASE);
        let wanted = parse(&format!("{BASE}[[listeners]]\nbind = \"127.0.0.1:1886\"\n"));
        let (next, changes) = plan(&running, &wanted);
        assert_eq!(changes.need_restart, ["listeners"]);
        assert_eq!(next.listeners, running.listeners);
    }

    #[test]
    fn run_time_keys_are_recognised_under_any_listener_index() {
        for key in [
            "limits.publish_rate",
            "log.format",
            "auth.acl_file",
            "drain.deadline_secs",
            "listeners[3].limits.max_packet_size",
            "listeners[0].max_connections",
        ] {
            assert!(applies_at_run_time(key), "{key}");
        }
        for key in [
            "limits.memory_budget_bytes",
            "listeners[0].bind",
            "listeners[0].tls.cert_file",
            "persistence.dir",
            "http.bind",
            "sys.interval_secs",
            "node_name",
            "logx",
            "listeners",
        ] {
            assert!(!applies_at_run_time(key), "{key}");
        }
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut config = parse(BASE);
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
