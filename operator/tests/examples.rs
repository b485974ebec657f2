//! The examples in `examples/` are what they say they are:
//!
//! - every custom resource in them matches its CRD (the one in `crds/`
//!   whose kind it has): types, required fields, enums, bounds, patterns,
//!   no fields the CRD lacks, and the CRD's CEL rules;
//! - every broker renders; every user is admitted by the example broker it
//!   names, gets its credentials Secret, and ends up in that broker's
//!   credentials file, which the broker's own parser reads with the topic
//!   rules and quotas the example's comments promise;
//! - the rendered objects, the examples' other Kubernetes objects (a
//!   user's password Secret) and the CRDs pass the Kubernetes 1.32 schemas
//!   and the CRD structural checks.
//!
//! The schema checks use `kubernetes-validate` and `crd-structural-check`
//! (installed by `scripts/install-k8s-tools.sh`), found on PATH or in the
//! workspace's `.tools/bin`. Without them those checks are skipped with a
//! message, unless `KUBEMQTT_REQUIRE_K8S_TOOLS=1`, which turns a missing
//! tool into a failure (for CI).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use common::{tool, workspace};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::SignedDuration;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::core::cel::cel::{Context as CelContext, Program, Value as CelValue};
use kube::core::cel::Validator;
use kube::ResourceExt;
use kubemqtt_broker::auth::{self, AuthText};
use kubemqtt_operator::api::{MqttBroker, MqttUser};
use kubemqtt_operator::certs;
use kubemqtt_operator::plan::configmap::CA_BUNDLE_KEY;
use kubemqtt_operator::plan::secrets::CREDENTIALS_KEY;
use kubemqtt_operator::plan::user_secret::{plan_user, UserObserved};
use kubemqtt_operator::plan::{plan, Observed, Settings};
use kubemqtt_operator::render::{self, read_resources};
use serde_json::{json, Value};

/// Where examples without a namespace are put, as `kubectl apply` would.
const NAMESPACE: &str = "default";

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().expect("valid time")
}

/// Every `examples/*.yaml`, sorted.
fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("examples"))
        .expect("examples/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// The documents of a YAML file.
fn documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).expect("readable YAML");
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn kind(document: &Value) -> &str {
    document["kind"].as_str().unwrap_or_default()
}

/// The examples holding an `MqttBroker` (one broker per file, as
/// `kubemqtt-operator render` takes them).
fn broker_examples() -> Vec<PathBuf> {
    let files: Vec<PathBuf> = examples()
        .into_iter()
        .filter(|file| documents(file).iter().any(|d| kind(d) == "MqttBroker"))
        .collect();
    assert!(
        files.len() >= 2,
        "expected the minimal and production broker examples"
    );
    files
}

/// Renders `file` as `kubemqtt-operator render` does, at a fixed time.
/// A team's CA that a broker names and the file lacks (examples carry no
/// private keys) is stood in for by a CA made here.
fn render(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("readable example");
    let mut resources =
        read_resources(&text, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    for broker in resources.brokers.clone() {
        let Some(name) = broker.spec.tls.ca.secret_name.clone() else {
            continue;
        };
        if resources.secrets.iter().any(|s| s.name_any() == name) {
            continue;
        }
        let ca = certs::generate_ca(
            "stand-in team CA",
            now(),
            SignedDuration::from_hours(24 * 3650),
        )
        .expect("a CA");
        let mut secret = Secret {
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), ByteString(ca.cert_pem.into_bytes())),
                ("tls.key".to_owned(), ByteString(ca.key_pem.into_bytes())),
            ])),
            ..Secret::default()
        };
        secret.metadata.name = Some(name);
        secret.metadata.namespace = broker.namespace();
        resources.secrets.push(secret);
    }
    render::render(&resources, &Settings::default(), now())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn run(tool: &Path, options: &[&str], files: &[&Path]) {
    let output = Command::new(tool)
        .args(options)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}{}",
        tool.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn examples_render_every_object() {
    let mut modes = BTreeMap::new();
    for file in broker_examples() {
        let yaml = render(&file);
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(&yaml).expect("rendered YAML reads back");
        let broker = read_resources(&std::fs::read_to_string(&file).unwrap(), None)
            .unwrap()
            .brokers
            .remove(0);
        let names: Vec<(String, String)> = documents
            .iter()
            .filter(|d| !d.is_null())
            .map(|d| {
                let name = d["metadata"]["name"].as_str().unwrap_or_default();
                // Without the broker's name: `mq-ca` -> `-ca`.
                let suffix = name.strip_prefix(&broker.name_any()).unwrap_or(name);
                (kind(d).to_owned(), suffix.to_owned())
            })
            .collect();
        let mode = if broker.spec.tls.cert_manager.is_some() {
            "cert-manager"
        } else if broker.spec.tls.ca.secret_name.is_some() {
            "team CA"
        } else {
            "operator CA"
        };
        let mut expected: Vec<(&str, &str)> = vec![("ConfigMap", "-config")];
        match mode {
            "cert-manager" => expected.push(("Certificate", "-tls")),
            "team CA" => expected.push(("Secret", "-tls")),
            _ => expected.extend([("Secret", "-ca"), ("Secret", "-tls")]),
        }
        expected.extend([("Secret", "-clients-ca"), ("Secret", "-auth")]);
        let managed_nats = broker
            .spec
            .cluster
            .as_ref()
            .is_some_and(|c| c.nats.managed.is_some());
        if managed_nats {
            expected.extend([
                ("Secret", "-nats-ca"),
                ("Secret", "-nats-tls"),
                ("Secret", "-nats-client"),
                ("ConfigMap", "-nats-config"),
                ("Service", "-nats-headless"),
                ("Service", "-nats"),
                ("StatefulSet", "-nats"),
                ("PodDisruptionBudget", "-nats"),
            ]);
        }
        expected.extend([
            ("Service", "-headless"),
            ("Service", ""),
            ("Service", "-external"),
            ("StatefulSet", ""),
        ]);
        // A budget only over several pods.
        if broker.spec.replicas > 1 {
            expected.push(("PodDisruptionBudget", ""));
        }
        if broker.spec.autoscaling.is_some() {
            expected.push(("HorizontalPodAutoscaler", ""));
        }
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n.to_owned()))
            .collect();
        assert_eq!(names, expected, "{}", file.display());
        assert!(
            yaml.contains(&format!(
                "# The credentials file of MqttBroker {}/{}",
                broker.namespace().unwrap_or_default(),
                broker.name_any()
            )),
            "{}",
            file.display()
        );
        *modes.entry(mode).or_insert(0) += 1;
    }
    assert_eq!(
        modes.len(),
        3,
        "an example of each way to issue the certificate: {modes:?}"
    );
}

/// What cert-manager's `cert-manager.io/v1` API defines of the fields the
/// operator sets on a Certificate (from cert-manager's documentation),
/// each `path: problem` it would refuse.
fn certificate_violations(certificate: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let spec = &certificate["spec"];
    let known = [
        "secretName",
        "secretTemplate",
        "commonName",
        "dnsNames",
        "ipAddresses",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
    ];
    for key in spec.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !known.contains(&key.as_str()) {
            violations.push(format!("spec.{key}: not a field the operator should set"));
        }
    }
    if !spec["secretName"].is_string() || !spec["issuerRef"]["name"].is_string() {
        violations.push("spec.secretName and spec.issuerRef.name: required".to_owned());
    }
    for key in ["duration", "renewBefore"] {
        let ok = spec[key].as_str().is_some_and(|d| {
            d.strip_suffix('h')
                .is_some_and(|n| n.parse::<u32>().is_ok())
        });
        if !ok {
            violations.push(format!("spec.{key}: not a Go duration in hours"));
        }
    }
    let key = &spec["privateKey"];
    if !["RSA", "ECDSA", "Ed25519"].contains(&key["algorithm"].as_str().unwrap_or_default())
        || !["Never", "Always"].contains(&key["rotationPolicy"].as_str().unwrap_or_default())
    {
        violations.push(format!("spec.privateKey: {key}"));
    }
    let usages = [
        "signing",
        "digital signature",
        "content commitment",
        "key encipherment",
        "key agreement",
        "data encipherment",
        "cert sign",
        "crl sign",
        "encipher only",
        "decipher only",
        "any",
        "server auth",
        "client auth",
        "code signing",
        "email protection",
        "s/mime",
        "ipsec end system",
        "ipsec tunnel",
        "ipsec user",
        "timestamping",
        "ocsp signing",
        "microsoft sgc",
        "netscape sgc",
    ];
    for usage in spec["usages"].as_array().into_iter().flatten() {
        if !usages.contains(&usage.as_str().unwrap_or_default()) {
            violations.push(format!("spec.usages: {usage}"));
        }
    }
    for (list, check) in [
        (
            "dnsNames",
            &(|n: &str| certs::San::parse(n).is_ok_and(|s| matches!(s, certs::San::Dns(_))))
                as &dyn Fn(&str) -> bool,
        ),
        ("ipAddresses", &|n: &str| {
            n.parse::<std::net::IpAddr>().is_ok()
        }),
    ] {
        for name in spec[list].as_array().into_iter().flatten() {
            if !check(name.as_str().unwrap_or_default()) {
                violations.push(format!("spec.{list}: {name}"));
            }
        }
    }
    if !spec["secretTemplate"]["labels"].is_object() {
        violations.push(
            "spec.secretTemplate.labels: the Secret must carry the broker's labels".to_owned(),
        );
    }
    violations
}

#[test]
fn the_cert_manager_certificate_is_one_cert_manager_takes() {
    let file = workspace().join("examples/broker-cert-manager.yaml");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&render(&file)).unwrap();
    let certificate = documents
        .iter()
        .find(|d| kind(d) == "Certificate")
        .expect("a Certificate");
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    assert_eq!(certificate_violations(certificate), Vec::<String>::new());
    assert!(certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&json!("mqtt.example.com")));
    // The check can fail.
    let mut broken = certificate.clone();
    broken["spec"]["privateKey"]["algorithm"] = json!("DSA");
    broken["spec"]["duration"] = json!("90d");
    broken["spec"]["isCA"] = json!(true);
    assert_eq!(certificate_violations(&broken).len(), 3);
}

// --- custom resources against their CRD ---------------------------------------

/// The `openAPIV3Schema` of the CRD in `crds/` that defines the kind and
/// version of `document`.
fn crd_schema(document: &Value) -> Value {
    let kind = kind(document);
    let version = document["apiVersion"]
        .as_str()
        .and_then(|api_version| api_version.rsplit('/').next())
        .unwrap_or_default();
    let crds = std::fs::read_dir(workspace().join("crds")).expect("crds/ exists");
    for crd in crds.map(|entry| entry.expect("readable entry").path()) {
        for definition in documents(&crd) {
            if definition["spec"]["names"]["kind"] != kind {
                continue;
            }
            let versions = definition["spec"]["versions"].as_array().cloned();
            let schema = versions
                .unwrap_or_default()
                .into_iter()
                .find(|v| v["name"] == version)
                .map(|v| v["schema"]["openAPIV3Schema"].clone());
            return schema
                .unwrap_or_else(|| panic!("{} has no version {version} of {kind}", crd.display()));
        }
    }
    panic!("no CRD in crds/ defines the kind `{kind}`")
}

/// What the apiserver would refuse in `document` (a custom resource), as
/// `path: problem` lines: the OpenAPI checks of its CRD's schema with
/// strict field validation (what `kubectl apply` asks for), then the CEL
/// rules. Not checked: `format`s and the CEL cost limits.
fn crd_violations(document: &Value) -> Vec<String> {
    let schema = crd_schema(document);
    let mut violations = Vec::new();
    let mut patterns = Vec::new();
    let Some(fields) = document.as_object() else {
        return vec!["the document is not an object".to_owned()];
    };
    // Every object has these; CRD schemas do not declare them.
    for (key, value) in fields {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match schema["properties"].get(key) {
            Some(field_schema) => check(value, field_schema, key, &mut violations, &mut patterns),
            None => violations.push(format!("{key}: unknown field")),
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        if !fields.contains_key(required) {
            violations.push(format!("{required}: required"));
        }
    }
    if document["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        violations.push("metadata.name: required".to_owned());
    }
    for (path, pattern, text) in patterns {
        if !matches_pattern(&text, &pattern) {
            violations.push(format!("{path}: `{text}` does not match `{pattern}`"));
        }
    }
    if let Err(errors) = Validator::new().validate(&schema, document, None) {
        violations.extend(
            errors
                .as_slice()
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    violations
}

/// Checks `value` against the OpenAPI `schema` at `path`; string patterns
/// are collected in `patterns` for [`matches_pattern`].
fn check(
    value: &Value,
    schema: &Value,
    path: &str,
    violations: &mut Vec<String>,
    patterns: &mut Vec<(String, String, String)>,
) {
    let mut problem = |message: String| violations.push(format!("{path}: {message}"));
    if value.is_null() {
        if schema["nullable"] != true {
            problem("may not be null".to_owned());
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            problem("must be an integer or a string".to_owned());
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        problem(format!("must be of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            problem(format!("must be one of {}", schema["enum"]));
        }
    }
    if let Some(number) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| number < min) {
            problem(format!("must be at least {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| number > max) {
            problem(format!("must be at most {}", schema["maximum"]));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min) {
            problem(format!(
                "must be at least {} characters",
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
            problem(format!(
                "must be at most {} characters",
                schema["maxLength"]
            ));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            patterns.push((path.to_owned(), pattern.to_owned(), text.to_owned()));
        }
    }
    if let Some(items) = value.as_array() {
        for (index, item) in items.iter().enumerate() {
            let path = format!("{path}[{index}]");
            check(item, &schema["items"], &path, violations, patterns);
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap_or_default();
            if !fields.contains_key(required) {
                violations.push(format!("{path}.{required}: required"));
            }
        }
        if schema["x-kubernetes-preserve-unknown-fields"] == true {
            return;
        }
        for (key, field) in fields {
            let path = format!("{path}.{key}");
            match (
                schema["properties"].get(key),
                &schema["additionalProperties"],
            ) {
                (Some(field_schema), _) => check(field, field_schema, &path, violations, patterns),
                (None, Value::Object(_)) => check(
                    field,
                    &schema["additionalProperties"],
                    &path,
                    violations,
                    patterns,
                ),
                (None, Value::Bool(true)) => {}
                (None, _) => violations.push(format!("{path}: unknown field")),
            }
        }
    }
}

/// Whether `text` matches the schema `pattern`, with the regular
/// expressions of CEL's `matches` (RE2 syntax, as the apiserver's).
fn matches_pattern(text: &str, pattern: &str) -> bool {
    let program = Program::compile("text.matches(pattern)").expect("a valid CEL expression");
    let mut context = CelContext::default();
    context.add_variable_from_value("text", text.to_owned());
    context.add_variable_from_value("pattern", pattern.to_owned());
    match program.execute(&context) {
        Ok(CelValue::Bool(matched)) => matched,
        other => panic!("cannot match `{text}` against `{pattern}`: {other:?}"),
    }
}

#[test]
fn custom_resources_in_the_examples_match_their_crd() {
    let mut checked = BTreeMap::<String, usize>::new();
    // And the broker e2e/run.sh applies.
    let e2e = workspace().join("e2e/broker.yaml");
    for file in examples().into_iter().chain([e2e]) {
        for document in documents(&file) {
            let is_ours = document["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("kubemqtt.io/"));
            if !is_ours {
                continue;
            }
            let violations = crd_violations(&document);
            assert!(
                violations.is_empty(),
                "{} ({} {}):\n{}",
                file.display(),
                kind(&document),
                document["metadata"]["name"],
                violations.join("\n")
            );
            *checked.entry(kind(&document).to_owned()).or_default() += 1;
        }
    }
    assert!(checked["MqttBroker"] >= 2, "{checked:?}");
    assert!(checked["MqttUser"] >= 2, "{checked:?}");
}

/// The check above can fail: each mistake below is one the apiserver
/// would refuse.
#[test]
fn the_crd_check_finds_what_the_apiserver_would_refuse() {
    let user = json!({
        "apiVersion": "kubemqtt.io/v1alpha1",
        "kind": "MqttUser",
        "metadata": {"name": "device-1"},
        "spec": {
            "brokerRef": {"name": "broker"},
            "acl": [{"action": "publish", "topic": "devices/%u/#"}],
            "quotas": {"connections": 1},
        },
    });
    assert_eq!(crd_violations(&user), Vec::<String>::new());

    let with = |pointer: &str, value: Value| {
        let mut changed = user.clone();
        *changed.pointer_mut(pointer).expect("an existing field") = value;
        crd_violations(&changed)
    };
    let one = |violations: Vec<String>, expected: &str| {
        assert!(
            violations.len() == 1 && violations[0].starts_with(expected),
            "expected `{expected}`, got {violations:?}"
        );
    };
    one(
        with("/spec/acl/0/action", json!("read")),
        "spec.acl[0].action: must be one of",
    );
    one(
        with("/spec/quotas/connections", json!(0)),
        "spec.quotas.connections: must be at least",
    );
    one(
        with("/spec/quotas", json!({"connection": 1})),
        "spec.quotas.connection: unknown field",
    );
    one(
        with("/spec/brokerRef", json!({})),
        "spec.brokerRef.name: required",
    );
    one(
        with("/spec/acl", json!({"action": "publish"})),
        "spec.acl: must be of type \"array\"",
    );
    let mut username = user.clone();
    username["spec"]["username"] = json!("device 1");
    one(
        crd_violations(&username),
        "spec.username: `device 1` does not match",
    );
    // The CRD's CEL rule on the name's length.
    let long_name = "d".repeat(235);
    let violations = with("/metadata/name", json!(long_name));
    assert!(
        violations
            .iter()
            .any(|v| v.contains("at most 234 characters")),
        "{violations:?}"
    );
    // The kind picks the CRD: a broker's fields are not a user's.
    let mut broker = user.clone();
    broker["kind"] = json!("MqttBroker");
    let violations = crd_violations(&broker);
    assert!(
        violations.contains(&"spec.brokerRef: unknown field".to_owned()),
        "{violations:?}"
    );
}

// --- users: admitted, in their Secret, in force on the broker -------------------

/// Every document of the examples as typed objects, each without a
/// namespace put in [`NAMESPACE`]; Secrets with `stringData` folded into
/// `data`, as the apiserver stores them.
struct ExampleObjects {
    brokers: Vec<MqttBroker>,
    users: Vec<MqttUser>,
    secrets: Vec<Secret>,
}

fn example_objects() -> ExampleObjects {
    let mut objects = ExampleObjects {
        brokers: Vec::new(),
        users: Vec::new(),
        secrets: Vec::new(),
    };
    for file in examples() {
        for mut document in documents(&file) {
            if document["metadata"]["namespace"].is_null() {
                document["metadata"]["namespace"] = json!(NAMESPACE);
            }
            let file = file.display();
            match kind(&document) {
                "MqttBroker" => objects.brokers.push(typed(document, &file)),
                "MqttUser" => objects.users.push(typed(document, &file)),
                // Planned and validated by tests/bridge_examples.rs.
                "MqttBridge" => {}
                // Planned and validated by tests/fleet_examples.rs.
                "MqttDeviceFleet" => {}
                "Secret" => {
                    let mut secret: Secret = typed(document, &file);
                    let string_data = secret.string_data.take().unwrap_or_default();
                    let data = secret.data.get_or_insert_with(BTreeMap::new);
                    for (key, value) in string_data {
                        data.insert(key, ByteString(value.into_bytes()));
                    }
                    objects.secrets.push(secret);
                }
                other => panic!("{file}: unexpected kind `{other}`"),
            }
        }
    }
    objects
}

/// `document` as a `T`; `file` names it in the panic.
fn typed<T: serde::de::DeserializeOwned>(document: Value, file: &impl std::fmt::Display) -> T {
    serde_json::from_value(document).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8(value.0.clone()).expect("UTF-8"))
}

fn same_place(a: &impl ResourceExt, b: &impl ResourceExt) -> bool {
    a.namespace() == b.namespace()
}

/// Each example user planned against the example broker it names, at
/// [`now`]: its credentials Secret.
fn user_secrets(objects: &ExampleObjects) -> Vec<(MqttUser, Secret)> {
    assert!(
        objects.users.len() >= 2,
        "expected the device and backend users"
    );
    objects
        .users
        .iter()
        .map(|user| {
            let broker_name = &user.spec.broker_ref.name;
            let broker = objects
                .brokers
                .iter()
                .find(|b| b.name_any() == *broker_name && same_place(*b, user))
                .unwrap_or_else(|| {
                    panic!(
                        "MqttUser {} names MqttBroker {broker_name}, which no example defines",
                        user.name_any()
                    )
                });
            let broker_plan = plan(broker, &Observed::default(), &Settings::default(), now())
                .expect("the example broker plans");
            let trust_bundle = broker_plan
                .config_map
                .data
                .as_ref()
                .and_then(|data| data.get(CA_BUNDLE_KEY))
                .cloned();
            let siblings: Vec<MqttUser> = objects
                .users
                .iter()
                .filter(|u| u.spec.broker_ref.name == *broker_name && same_place(*u, user))
                .cloned()
                .collect();
            let password_source =
                user.spec
                    .authentication
                    .password
                    .value_from
                    .as_ref()
                    .map(|from| {
                        objects
                            .secrets
                            .iter()
                            .find(|s| {
                                s.name_any() == from.secret_key_ref.name && same_place(*s, user)
                            })
                            .unwrap_or_else(|| {
                                panic!(
                                    "MqttUser {}: its password Secret {} is not in the examples",
                                    user.name_any(),
                                    from.secret_key_ref.name
                                )
                            })
                    });
            let observed = UserObserved {
                broker: Some(broker),
                siblings: &siblings,
                password_source,
                trust_bundle: trust_bundle.as_deref(),
                ..UserObserved::default()
            };
            let user_plan = plan_user(user, &observed, &Settings::default(), now())
                .unwrap_or_else(|e| panic!("MqttUser {}: {} ({e})", user.name_any(), e.reason()));
            (user.clone(), user_plan.secret)
        })
        .collect()
}

#[test]
fn example_users_get_their_secret_and_are_in_force_as_documented() {
    let objects = example_objects();
    let secrets = user_secrets(&objects);
    for (user, secret) in &secrets {
        let name = user.name_any();
        assert_eq!(secret.name_any(), format!("{name}-mqtt-credentials"));
        for key in [
            "username", "password", "ca.crt", "host", "port", "tls-port", "uri",
        ] {
            assert!(secret_text(secret, key).is_some(), "{name}: no `{key}`");
        }
        if let Some(from) = &user.spec.authentication.password.value_from {
            let source = objects
                .secrets
                .iter()
                .find(|s| s.name_any() == from.secret_key_ref.name)
                .expect("the password Secret");
            assert_eq!(
                secret_text(secret, "password"),
                secret_text(source, &from.secret_key_ref.key),
                "{name}: the password is the one of its Secret"
            );
        }
    }

    // The broker's credentials file with these users, read by the broker.
    let broker = objects
        .brokers
        .iter()
        .find(|b| b.name_any() == "broker")
        .expect("examples/broker.yaml");
    let observed = Observed {
        users: secrets
            .iter()
            .filter(|(user, _)| user.spec.broker_ref.name == "broker")
            .map(|(user, secret)| (user.clone(), Some(secret.clone())))
            .collect(),
        ..Observed::default()
    };
    let broker_plan = plan(broker, &observed, &Settings::default(), now()).expect("plans");
    let file = AuthText {
        text: secret_text(&broker_plan.auth_secret, CREDENTIALS_KEY).expect("credentials file"),
        origin: "examples' credentials".to_owned(),
    };
    let (authenticator, acl) = auth::build(None, Some(&file), None).expect("the broker reads it");
    let password = |user: &str| {
        let (_, secret) = secrets
            .iter()
            .find(|(u, _)| u.name_any() == user)
            .unwrap_or_else(|| panic!("no example user {user}"));
        secret_text(secret, "password").expect("a password")
    };
    for user in ["device-1", "backend-reader"] {
        authenticator
            .authenticate(user, password(user).as_bytes(), SystemTime::now())
            .unwrap_or_else(|e| panic!("{user} cannot log in: {e:?}"));
        assert!(authenticator
            .authenticate(user, b"not-the-password", SystemTime::now())
            .is_err());
    }

    // examples/user-device.yaml: its own topics only, one connection,
    // 10 PUBLISH a second.
    let device = acl.client(Some("device-1"), "device-1-sensor");
    assert!(device.can_publish("devices/device-1/temperature"));
    assert!(!device.can_publish("devices/device-2/temperature"));
    assert!(!device.can_subscribe("devices/device-1/#"));
    assert!(device.can_subscribe("commands/device-1/#"));
    assert!(!device.can_subscribe("commands/#"));
    assert!(!device.can_publish("commands/device-1/reboot"));
    let quotas = authenticator.quotas("device-1").expect("quotas");
    assert_eq!(quotas.connections.map(|n| n.get()), Some(1));
    assert_eq!(quotas.publish_rate.map(|n| n.get()), Some(10));

    // examples/user-backend.yaml: every device's messages (also as a
    // shared subscription), commands to any device, nothing else.
    let backend = acl.client(Some("backend-reader"), "backend-7f9c");
    assert!(backend.can_subscribe("devices/#"));
    assert!(backend.can_subscribe("$share/backend/devices/#"));
    assert!(backend.can_receive("devices/device-1/temperature"));
    assert!(backend.can_publish("commands/device-1/reboot"));
    assert!(!backend.can_publish("devices/device-1/temperature"));
    assert!(!backend.can_subscribe("#"));
    assert!(!backend.can_subscribe("$SYS/#"));
    assert!(authenticator.quotas("backend-reader").is_none());
}

// --- Kubernetes schemas ------------------------------------------------------------

#[test]
fn rendered_objects_and_the_crds_pass_kubernetes_validate() {
    let Some(validate) = tool("kubernetes-validate", "schema check") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for example in broker_examples() {
        let name = example.file_name().expect("file name");
        let rendered = dir.path().join(name);
        // cert-manager's Certificate has no schema here: checked by
        // `the_cert_manager_certificate_is_one_cert_manager_takes`.
        let documents: Vec<Value> = serde_saphyr::from_multiple(&render(&example)).unwrap();
        let built_in: Vec<Value> = documents
            .into_iter()
            .filter(|d| !d.is_null() && kind(d) != "Certificate")
            .collect();
        let yaml = serde_saphyr::to_string_multiple(&built_in).expect("YAML output");
        std::fs::write(&rendered, yaml).expect("write rendered objects");
        files.push(rendered);
    }
    // The users' credentials Secrets, as the operator would apply them.
    let secrets: Vec<Value> = user_secrets(&example_objects())
        .into_iter()
        .map(|(_, secret)| {
            let mut object = serde_json::to_value(secret).expect("a Secret serializes");
            object["apiVersion"] = json!("v1");
            object["kind"] = json!("Secret");
            object
        })
        .collect();
    let rendered = dir.path().join("user-secrets.yaml");
    let yaml = serde_saphyr::to_string_multiple(&secrets).expect("YAML output");
    std::fs::write(&rendered, yaml).expect("write the users' Secrets");
    files.push(rendered);
    // The examples themselves: their built-in objects (a user's password
    // Secret) are checked; custom resources are skipped with a warning
    // (the test above checks them against their CRD).
    files.extend(examples());
    files.extend(crd_files());
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    run(&validate, &["--strict", "-k", "1.32.0"], &files);
}

fn crd_files() -> Vec<PathBuf> {
    let mut crds: Vec<PathBuf> = std::fs::read_dir(workspace().join("crds"))
        .expect("crds/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    crds.sort();
    assert!(crds.len() >= 2, "expected the MqttBroker and MqttUser CRDs");
    crds
}

#[test]
fn crds_pass_the_structural_schema_check() {
    let Some(check) = tool("crd-structural-check", "schema check") else {
        return;
    };
    let crds = crd_files();
    let crds: Vec<&Path> = crds.iter().map(PathBuf::as_path).collect();
    run(&check, &[], &crds);
}

/// `examples/broker-cluster.yaml` is what its comments say: three pods on a
/// NATS the operator runs, over TLS, scaled by an HPA between 3 and 12 on
/// CPU and connections, draining 20,000 clients at 1,000 a second.
#[test]
fn the_cluster_example_runs_three_pods_on_a_managed_nats_with_an_hpa() {
    let yaml = render(&workspace().join("examples/broker-cluster.yaml"));
    let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("rendered YAML");
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} rendered"))
            .clone()
    };
    let broker = find("StatefulSet", "mqtt-cluster");
    assert_eq!(broker["spec"]["replicas"], 3);
    assert_eq!(
        broker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        35
    );
    let config = find("ConfigMap", "mqtt-cluster-config");
    let text = config["data"]["broker.toml"].as_str().expect("broker.toml");
    let parsed = kubemqtt_broker::config::Config::from_toml_str(text, "broker.toml")
        .expect("the broker reads it");
    let cluster = parsed.cluster.expect("a [cluster] table");
    assert_eq!(cluster.servers.len(), 3);
    assert!(cluster.servers[0].starts_with("tls://mqtt-cluster-nats-0."));
    assert!(cluster.tls.is_some());
    assert_eq!(parsed.drain.rate_per_sec, 1000);
    assert_eq!(parsed.drain.deadline_secs, 30);
    assert_eq!(
        find("StatefulSet", "mqtt-cluster-nats")["spec"]["replicas"],
        3
    );
    let hpa = find("HorizontalPodAutoscaler", "mqtt-cluster");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 12);
    assert_eq!(hpa["spec"]["metrics"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        600
    );
    assert_eq!(
        find("PodDisruptionBudget", "mqtt-cluster")["spec"]["maxUnavailable"],
        1
    );
}
