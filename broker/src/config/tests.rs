use std::path::PathBuf;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "broker.toml")
}

/// Parses `text`, expecting an error, and returns (key, line, display).
fn parse_err(text: &str) -> (Option<String>, Option<usize>, String) {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => (
            error.key().map(str::to_owned),
            error.line(),
            error.to_string(),
        ),
    }
}

#[test]
fn empty_file_gives_file_defaults() {
    let config = parse("").unwrap();
    assert!(!config.node_name.is_empty());
    assert!(!config.allow_anonymous);
    assert_eq!(config.listeners, default_listeners());
    assert_eq!(config.listeners[0].bind, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(config.listeners[0].display_name(), "tcp-1883");
    let limits = &config.limits;
    assert_eq!(limits.max_packet_size, 1_048_576);
    assert_eq!(limits.receive_maximum, 100);
    assert_eq!(limits.max_inflight, 32);
    assert_eq!(limits.max_queued_messages, 1000);
    assert_eq!(limits.max_queued_bytes, 67_108_864);
    assert_eq!(limits.queue_full, QueueFullPolicy::DropNew);
    assert_eq!(limits.topic_alias_maximum, 64);
    assert_eq!(limits.max_keepalive, 65535);
    assert_eq!(limits.max_session_expiry, 4_294_967_295);
    assert_eq!(limits.max_client_id_len, 65535);
    assert_eq!(
        config.persistence,
        PersistenceConfig {
            enabled: false,
            dir: PathBuf::from("/var/lib/kubemqtt"),
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 1000,
            compact_after_bytes: 67_108_864,
        }
    );
    assert_eq!(
        config.log,
        LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
            verbose: false,
            timestamps: true,
        }
    );
    assert_eq!(config.sys.interval_secs, 10);
}

#[test]
fn partial_sections_keep_the_other_defaults() {
    let config = parse("[limits]\nmax_inflight = 5\n[log]\nformat = \"json\"\n").unwrap();
    assert_eq!(config.limits.max_inflight, 5);
    assert_eq!(config.limits.receive_maximum, 100);
    assert_eq!(config.log.format, LogFormat::Json);
    assert!(config.log.timestamps);
}

#[test]
fn local_default_is_local_only_and_anonymous() {
    let config = Config::local_default();
    assert!(config.allow_anonymous);
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].bind, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(config.listeners[0].protocol, ListenerProtocol::Tcp);
    assert!(!config.persistence.enabled);
    assert_eq!(config.limits, Limits::default());
    config.validate().unwrap();
}

/// The example in docs/broker-design.md and docs/configuration.md.
const EXAMPLE: &str = r#"
node_name = "kubemqtt-0"
allow_anonymous = false

[[listeners]]
name = "mqtt"
bind = "0.0.0.0:1883"
protocol = "tcp"

[limits]
max_packet_size = 1048576
receive_maximum = 100
max_inflight = 32
max_queued_messages = 1000
max_queued_bytes = 67108864
queue_full = "drop_new"
topic_alias_maximum = 64
max_keepalive = 65535
max_session_expiry = 4294967295
max_client_id_len = 65535

[persistence]
enabled = false
dir = "/var/lib/kubemqtt"
fsync = "interval"
fsync_interval_ms = 1000
compact_after_bytes = 67108864

[log]
level = "info"
format = "text"
verbose = false
timestamps = true

[sys]
interval_secs = 10
"#;

#[test]
fn documented_example_parses() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.node_name, "kubemqtt-0");
    assert_eq!(config.listeners[0].name.as_deref(), Some("mqtt"));
    assert_eq!(config.listeners[0].display_name(), "mqtt");
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.persistence, PersistenceConfig::default());
    assert_eq!(config.log, LogConfig::default());
    assert_eq!(config.sys, SysConfig::default());
}

#[test]
fn serialize_round_trips() {
    let config = Config {
        node_name: "node-7".to_owned(),
        allow_anonymous: true,
        listeners: vec![
            ListenerConfig {
                name: Some("inside".to_owned()),
                ..ListenerConfig::tcp("10.0.0.1:1883".parse().unwrap())
            },
            ListenerConfig {
                protocol: ListenerProtocol::Wss,
                path: "/ws".to_owned(),
                max_connections: 100,
                max_connection_rate: 10,
                proxy_protocol: true,
                tls: Some(TlsConfig {
                    cert_file: PathBuf::from("/tls/tls.crt"),
                    key_file: PathBuf::from("/tls/tls.key"),
                    ca_file: Some(PathBuf::from("/tls/ca.crt")),
                    client_auth: ClientAuth::Optional,
                    username_from: CertUsername::Cn,
                }),
                limits: ListenerLimits {
                    max_packet_size: Some(1024),
                    publish_rate: Some(5),
                    slow_subscriber_timeout_ms: Some(1000),
                    slow_subscriber_action: Some(SlowSubscriberAction::Disconnect),
                    ..ListenerLimits::default()
                },
                ..ListenerConfig::tcp("[::]:1884".parse().unwrap())
            },
        ],
        limits: Limits {
            max_packet_size: 4096,
            receive_maximum: 10,
            max_inflight: 3,
            max_queued_messages: 7,
            max_queued_bytes: 9999,
            queue_full: QueueFullPolicy::DropOldest,
            topic_alias_maximum: 0,
            max_keepalive: 120,
            max_session_expiry: 3600,
            max_client_id_len: 64,
            publish_rate: 100,
            publish_rate_action: RateLimitAction::Throttle,
            max_subscriptions: 20,
            queue_high_water: 50,
            queue_high_water_bytes: 4096,
            slow_subscriber_timeout_ms: 2500,
            slow_subscriber_action: SlowSubscriberAction::Drop,
            memory_budget_bytes: 1 << 30,
        },
        persistence: PersistenceConfig {
            enabled: true,
            dir: PathBuf::from("/data"),
            fsync: FsyncMode::Always,
            fsync_interval_ms: 5,
            compact_after_bytes: 1 << 20,
        },
        log: LogConfig {
            level: LogLevel::Debug,
            format: LogFormat::Json,
            verbose: true,
            timestamps: false,
        },
        sys: SysConfig { interval_secs: 0 },
        auth: AuthConfig {
            password_file: Some(PathBuf::from("/auth/passwd")),
            credentials_file: Some(PathBuf::from("/auth/credentials.toml")),
            acl_file: Some(PathBuf::from("/auth/acl")),
            reload_interval_secs: 5,
            certificate_users: CertificateUsers::Known,
            fleets: Vec::new(),
            fleets_dir: None,
        },
        http: HttpConfig {
            bind: Some("0.0.0.0:8080".parse().unwrap()),
            admin_token_file: Some(PathBuf::from("/auth/admin-token")),
        },
        drain: DrainConfig {
            rate_per_sec: 50,
            deadline_secs: 60,
        },
        presence_events: false,
        // With local persistence on, no [cluster] (see cluster::config).
        cluster: None,
    };
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("queue_full = \"drop_oldest\""), "{text}");
    assert_eq!(parse(&text).unwrap(), config, "{text}");

    let local = Config::local_default();
    assert_eq!(parse(&toml::to_string(&local).unwrap()).unwrap(), local);
}

#[test]
fn syntax_error_names_file_and_line() {
    let (key, line, text) = parse_err("node_name = \"a\"\n\n[limits\nmax_inflight = 3\n");
    assert_eq!(key, None);
    assert_eq!(line, Some(3));
    assert_eq!(
        text,
        "broker.toml:3: invalid table header; expected `.`, `]`"
    );
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let text = "node_name = \"a\"\n\n[[listeners]]\nbind = \"0.0.0.0:1883\"\n\n[limits]\nmax_packet_size = \"big\"\n";
    let (key, line, display) = parse_err(text);
    assert_eq!(key.as_deref(), Some("limits.max_packet_size"));
    assert_eq!(line, Some(7));
    assert_eq!(
        display,
        "broker.toml:7: key `limits.max_packet_size`: invalid type: string \"big\", expected u32"
    );
}

#[test]
fn wrong_value_inside_listener_array_names_its_index() {
    let text = "[[listeners]]\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nbind = \"nowhere\"\n";
    let (key, line, display) = parse_err(text);
    assert_eq!(key.as_deref(), Some("listeners[1].bind"));
    assert_eq!(line, Some(4));
    assert!(
        display.starts_with("broker.toml:4: key `listeners[1].bind`: "),
        "{display}"
    );
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let (key, line, display) = parse_err("[limits]\nreceive_maximum = 5\nmax_pakcet_size = 10\n");
    assert_eq!(key.as_deref(), Some("limits.max_pakcet_size"));
    assert_eq!(line, Some(3));
    assert!(
        display.starts_with(
            "broker.toml:3: key `limits.max_pakcet_size`: unknown field `max_pakcet_size`, expected one of `max_packet_size`"
        ),
        "{display}"
    );
    let (key, line, _) = parse_err("colour = \"red\"\n");
    assert_eq!(key.as_deref(), Some("colour"));
    assert_eq!(line, Some(1));
}

#[test]
fn unknown_enum_value_is_rejected() {
    let (key, line, display) = parse_err("[log]\n\nlevel = \"loud\"\n");
    assert_eq!(key.as_deref(), Some("log.level"));
    assert_eq!(line, Some(3));
    assert!(display.contains("unknown variant `loud`"), "{display}");
}

#[test]
fn missing_bind_is_reported() {
    let (key, _, display) = parse_err("[[listeners]]\nname = \"x\"\n");
    assert_eq!(key.as_deref(), Some("listeners[0]"));
    assert!(display.contains("missing field `bind`"), "{display}");
}

/// Each rule of `validate`, reached through the file so the line is set.
#[test]
fn cross_field_rules_name_key_and_line() {
    let cases: &[(&str, &str, usize)] = &[
        ("node_name = \"\"\n", "node_name", 1),
        ("\nnode_name = \"a/b\"\n", "node_name", 2),
        ("listeners = []\n", "listeners", 1),
        (
            "[[listeners]]\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nbind = \"0.0.0.0:1883\"\n",
            "listeners[1].bind",
            4,
        ),
        (
            "[[listeners]]\nbind = \"127.0.0.1:1883\"\n[[listeners]]\nname = \"all\"\nbind = \"0.0.0.0:1883\"\n",
            "listeners[1].bind",
            5,
        ),
        (
            "[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:1884\"\n",
            "listeners[1].name",
            5,
        ),
        ("[limits]\nmax_packet_size = 10\n", "limits.max_packet_size", 2),
        ("[limits]\nmax_packet_size = 268435456\n", "limits.max_packet_size", 2),
        ("[limits]\nreceive_maximum = 0\n", "limits.receive_maximum", 2),
        ("[limits]\nmax_inflight = 0\n", "limits.max_inflight", 2),
        ("[limits]\nmax_client_id_len = 22\n", "limits.max_client_id_len", 2),
        (
            "[persistence]\nfsync_interval_ms = 0\n",
            "persistence.fsync_interval_ms",
            2,
        ),
        (
            "[persistence]\nenabled = true\ndir = \"\"\n",
            "persistence.dir",
            3,
        ),
        // Inline tables fall back to the line of the enclosing key.
        ("limits = { max_inflight = 0 }\n", "limits.max_inflight", 1),
    ];
    for &(text, want_key, want_line) in cases {
        let (key, line, display) = parse_err(text);
        assert_eq!(key.as_deref(), Some(want_key), "{text}");
        assert_eq!(line, Some(want_line), "{text}");
        let prefix = format!("broker.toml:{want_line}: key `{want_key}`: ");
        assert!(display.starts_with(&prefix), "{display}");
    }
}

#[test]
fn valid_edge_values_are_accepted() {
    let text = concat!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n",
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n",
        "[[listeners]]\nbind = \"127.0.0.1:1883\"\n",
        "[[listeners]]\nbind = \"127.0.0.2:1883\"\n",
        "[[listeners]]\nbind = \"[::]:1883\"\n",
        "[limits]\nmax_packet_size = 268435455\nmax_client_id_len = 23\n",
        "[persistence]\nfsync = \"never\"\nfsync_interval_ms = 0\ndir = \"\"\n",
    );
    let config = parse(text).unwrap();
    assert_eq!(config.listeners.len(), 5);
    assert_eq!(config.limits.max_packet_size, MAX_PACKET_SIZE);
}

#[test]
fn validate_without_source_has_key_but_no_line() {
    let mut config = Config::local_default();
    config.limits.receive_maximum = 0;
    let error = config.validate().unwrap_err();
    assert_eq!(error.key(), Some("limits.receive_maximum"));
    assert_eq!(error.line(), None);
    assert_eq!(
        error.to_string(),
        "key `limits.receive_maximum`: must be at least 1"
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, "node_name = \"n1\"\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().node_name, "n1");

    std::fs::write(&path, "node_name = 5\n").unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:1: key `node_name`: ", path.display())),
        "{error}"
    );

    let missing = dir.path().join("missing.toml");
    let error = Config::load(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().contains("missing.toml"), "{error}");
}

#[test]
fn line_of_key_follows_headers_and_skips_comments() {
    let text = "# bind = \"x\"\n[[listeners]]\nbind = \"a\"\n[[listeners]]\n# note\nbind = \"b\"\n";
    assert_eq!(line_of_key(text, "listeners[0].bind"), Some(3));
    assert_eq!(line_of_key(text, "listeners[1].bind"), Some(6));
    assert_eq!(line_of_key(text, "listeners[1].name"), Some(4));
    assert_eq!(line_of_key(text, "limits.max_inflight"), None);
}
