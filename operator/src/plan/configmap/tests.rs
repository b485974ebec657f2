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
        error.starts_with("invalid broker configuration: key `sys.interval_secs`: invalid type"),
        "{error}"
    );
    let error = config_error("config: {persistence: {fsync_interval_ms: 0}}");
    assert_eq!(
        error,
        "invalid broker configuration: key `persistence.fsync_interval_ms`: must be above 0 when fsync = \"interval\""
    );
    let error = config_error("config: {sys: {interval_secs: null}}");
    assert!(
        error.starts_with("invalid broker configuration: spec.config cannot be written as TOML"),
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
