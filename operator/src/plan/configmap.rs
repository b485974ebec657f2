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
mod tests;
