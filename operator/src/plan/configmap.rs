//! The ConfigMap `<name>-config`: the broker's configuration file and the
//! CA bundle clients trust.
//!
//! The file is built as a [`kubemqtt_broker::config::Config`] value,
//! serialized with `toml`, merged with `spec.config`, and parsed back with
//! the broker's own [`Config::from_toml_str`]: the operator never writes a
//! file the broker would refuse.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::ConfigMap;
use kubemqtt_broker::config::{
    self as broker, CertUsername, ClientAuth, Config, ConfigError, ListenerConfig,
    ListenerProtocol, TlsConfig,
};

use super::secrets::{ADMIN_TOKEN_KEY, CREDENTIALS_KEY};
use super::tls::{TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY};
use super::{
    Context, Listener, ListenerKind, PlanError, AUTH_DIR, CONFIG_DIR, DATA_DIR, HTTP_PORT, TLS_DIR,
};
use crate::api::{LogFormat, LogLevel, MqttBrokerSpec, QueueFullPolicy, RateLimitAction};

/// Key of the broker's configuration file in the ConfigMap.
pub const CONFIG_FILE: &str = "broker.toml";
/// Key of the CA bundle (PEM) in the ConfigMap, for clients to trust.
pub const CA_BUNDLE_KEY: &str = "ca.crt";
/// The CA that signs `tls` users' client certificates (certificate only),
/// in the ConfigMap.
pub const CLIENTS_CA_KEY: &str = "clients-ca.crt";
/// The broker's drain deadline: it exits at the latest this long after
/// SIGTERM. The pods' termination grace period is a little longer.
pub const DRAIN_DEADLINE_SECONDS: u64 = 25;

/// Keys of the broker's configuration that the spec's own fields set, and
/// where to set them instead; `spec.config` may not contain them.
const OWNED_KEYS: &[(&str, &str)] = &[
    ("node_name", "each pod's name, set by the broker itself"),
    ("cluster", "spec.cluster"),
    ("allow_anonymous", "spec.auth.anonymous"),
    ("listeners", "spec.listeners"),
    ("limits", "spec.limits"),
    ("persistence.enabled", "spec.persistence.enabled"),
    ("persistence.dir", "the operator (the volume's mount path)"),
    ("log.level", "spec.logging.level"),
    ("log.format", "spec.logging.format"),
    ("auth.password_file", "the operator (the auth Secret)"),
    ("auth.credentials_file", "the operator (the auth Secret)"),
    ("auth.acl_file", "the operator (the auth Secret)"),
    ("auth.fleets_dir", "MqttDeviceFleet resources"),
    ("auth.fleets", "MqttDeviceFleet resources"),
    ("http", "the operator (the pods' probes use it)"),
    (
        "drain.deadline_secs",
        "the operator (matched to the pods' termination grace period)",
    ),
];

/// The broker transport of a listener.
pub fn broker_protocol(kind: ListenerKind) -> ListenerProtocol {
    match kind {
        ListenerKind::Mqtt => ListenerProtocol::Tcp,
        ListenerKind::Mqtts => ListenerProtocol::Tls,
        ListenerKind::Ws => ListenerProtocol::Ws,
        ListenerKind::Wss => ListenerProtocol::Wss,
    }
}

/// The broker's configuration file for `ctx`'s broker, checked by the
/// broker's parser.
pub(super) fn broker_config(ctx: &Context<'_>) -> Result<String, PlanError> {
    if ctx.listeners.is_empty() {
        return Err(PlanError::invalid(
            "listeners",
            "every listener is disabled: enable at least one",
        ));
    }
    let listeners = ctx.listeners.iter().flat_map(listener_configs).collect();
    let config = typed_config(ctx.spec, listeners, super::cluster::cluster_config(ctx))?;
    if ctx.spec.drain.rate_per_second.is_some()
        && ctx
            .spec
            .config
            .as_ref()
            .is_some_and(|config| json_path_exists(config, "drain.rate_per_sec"))
    {
        return Err(PlanError::BrokerConfig(
            "spec.config sets `drain.rate_per_sec`, which spec.drain.ratePerSecond sets too: keep one".to_owned(),
        ));
    }
    let mut table = toml::Table::try_from(&config)
        .map_err(|e| PlanError::BrokerConfig(format!("cannot serialize: {e}")))?;
    // Every pod shares this file; without `node_name` each one takes its own
    // host name, which is its pod name.
    table.remove("node_name");
    if let Some(extra) = &ctx.spec.config {
        merge_extra(&mut table, extra)?;
    }
    let text = toml::to_string(&table)
        .map_err(|e| PlanError::BrokerConfig(format!("cannot serialize: {e}")))?;
    Config::from_toml_str(&text, CONFIG_FILE).map_err(|e| PlanError::BrokerConfig(describe(e)))?;
    Ok(text)
}

/// The ConfigMap holding `broker_config` and, with generated certificates,
/// the CA bundle.
pub(super) fn config_map(
    ctx: &Context<'_>,
    broker_config: &str,
    ca_bundle: Option<&str>,
    clients_ca: &str,
) -> ConfigMap {
    let mut data = BTreeMap::from([
        (CONFIG_FILE.to_owned(), broker_config.to_owned()),
        (CLIENTS_CA_KEY.to_owned(), clients_ca.to_owned()),
    ]);
    if let Some(bundle) = ca_bundle {
        data.insert(CA_BUNDLE_KEY.to_owned(), bundle.to_owned());
    }
    ConfigMap {
        metadata: ctx.metadata(&ctx.names.config_map),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The broker listeners of an enabled listener: on every address, with
/// the mounted certificate for the TLS ones; and a second one on its PROXY
/// protocol port when the external path sends PROXY headers.
fn listener_configs(listener: &Listener) -> Vec<ListenerConfig> {
    let mut configs = vec![listener_config(
        listener,
        listener.kind.name(),
        listener.port,
        false,
    )];
    if let Some(proxy_port) = listener.proxy_port {
        configs.push(listener_config(
            listener,
            listener.kind.proxy_port_name(),
            proxy_port,
            true,
        ));
    }
    configs
}

fn listener_config(
    listener: &Listener,
    name: &str,
    port: i32,
    proxy_protocol: bool,
) -> ListenerConfig {
    let protocol = broker_protocol(listener.kind);
    // `resolve_listeners` only lets through ports 1..=65535.
    let port = u16::try_from(port).unwrap_or_default();
    ListenerConfig {
        name: Some(name.to_owned()),
        protocol,
        proxy_protocol,
        tls: protocol.is_tls().then(|| {
            // Client certificates (`tls` users) on mqtts only: on wss a
            // certificate request can make browsers ask the user to pick
            // one.
            let client_certificates = listener.kind == ListenerKind::Mqtts;
            TlsConfig {
                cert_file: format!("{TLS_DIR}/{TLS_CERT_KEY}").into(),
                key_file: format!("{TLS_DIR}/{TLS_PRIVATE_KEY_KEY}").into(),
                ca_file: client_certificates
                    .then(|| format!("{CONFIG_DIR}/{CLIENTS_CA_KEY}").into()),
                client_auth: if client_certificates {
                    ClientAuth::Optional
                } else {
                    ClientAuth::None
                },
                username_from: if client_certificates {
                    CertUsername::Cn
                } else {
                    CertUsername::None
                },
            }
        }),
        ..ListenerConfig::tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }
}

/// The configuration the spec's typed fields describe, on top of the
/// broker's defaults for a configuration file. (Every field is spelled out
/// so that a new broker setting fails to compile here until it is
/// considered.) `node_name` is left to the caller to remove.
fn typed_config(
    spec: &MqttBrokerSpec,
    listeners: Vec<ListenerConfig>,
    cluster: Option<kubemqtt_broker::cluster::ClusterConfig>,
) -> Result<Config, PlanError> {
    // Naming each table makes the broker fill in its per-key defaults (a
    // table left out entirely takes its type's `Default`, which for `[auth]`
    // is not the same).
    let file_defaults = Config::from_toml_str(
        "[limits]\n[persistence]\n[log]\n[sys]\n[auth]\n[http]\n[drain]\n",
        CONFIG_FILE,
    )
    .map_err(|e| PlanError::BrokerConfig(describe(e)))?;
    let limits = &spec.limits;
    let defaults = file_defaults.limits;

    Ok(Config {
        node_name: file_defaults.node_name,
        allow_anonymous: spec.auth.anonymous,
        listeners,
        limits: broker::Limits {
            max_packet_size: limits.max_packet_size.unwrap_or(defaults.max_packet_size),
            receive_maximum: limits.receive_maximum.unwrap_or(defaults.receive_maximum),
            max_inflight: limits.max_inflight.unwrap_or(defaults.max_inflight),
            max_queued_messages: limits
                .max_queued_messages
                .unwrap_or(defaults.max_queued_messages),
            max_queued_bytes: limits.max_queued_bytes.unwrap_or(defaults.max_queued_bytes),
            queue_full: match limits.queue_full_policy {
                Some(QueueFullPolicy::DropNew) => broker::QueueFullPolicy::DropNew,
                Some(QueueFullPolicy::DropOldest) => broker::QueueFullPolicy::DropOldest,
                None => defaults.queue_full,
            },
            topic_alias_maximum: limits
                .topic_alias_maximum
                .unwrap_or(defaults.topic_alias_maximum),
            max_keepalive: limits
                .max_keep_alive_seconds
                .unwrap_or(defaults.max_keepalive),
            max_session_expiry: limits
                .max_session_expiry_seconds
                .unwrap_or(defaults.max_session_expiry),
            max_client_id_len: limits
                .max_client_id_length
                .unwrap_or(defaults.max_client_id_len),
            publish_rate: limits.publish_rate.unwrap_or(defaults.publish_rate),
            publish_rate_action: match limits.publish_rate_action {
                Some(RateLimitAction::Disconnect) => broker::RateLimitAction::Disconnect,
                Some(RateLimitAction::Throttle) => broker::RateLimitAction::Throttle,
                None => defaults.publish_rate_action,
            },
            max_subscriptions: limits
                .max_subscriptions
                .unwrap_or(defaults.max_subscriptions),
            // Back-pressure and the memory budget: the broker's defaults
            // (the budget follows the pod's memory limit).
            ..defaults
        },
        persistence: broker::PersistenceConfig {
            enabled: spec.persistence.enabled,
            dir: DATA_DIR.into(),
            ..file_defaults.persistence
        },
        log: broker::LogConfig {
            level: match spec.logging.level {
                LogLevel::Error => broker::LogLevel::Error,
                LogLevel::Warning => broker::LogLevel::Warning,
                LogLevel::Notice => broker::LogLevel::Notice,
                LogLevel::Info => broker::LogLevel::Info,
                LogLevel::Debug => broker::LogLevel::Debug,
            },
            format: match spec.logging.format {
                LogFormat::Text => broker::LogFormat::Text,
                LogFormat::Json => broker::LogFormat::Json,
            },
            ..file_defaults.log
        },
        sys: file_defaults.sys,
        auth: broker::AuthConfig {
            credentials_file: Some(format!("{AUTH_DIR}/{CREDENTIALS_KEY}").into()),
            // A `tls` user's certificate stops working when the user is
            // deleted.
            certificate_users: broker::CertificateUsers::Known,
            // The MqttDeviceFleets' Secret (see `plan::fleet`).
            fleets_dir: Some(super::fleet::FLEETS_DIR.into()),
            ..file_defaults.auth
        },
        http: broker::HttpConfig {
            bind: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, HTTP_PORT))),
            admin_token_file: Some(format!("{AUTH_DIR}/{ADMIN_TOKEN_KEY}").into()),
        },
        drain: broker::DrainConfig {
            deadline_secs: super::statefulset::drain_deadline_seconds(spec),
            rate_per_sec: spec
                .drain
                .rate_per_second
                .unwrap_or(file_defaults.drain.rate_per_sec),
        },
        presence_events: file_defaults.presence_events,
        cluster,
    })
}

/// Merges `spec.config` into `table`, refusing the keys the spec owns.
fn merge_extra(
    table: &mut toml::Table,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), PlanError> {
    for (key, owner) in OWNED_KEYS {
        if json_path_exists(extra, key) {
            return Err(PlanError::BrokerConfig(format!(
                "spec.config sets `{key}`, which is set by {owner}"
            )));
        }
    }
    let extra = toml::Table::try_from(extra).map_err(|e| {
        PlanError::BrokerConfig(format!(
            "spec.config cannot be written as TOML (null values?): {e}"
        ))
    })?;
    deep_merge(table, extra);
    Ok(())
}

fn json_path_exists(object: &serde_json::Map<String, serde_json::Value>, path: &str) -> bool {
    let mut current = object;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            None => return false,
            Some(_) if parts.peek().is_none() => return true,
            Some(serde_json::Value::Object(inner)) => current = inner,
            Some(_) => return false,
        }
    }
    false
}

/// Merges `extra` into `base`: tables merge key by key, anything else
/// replaces what was there.
fn deep_merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => {
                deep_merge(inner, value)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The broker's error without the generated file's line number, which
/// means nothing to the user.
fn describe(error: ConfigError) -> String {
    match error {
        ConfigError::Invalid {
            key: Some(key),
            message,
            ..
        } => format!("key `{key}`: {message}"),
        ConfigError::Invalid { message, .. } => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{broker, broker_yaml, plan_fresh};
    use crate::plan::{plan, Observed, Settings};

    fn secret_text(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    fn config_of(spec_yaml: &str) -> (String, Config) {
        let plan = plan_fresh(&broker_yaml(spec_yaml));
        let text = plan.config_map.data.unwrap()[CONFIG_FILE].clone();
        let config = Config::from_toml_str(&text, "test").unwrap();
        (text, config)
    }

    fn config_error(spec_yaml: &str) -> String {
        plan(
            &broker_yaml(spec_yaml),
            &Observed::default(),
            &Settings::default(),
            crate::plan::testing::now(),
        )
        .unwrap_err()
        .to_string()
    }

    /// The server certificate files; no client certificates (wss).
    fn tls_files() -> Option<TlsConfig> {
        Some(TlsConfig {
            cert_file: "/etc/kubemqtt/tls/tls.crt".into(),
            key_file: "/etc/kubemqtt/tls/tls.key".into(),
            ca_file: None,
            client_auth: ClientAuth::None,
            username_from: CertUsername::None,
        })
    }

    /// The server certificate files and optional client certificates of
    /// `tls` users, named by their common name (mqtts).
    fn tls_files_with_clients() -> Option<TlsConfig> {
        Some(TlsConfig {
            ca_file: Some("/etc/kubemqtt/config/clients-ca.crt".into()),
            client_auth: ClientAuth::Optional,
            username_from: CertUsername::Cn,
            ..tls_files()?
        })
    }

    #[test]
    fn defaults_give_mqtt_and_mqtts_and_the_brokers_defaults() {
        let (text, config) = config_of("{}");
        assert!(!text.contains("node_name"), "{text}");
        assert!(!config.allow_anonymous);
        assert_eq!(
            config.listeners,
            [
                ListenerConfig {
                    name: Some("mqtt".into()),
                    ..ListenerConfig::tcp("0.0.0.0:1883".parse().unwrap())
                },
                ListenerConfig {
                    name: Some("mqtts".into()),
                    protocol: ListenerProtocol::Tls,
                    tls: tls_files_with_clients(),
                    ..ListenerConfig::tcp("0.0.0.0:8883".parse().unwrap())
                }
            ]
        );
        assert_eq!(config.limits, broker::Limits::default());
        assert_eq!(
            config.persistence,
            broker::PersistenceConfig {
                dir: DATA_DIR.into(),
                ..broker::PersistenceConfig::default()
            }
        );
        assert!(!config.persistence.enabled);
        assert_eq!(config.log, broker::LogConfig::default());
        assert_eq!(config.sys, broker::SysConfig::default());
        assert_eq!(
            config.auth.credentials_file.as_deref(),
            Some(std::path::Path::new("/etc/kubemqtt/auth/credentials.toml"))
        );
        assert!(config.auth.password_file.is_none());
        assert!(config.auth.acl_file.is_none());
        assert_eq!(
            config.auth.certificate_users,
            broker::CertificateUsers::Known,
            "a deleted tls user's certificate must stop working"
        );
        // The documented default, not 0.
        assert_eq!(config.auth.reload_interval_secs, 2);
        assert_eq!(
            config.http,
            broker::HttpConfig {
                bind: Some("0.0.0.0:8080".parse().unwrap()),
                admin_token_file: Some("/etc/kubemqtt/auth/admin-token".into()),
            }
        );
        assert_eq!(config.drain.deadline_secs, DRAIN_DEADLINE_SECONDS);
        assert_eq!(
            config.drain.rate_per_sec,
            broker::DrainConfig::default().rate_per_sec
        );
        assert!(config.presence_events);
    }

    #[test]
    fn every_typed_field_reaches_the_file() {
        let (_, config) = config_of(
            r#"
auth: {anonymous: true}
listeners:
  mqtt: {port: 11883, external: true, proxyProtocol: true}
  mqtts: {enabled: false}
  ws: {enabled: true}
  wss: {enabled: true, port: 9443, proxyProtocol: true}
persistence: {enabled: true, size: 5Gi}
logging: {level: debug, format: json}
limits:
  maxPacketSize: 4096
  receiveMaximum: 10
  maxInflight: 3
  maxQueuedMessages: 7
  maxQueuedBytes: 9999
  queueFullPolicy: DropOldest
  topicAliasMaximum: 0
  maxKeepAliveSeconds: 120
  maxSessionExpirySeconds: 3600
  maxClientIdLength: 64
  publishRate: 50
  publishRateAction: Throttle
  maxSubscriptions: 100
"#,
        );
        assert!(config.allow_anonymous);
        let listeners: Vec<(&str, ListenerProtocol, u16, bool, bool)> = config
            .listeners
            .iter()
            .map(|l| {
                (
                    l.name.as_deref().unwrap(),
                    l.protocol,
                    l.bind.port(),
                    l.proxy_protocol,
                    l.tls == tls_files() || l.tls == tls_files_with_clients(),
                )
            })
            .collect();
        // A PROXY protocol listener twice: for the external path, and
        // without PROXY for the cluster.
        assert_eq!(
            listeners,
            [
                ("mqtt", ListenerProtocol::Tcp, 11883, false, false),
                ("mqtt-proxy", ListenerProtocol::Tcp, 21883, true, false),
                ("ws", ListenerProtocol::Ws, 8083, false, false),
                ("wss", ListenerProtocol::Wss, 9443, false, true),
                ("wss-proxy", ListenerProtocol::Wss, 19443, true, true),
            ]
        );
        assert!(config.persistence.enabled);
        assert_eq!(config.persistence.dir, std::path::Path::new(DATA_DIR));
        assert_eq!(config.log.level, broker::LogLevel::Debug);
        assert_eq!(config.log.format, broker::LogFormat::Json);
        assert_eq!(
            config.limits,
            broker::Limits {
                max_packet_size: 4096,
                receive_maximum: 10,
                max_inflight: 3,
                max_queued_messages: 7,
                max_queued_bytes: 9999,
                queue_full: broker::QueueFullPolicy::DropOldest,
                topic_alias_maximum: 0,
                max_keepalive: 120,
                max_session_expiry: 3600,
                max_client_id_len: 64,
                publish_rate: 50,
                publish_rate_action: broker::RateLimitAction::Throttle,
                max_subscriptions: 100,
                ..broker::Limits::default()
            }
        );
    }

    #[test]
    fn spec_config_adds_the_remaining_settings() {
        let (_, config) = config_of(
            "config: {sys: {interval_secs: 0}, persistence: {fsync: always}, log: {timestamps: false}, \
             drain: {rate_per_sec: 10}, auth: {reload_interval_secs: 30}, presence_events: false}\n",
        );
        assert_eq!(config.sys.interval_secs, 0);
        assert_eq!(config.drain.rate_per_sec, 10);
        assert_eq!(config.drain.deadline_secs, DRAIN_DEADLINE_SECONDS);
        assert_eq!(config.auth.reload_interval_secs, 30);
        assert!(config.auth.credentials_file.is_some());
        assert!(!config.presence_events);
        assert_eq!(config.persistence.fsync, broker::FsyncMode::Always);
        assert!(!config.log.timestamps);
        // The typed settings of the same sections are kept.
        assert_eq!(config.persistence.dir, std::path::Path::new(DATA_DIR));
        assert_eq!(config.log.level, broker::LogLevel::Info);
    }

    #[test]
    fn spec_config_may_not_set_what_fields_own() {
        for (yaml, key, owner) in [
            ("config: {node_name: x}", "node_name", "each pod's name"),
            (
                "config: {allow_anonymous: true}",
                "allow_anonymous",
                "spec.auth.anonymous",
            ),
            ("config: {listeners: []}", "listeners", "spec.listeners"),
            (
                "config: {limits: {max_inflight: 5}}",
                "limits",
                "spec.limits",
            ),
            (
                "config: {persistence: {enabled: true}}",
                "persistence.enabled",
                "spec.persistence.enabled",
            ),
            (
                "config: {persistence: {dir: /tmp}}",
                "persistence.dir",
                "the operator",
            ),
            (
                "config: {log: {level: debug}}",
                "log.level",
                "spec.logging.level",
            ),
            (
                "config: {log: {format: json}}",
                "log.format",
                "spec.logging.format",
            ),
            (
                "config: {auth: {password_file: /x}}",
                "auth.password_file",
                "the operator",
            ),
            (
                "config: {auth: {credentials_file: /x}}",
                "auth.credentials_file",
                "the operator",
            ),
            (
                "config: {auth: {acl_file: /x}}",
                "auth.acl_file",
                "the operator",
            ),
            (
                "config: {http: {bind: '0.0.0.0:9'}}",
                "http",
                "the operator",
            ),
            (
                "config: {drain: {deadline_secs: 5}}",
                "drain.deadline_secs",
                "the operator",
            ),
        ] {
            let error = config_error(yaml);
            assert!(
                error.starts_with(&format!(
                    "invalid broker configuration: spec.config sets `{key}`, which is set by {owner}"
                )),
                "{yaml}: {error}"
            );
        }
    }

    #[test]
    fn spec_config_is_checked_by_the_brokers_parser() {
        assert_eq!(
            config_error("config: {sys: {interval: 5}}"),
            "invalid broker configuration: key `sys.interval`: unknown field `interval`, expected `interval_secs`"
        );
        let error = config_error("config: {colour: red}");
        assert!(
            error.starts_with(
                "invalid broker configuration: key `colour`: unknown field `colour`, expected one of `node_name`"
            ),
            "{error}"
        );
        let error = config_error("config: {sys: {interval_secs: soon}}");
        assert!(
            error
                .starts_with("invalid broker configuration: key `sys.interval_secs`: invalid type"),
            "{error}"
        );
        let error = config_error("config: {persistence: {fsync_interval_ms: 0}}");
        assert_eq!(
            error,
            "invalid broker configuration: key `persistence.fsync_interval_ms`: must be above 0 when fsync = \"interval\""
        );
        let error = config_error("config: {sys: {interval_secs: null}}");
        assert!(
            error
                .starts_with("invalid broker configuration: spec.config cannot be written as TOML"),
            "{error}"
        );
    }

    #[test]
    fn a_broker_without_listeners_is_rejected() {
        assert_eq!(
            config_error("listeners: {mqtt: {enabled: false}, mqtts: {enabled: false}}"),
            "spec.listeners: every listener is disabled: enable at least one"
        );
    }

    #[test]
    fn config_map_holds_the_file_and_the_ca_bundle() {
        let plan = plan_fresh(&broker(Default::default()));
        let config_map = &plan.config_map;
        assert_eq!(config_map.metadata.name.as_deref(), Some("mq-config"));
        let data = config_map.data.as_ref().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [CONFIG_FILE, CA_BUNDLE_KEY, CLIENTS_CA_KEY]
        );
        assert_eq!(
            data[CLIENTS_CA_KEY],
            secret_text(&plan.clients_ca_secret, "ca.crt"),
            "the clients CA certificate, not its key"
        );
        assert!(data[CA_BUNDLE_KEY].starts_with("-----BEGIN CERTIFICATE-----"));

        let user_tls = plan_fresh(&broker_yaml("tls: {secretName: my-cert}"));
        let data = user_tls.config_map.data.unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [CONFIG_FILE, CLIENTS_CA_KEY]
        );
    }

    #[test]
    fn json_paths() {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"a": {"b": 1}, "c": 2}"#).unwrap();
        assert!(json_path_exists(&object, "a"));
        assert!(json_path_exists(&object, "a.b"));
        assert!(json_path_exists(&object, "c"));
        assert!(!json_path_exists(&object, "a.x"));
        assert!(!json_path_exists(&object, "c.d"));
        assert!(!json_path_exists(&object, "z"));
    }
}
