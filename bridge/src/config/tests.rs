use super::*;

const FULL: &str = r#"
name = "plant"

[broker]
host = "mq.iot.svc"
port = 8883
username_file = "/var/run/kubemqtt/mqtt/username"
password_file = "/var/run/kubemqtt/mqtt/password"
tls = { ca_file = "/var/run/kubemqtt/mqtt/ca.crt" }

[[routes]]
name = "readings"
filters = ["sensors/+/temp"]
where = "payload.temp > -50"
map = { device = "segment(topic, 1)", celsius = "payload.temp", at = "received_at" }
batch = { max_messages = 500, linger_ms = 50 }
dead_letter = { table = "dead_letters" }
[routes.sink.postgres]
connection = "host=db user=bridge dbname=iot"
password_file = "/var/run/secrets/db/password"
table = "readings"

[[routes]]
name = "alerts"
filters = ["alerts/#"]
dead_letter = { mqtt_topic = "bridge/dead/alerts" }
[routes.sink.http]
url = "https://hooks.example/alerts"
mode = "batch"
hmac_secret_file = "/var/run/secrets/hook/key"

[[commands]]
name = "api"
from = { http = { token_file = "/var/run/secrets/api/token" } }
allowed_topics = ["devices/+/commands"]
"#;

#[test]
fn a_full_file_parses_and_round_trips_through_toml() {
    let config = BridgeConfig::from_toml(FULL).unwrap();
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].sink.kind(), "postgres");
    assert_eq!(config.routes[0].batch.max_messages, 500);
    assert_eq!(config.routes[1].batch, BatchConfig::default());
    assert_eq!(
        config.routes[1].dead_letter,
        Some(DeadLetterConfig::MqttTopic("bridge/dead/alerts".into()))
    );
    let again = BridgeConfig::from_toml(&config.to_toml().unwrap()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn yaml_works_too() {
    let yaml = r#"
name: plant
broker: {host: localhost}
routes:
  - name: r
    filters: ["a/#"]
    sink: {nats: {url: "nats://localhost:4222", subject: "'iot.' + replace(topic, '/', '.')"}}
"#;
    let config = BridgeConfig::from_yaml(yaml).unwrap();
    assert_eq!(config.routes[0].sink.kind(), "nats");
}

fn error(text: &str) -> String {
    BridgeConfig::from_toml(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_line_or_the_key() {
    let unknown = error("name = \"x\"\n[broker]\nhost = \"h\"\nprot = 1\n");
    assert!(
        unknown.contains("line 4") && unknown.contains("prot"),
        "{unknown}"
    );

    let bad_expr = FULL.replace("payload.temp > -50", "payload.temp >");
    let message = error(&bad_expr);
    assert!(
        message.contains("routes[0].where") && message.contains("ends too early"),
        "{message}"
    );

    let bad_filter = FULL.replace("alerts/#", "alerts/#/x");
    assert!(error(&bad_filter).contains("routes[1].filters"));

    let table_on_http = FULL.replace("mqtt_topic = \"bridge/dead/alerts\"", "table = \"t\"");
    assert!(error(&table_on_http).contains("dead_letter.table"));

    let two_names = FULL.replace("name = \"alerts\"", "name = \"readings\"");
    assert!(error(&two_names).contains("names two routes"));

    let bad_name = FULL.replace("name = \"plant\"", "name = \"Plant_1\"");
    assert!(error(&bad_name).starts_with(": name:") || error(&bad_name).contains("name: must be"));
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, "name = 3\n").unwrap();
    let message = BridgeConfig::load(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn tls_tables_that_could_not_work_are_refused() {
    let plain_webhook = FULL
        .replace(
            "hmac_secret_file = \"/var/run/secrets/hook/key\"",
            "hmac_secret_file = \"/var/run/secrets/hook/key\"\ntls = { ca_file = \"/ca.crt\" }",
        )
        .replace("https://hooks", "http://hooks");
    let message = error(&plain_webhook);
    assert!(
        message.contains("routes[1].sink.http.tls")
            && message.contains("TLS needs an https:// URL"),
        "{message}"
    );
    let no_key = FULL.replace(
        "table = \"readings\"",
        "table = \"readings\"\ntls = { cert_file = \"/tls.crt\" }",
    );
    let message = error(&no_key);
    assert!(
        message.contains("routes[0].sink.postgres.tls")
            && message.contains("cert_file and key_file go together"),
        "{message}"
    );
    let plain_amqp = FULL.replace(
        "from = { http = { token_file = \"/var/run/secrets/api/token\" } }",
        "from = { amqp = { url = \"amqp://h/%2f\", queue = \"q\", tls = {} } }",
    );
    let message = error(&plain_amqp);
    assert!(
        message.contains("commands[0].from.amqp.tls")
            && message.contains("TLS needs an amqps:// URL"),
        "{message}"
    );
    let empty_name = FULL.replace(
        "tls = { ca_file = \"/var/run/kubemqtt/mqtt/ca.crt\" }",
        "tls = { ca_file = \"/var/run/kubemqtt/mqtt/ca.crt\", server_name = \"\" }",
    );
    assert!(error(&empty_name).contains("broker.tls"));
}
