//! Tests of the managed NATS planner.

use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::plan::testing::{broker_yaml, now};
use crate::plan::{plan, Plan, Settings};

const MANAGED: &str =
    "replicas: 3\ncluster: {nats: {managed: {storage: {size: 20Gi, storageClassName: fast}}}}";

fn plan_at(spec: &str, observed: &Observed, at: Timestamp) -> Plan {
    plan(&broker_yaml(spec), observed, &Settings::default(), at).expect("plans")
}

fn nats_of(plan: &Plan) -> &NatsPlan {
    plan.nats.as_ref().expect("a managed NATS")
}

fn data(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
    text(secret, key).expect("key present").to_owned()
}

/// What the planner would see after applying `plan`.
fn observed_after(plan: &Plan) -> Observed {
    let nats = nats_of(plan);
    Observed {
        nats_ca_secret: Some(nats.ca_secret.clone()),
        nats_server_secret: Some(nats.server_secret.clone()),
        nats_client_secret: Some(nats.client_secret.clone()),
        ..Observed::default()
    }
}

#[test]
fn only_a_managed_nats_is_planned() {
    let plain = plan_at("{}", &Observed::default(), now());
    assert!(plain.nats.is_none());
    let external = plan_at(
        "cluster: {nats: {external: {urls: [\"nats://n:4222\"]}}}",
        &Observed::default(),
        now(),
    );
    assert!(external.nats.is_none());
}

#[test]
fn every_object_is_named_labelled_and_owned() {
    let plan = plan_at(MANAGED, &Observed::default(), now());
    let objects = nats_of(&plan).objects().unwrap();
    let kinds: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("Secret", "mq-nats-ca"),
            ("Secret", "mq-nats-tls"),
            ("Secret", "mq-nats-client"),
            ("ConfigMap", "mq-nats-config"),
            ("Service", "mq-nats-headless"),
            ("Service", "mq-nats"),
            ("StatefulSet", "mq-nats"),
            ("PodDisruptionBudget", "mq-nats"),
        ]
    );
    for object in &objects {
        let labels = &object["metadata"]["labels"];
        // Not the broker's name label: the broker's selectors never take
        // NATS pods; the instance and manager labels make them the
        // broker's objects for the operator's watches and lists.
        assert_eq!(labels["app.kubernetes.io/name"], "kubemqtt-nats");
        assert_eq!(labels["app.kubernetes.io/instance"], "mq");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "kubemqtt-operator");
        assert_eq!(object["metadata"]["ownerReferences"][0]["name"], "mq");
        assert_eq!(object["metadata"]["namespace"], "iot");
    }
    // Applied before the broker pods that connect to it.
    let all: Vec<String> = plan
        .objects()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let nats = all.iter().position(|k| k == "StatefulSet/mq-nats").unwrap();
    let broker = all.iter().position(|k| k == "StatefulSet/mq").unwrap();
    assert!(nats < broker, "{all:?}");
}

#[test]
fn three_jetstream_servers_with_a_volume_each() {
    let plan = plan_at(MANAGED, &Observed::default(), now());
    let nats = nats_of(&plan);
    let spec = nats.stateful_set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("mq-nats-headless"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    let claim_spec = claim.spec.as_ref().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"],
        Quantity("20Gi".into())
    );
    let pod = spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(DEFAULT_NATS_IMAGE));
    assert!(
        DEFAULT_NATS_IMAGE.starts_with("nats:2."),
        "an official, pinned tag"
    );
    assert!(!DEFAULT_NATS_IMAGE.contains("latest"));
    let readiness = container.readiness_probe.as_ref().unwrap();
    assert_eq!(
        readiness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/healthz?js-server-only=true")
    );
    let spread = pod.topology_spread_constraints.clone().unwrap();
    assert_eq!(spread.len(), 2);
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    // The selector takes the NATS pods only.
    assert_eq!(
        spec.selector.match_labels.clone().unwrap(),
        selector_labels("mq")
    );
    let pdb = nats.pod_disruption_budget.spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    let headless = nats.headless_service.spec.as_ref().unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
}

#[test]
fn the_configuration_routes_to_every_server_over_verified_tls() {
    let plan = plan_at(MANAGED, &Observed::default(), now());
    let config = &nats_of(&plan).config_map.data.as_ref().unwrap()[CONFIG_FILE];
    for ordinal in 0..3 {
        let route = format!(
            "\"nats-route://mq-nats-{ordinal}.mq-nats-headless.iot.svc.cluster.local:6222\""
        );
        assert!(config.contains(&route), "{config}");
    }
    assert!(config.contains("server_name: $POD_NAME"), "{config}");
    assert!(config.contains("store_dir: \"/data\""), "{config}");
    assert!(config.contains("no_advertise: true"), "{config}");
    assert_eq!(config.matches("verify: true").count(), 2, "{config}");
    assert!(config.contains("name: \"mq-nats\""), "{config}");
}

#[test]
fn certificates_cover_the_servers_and_verify_both_ends() {
    let plan = plan_at(MANAGED, &Observed::default(), now());
    let nats = nats_of(&plan);
    let ca = data(&nats.ca_secret, CA_CERT_KEY);
    let server = data(&nats.server_secret, TLS_CERT_KEY);
    let client = data(&nats.client_secret, TLS_CERT_KEY);
    assert!(certs::is_ca(&ca));
    assert!(certs::is_signed_by(&server, &ca));
    assert!(certs::is_signed_by(&client, &ca));
    assert_eq!(data(&nats.server_secret, CA_CERT_KEY), ca);
    assert_eq!(data(&nats.client_secret, CA_CERT_KEY), ca);
    // The CA's key stays out of what the pods mount.
    assert!(text(&nats.server_secret, CA_PRIVATE_KEY_KEY).is_none());
    assert!(text(&nats.client_secret, CA_PRIVATE_KEY_KEY).is_none());
    let sans = certs::inspect(&server).unwrap().sans;
    for name in [
        "mq-nats.iot.svc",
        "*.mq-nats-headless.iot.svc",
        "*.mq-nats-headless.iot.svc.cluster.local",
    ] {
        assert!(
            sans.contains(&San::Dns(name.to_owned())),
            "{name}: {sans:?}"
        );
    }
    // The brokers use it too: their pods mount the client Secret and roll
    // when it changes.
    let pod = plan.stateful_set.spec.as_ref().unwrap().template.clone();
    let annotations = pod.metadata.unwrap().annotations.unwrap();
    assert_eq!(
        annotations[super::super::statefulset::NATS_CLIENT_CHECKSUM_ANNOTATION],
        config_checksum(&client)
    );
}

#[test]
fn stored_certificates_are_kept_until_they_near_expiry() {
    let first = plan_at(MANAGED, &Observed::default(), now());
    let observed = observed_after(&first);
    let again = plan_at(MANAGED, &observed, now() + SignedDuration::from_hours(24));
    assert_eq!(nats_of(&again).ca_secret, nats_of(&first).ca_secret);
    assert_eq!(nats_of(&again).server_secret, nats_of(&first).server_secret);
    assert_eq!(nats_of(&again).client_secret, nats_of(&first).client_secret);
    assert_eq!(
        nats_of(&again).stateful_set,
        nats_of(&first).stateful_set,
        "no roll"
    );
    // The plan asks to be looked at again before the renewal is due.
    let recheck = first.recheck_at.unwrap();
    assert!(
        recheck <= now() + SignedDuration::from_hours(24 * 335) + SignedDuration::from_hours(1)
    );
    // Within 30 days of expiry: new certificates from the same CA, and the
    // servers roll to take them.
    let late = now() + SignedDuration::from_hours(24 * 340);
    let renewed = plan_at(MANAGED, &observed, late);
    assert_eq!(nats_of(&renewed).ca_secret, nats_of(&first).ca_secret);
    assert_ne!(
        data(&nats_of(&renewed).server_secret, TLS_CERT_KEY),
        data(&nats_of(&first).server_secret, TLS_CERT_KEY)
    );
    assert_ne!(nats_of(&renewed).stateful_set, nats_of(&first).stateful_set);
}

/// The planned `nats.conf` and certificates, as Debian's nats-server reads
/// them (`-t`: test the configuration): paths moved into a temp dir.
#[test]
fn nats_server_accepts_the_configuration() {
    let binary = std::path::Path::new("/usr/sbin/nats-server");
    if !binary.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/sbin/nats-server is missing: install Debian's nats-server"
        );
        eprintln!("skipped: /usr/sbin/nats-server is missing");
        return;
    }
    let plan = plan_at(MANAGED, &Observed::default(), now());
    let nats = nats_of(&plan);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    for key in [CA_CERT_KEY, TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY] {
        std::fs::write(dir.path().join(key), data(&nats.server_secret, key)).unwrap();
    }
    let config = nats.config_map.data.as_ref().unwrap()[CONFIG_FILE]
        .replace(TLS_DIR, &root)
        .replace(&format!("\"{DATA_DIR}\""), &format!("\"{root}/data\""))
        .replace(PID_DIR, &root);
    let file = dir.path().join(CONFIG_FILE);
    std::fs::write(&file, config).unwrap();
    let output = std::process::Command::new(binary)
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .env("POD_NAME", "mq-nats-0")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
