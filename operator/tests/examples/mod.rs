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

mod crd;
mod schemas;
mod users;

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
