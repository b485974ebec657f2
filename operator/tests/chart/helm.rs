//! Checks that need `helm` (and `kubernetes-validate`): the chart rendered
//! with each combination of values.

use super::*;

#[test]
fn helm_lint_strict_passes() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let output = helm
        .command()
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .expect("run helm lint");
    let text = output_text(&output);
    assert!(
        output.status.success(),
        "helm lint --strict failed:\n{text}"
    );
    assert!(text.contains("0 chart(s) failed"), "{text}");
}

#[test]
fn every_combination_passes_kubernetes_validate() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let Some(validate) = tool("kubernetes-validate", "chart check") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for combination in COMBINATIONS {
        let yaml = helm
            .template(combination.values)
            .unwrap_or_else(|e| panic!("{}: {e}", combination.name));
        // kubernetes-validate knows no ServiceMonitor schema (its CRD
        // comes with prometheus-operator): it is left out here and checked
        // in `service_monitor_scrapes_the_metrics_service`.
        let text = documents(&yaml)
            .iter()
            .filter(|d| d["kind"] != "ServiceMonitor")
            .map(|d| format!("---\n{d}\n"))
            .collect::<String>();
        let file = dir.path().join(format!("{}.yaml", combination.name));
        std::fs::write(&file, text).expect("write rendered chart");
        files.push(file);
    }
    let output = Command::new(&validate)
        .args(["--strict", "-k", KUBE_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = output_text(&output);
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{text}"
    );
    // Every object was checked against a schema, none skipped with a warning.
    assert!(!text.contains("WARN"), "{text}");
}

#[test]
fn rendered_objects_are_namespaced_except_crds_and_cluster_rbac() {
    let Some(helm) = Helm::find() else {
        return;
    };
    for combination in COMBINATIONS {
        let documents = helm.render(&combination);
        for document in &documents {
            let kind = document["kind"].as_str().expect("kind");
            let cluster_scoped = matches!(
                kind,
                "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
            );
            assert_eq!(
                document["metadata"]["namespace"].is_null(),
                cluster_scoped,
                "{}: {kind} {}",
                combination.name,
                document["metadata"]["name"]
            );
        }
        // Every CRD of crds/, as it is.
        let rendered: Vec<&Value> = of_kind(&documents, "CustomResourceDefinition");
        let expected = crds();
        assert_eq!(rendered.len(), expected.len(), "{}", combination.name);
        for crd in &expected {
            assert!(
                rendered.contains(&crd),
                "{}: a CRD is missing",
                combination.name
            );
        }
        // Bindings name rendered roles, and the operator's ServiceAccount.
        let service_account =
            deployment(&documents)["spec"]["template"]["spec"]["serviceAccountName"].clone();
        for binding in of_kind(&documents, "ClusterRoleBinding")
            .into_iter()
            .chain(of_kind(&documents, "RoleBinding"))
        {
            // A RoleBinding's Role is in its namespace (a ClusterRole and
            // its binding have none).
            let role_ref = &binding["roleRef"];
            assert!(
                documents.iter().any(|role| role["kind"] == role_ref["kind"]
                    && role["metadata"]["name"] == role_ref["name"]
                    && role["metadata"]["namespace"] == binding["metadata"]["namespace"]),
                "{}: {role_ref} is not rendered",
                combination.name
            );
            assert_eq!(
                binding["subjects"],
                json!([{"kind": "ServiceAccount", "name": service_account, "namespace": RELEASE_NAMESPACE}])
            );
        }
    }
}

#[test]
fn watching_every_namespace_grants_the_documented_rules_cluster_wide() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let documents = helm.render(&DEFAULTS);
    let cluster_role = object(&documents, "ClusterRole", FULLNAME);
    assert_eq!(cluster_role["rules"], operator_rules());
    object(&documents, "ClusterRoleBinding", FULLNAME);
    assert!(of_kind(&documents, "Role")
        .iter()
        .all(|role| role["metadata"]["name"] == format!("{FULLNAME}-leader-election")));

    let lease_role = object(&documents, "Role", &format!("{FULLNAME}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(lease_role["rules"], lease_rules(FULLNAME));
    assert_eq!(
        env(&documents, "KUBEMQTT_LEASE_NAME").as_deref(),
        Some(FULLNAME)
    );
    assert_eq!(env(&documents, "KUBEMQTT_WATCH_NAMESPACES"), None);
    object(&documents, "ServiceAccount", FULLNAME);
}

#[test]
fn watching_some_namespaces_grants_roles_there_and_nothing_cluster_wide() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let documents = helm.render(&TWO_NAMESPACES);
    assert!(of_kind(&documents, "ClusterRole").is_empty());
    assert!(of_kind(&documents, "ClusterRoleBinding").is_empty());
    for namespace in ["iot", "edge"] {
        let in_namespace = |kind: &str| {
            of_kind(&documents, kind)
                .into_iter()
                .find(|d| {
                    d["metadata"]["namespace"] == namespace && d["metadata"]["name"] == FULLNAME
                })
                .unwrap_or_else(|| panic!("no {kind} in {namespace}"))
        };
        assert_eq!(in_namespace("Role")["rules"], operator_rules());
        assert_eq!(in_namespace("RoleBinding")["roleRef"]["name"], FULLNAME);
    }
    let lease_role = object(&documents, "Role", &format!("{FULLNAME}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(lease_role["rules"], lease_rules(FULLNAME));
    // Two operator Roles and the lease Role; as many bindings.
    assert_eq!(of_kind(&documents, "Role").len(), 3);
    assert_eq!(of_kind(&documents, "RoleBinding").len(), 3);
    assert_eq!(
        env(&documents, "KUBEMQTT_WATCH_NAMESPACES").as_deref(),
        Some("iot,edge")
    );
}

#[test]
fn the_deployment_is_locked_down_and_probed() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let documents = helm.render(&DEFAULTS);
    let deployment = deployment(&documents);
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], RUN_AS_USER);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = container(&documents);
    assert_eq!(
        container["image"],
        "ghcr.io/kubemqtt/kubemqtt-operator:0.1.0"
    );
    assert_eq!(container["args"], json!(["run"]));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        container["ports"],
        json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let variables = container["env"].as_array().expect("env");
    let from_field = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(from_field("POD_NAME"), Some(json!("metadata.name")));
    assert_eq!(
        from_field("KUBEMQTT_LEASE_NAMESPACE"),
        Some(json!("metadata.namespace"))
    );
    assert_eq!(
        env(&documents, "KUBEMQTT_HTTP_ADDRESS").as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        env(&documents, "KUBEMQTT_CLUSTER_DOMAIN").as_deref(),
        Some("cluster.local")
    );
    assert_eq!(
        env(&documents, "KUBEMQTT_LOG_FORMAT").as_deref(),
        Some("json")
    );
    assert_eq!(env(&documents, "RUST_LOG").as_deref(), Some("info"));
    // The operator's own default broker image applies.
    assert_eq!(env(&documents, "KUBEMQTT_BROKER_IMAGE"), None);
    assert_eq!(env(&documents, "KUBEMQTT_BROKER_IMAGE_PULL_SECRETS"), None);
    assert!(of_kind(&documents, "PodDisruptionBudget").is_empty());
    assert!(of_kind(&documents, "ServiceMonitor").is_empty());

    // The metrics Service reaches the pods' HTTP port.
    let service = object(&documents, "Service", &format!("{FULLNAME}-metrics"));
    assert!(labels_include(
        &deployment["spec"]["template"]["metadata"]["labels"],
        &service["spec"]["selector"]
    ));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn two_replicas_share_one_lease_and_a_disruption_budget() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let documents = helm.render(&TWO_REPLICAS);
    let deployment = deployment(&documents);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let budget = object(&documents, "PodDisruptionBudget", FULLNAME);
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        env(&documents, "KUBEMQTT_LEASE_NAME").as_deref(),
        Some(FULLNAME)
    );
}

#[test]
fn service_monitor_scrapes_the_metrics_service() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let documents = helm.render(&SERVICE_MONITOR);
    let monitor = object(&documents, "ServiceMonitor", FULLNAME);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let service = object(&documents, "Service", &format!("{FULLNAME}-metrics"));
    assert!(labels_include(
        &service["metadata"]["labels"],
        &monitor["spec"]["selector"]["matchLabels"]
    ));
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([RELEASE_NAMESPACE])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");

    let refused = helm
        .template("metrics:\n  service: {enabled: false}\n  serviceMonitor: {enabled: true}\n")
        .expect_err("a ServiceMonitor without the Service");
    assert!(
        refused.contains("needs metrics.service.enabled"),
        "{refused}"
    );
}

/// The Prometheus Adapter rules, as a ConfigMap the adapter reads: the two
/// Pods metrics of MqttBroker autoscaling, from the broker's series.
#[test]
fn prometheus_adapter_rules_serve_the_autoscaling_metrics() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let defaults = helm.render(&DEFAULTS);
    assert!(defaults.iter().all(|d| d["kind"] != "ConfigMap"));
    let documents = helm.render(&SERVICE_MONITOR);
    let config_map = object(
        &documents,
        "ConfigMap",
        &format!("{FULLNAME}-adapter-rules"),
    );
    let config: Value = serde_saphyr::from_str(
        config_map["data"]["config.yaml"]
            .as_str()
            .expect("config.yaml"),
    )
    .expect("the adapter's YAML");
    let rules = config["rules"].as_array().expect("rules");
    let served: Vec<(&str, &str)> = rules
        .iter()
        .map(|rule| {
            (
                rule["seriesQuery"].as_str().unwrap_or_default(),
                rule["name"]["as"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        served,
        [
            (
                "kubemqtt_connections{namespace!=\"\",pod!=\"\"}",
                kubemqtt_operator::plan::autoscaling::CONNECTIONS_METRIC
            ),
            (
                "kubemqtt_messages_received_total{namespace!=\"\",pod!=\"\"}",
                kubemqtt_operator::plan::autoscaling::MESSAGES_METRIC
            ),
        ]
    );
    for rule in rules {
        assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
    }
    assert!(rules[1]["metricsQuery"]
        .as_str()
        .unwrap()
        .contains("rate(<<.Series>>{<<.LabelMatchers>>}[2m])"));
}

#[test]
fn custom_values_reach_the_objects() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let documents = helm.render(&CUSTOM);
    let pod = &deployment(&documents)["spec"]["template"]["spec"];
    let container = container(&documents);
    assert_eq!(
        container["image"],
        "registry.example.com/mqtt/operator:1.2.3"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(
        deployment(&documents)["spec"]["template"]["metadata"]["annotations"],
        json!({"example.com/team": "iot"})
    );
    assert_eq!(pod["serviceAccountName"], "mqtt-operator");
    assert!(of_kind(&documents, "ServiceAccount").is_empty());
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    for (name, value) in [
        (
            "KUBEMQTT_BROKER_IMAGE",
            "registry.example.com/mqtt/broker:1.2.3",
        ),
        (
            "KUBEMQTT_BROKER_IMAGE_PULL_SECRETS",
            "mirror-pull,other-pull",
        ),
        ("KUBEMQTT_CLUSTER_DOMAIN", "k8s.example.internal"),
        ("KUBEMQTT_HTTP_ADDRESS", "0.0.0.0:9090"),
        ("KUBEMQTT_LOG_FORMAT", "text"),
        ("KUBEMQTT_LEASE_NAME", "mqtt-leader"),
        ("RUST_LOG", "debug,kube=info"),
    ] {
        assert_eq!(env(&documents, name).as_deref(), Some(value), "{name}");
    }
    let lease_role = object(&documents, "Role", &format!("{FULLNAME}-leader-election"));
    assert_eq!(lease_role["rules"], lease_rules("mqtt-leader"));
}

#[test]
fn bad_values_are_refused() {
    let Some(helm) = Helm::find() else {
        return;
    };
    for (values, complaint) in [
        ("replicaCount: two\n", "/replicaCount"),
        ("replicaCount: -1\n", "/replicaCount"),
        ("image: {pullPolicy: Sometimes}\n", "/image/pullPolicy"),
        ("image: {repository: \"\"}\n", "/image/repository"),
        (
            "replicas: 2\n",
            "additional properties 'replicas' not allowed",
        ),
        (
            "operator: {watchNamespace: [iot]}\n",
            "'watchNamespace' not allowed",
        ),
        (
            "operator: {watchNamespaces: [Not_A_Namespace]}\n",
            "/operator/watchNamespaces/0",
        ),
        (
            "operator: {watchNamespaces: [iot, iot]}\n",
            "/operator/watchNamespaces",
        ),
        ("operator: {logFormat: xml}\n", "/operator/logFormat"),
        (
            "operator: {brokerImagePullSecrets: [Not_A_Name]}\n",
            "/operator/brokerImagePullSecrets/0",
        ),
        ("operator: {httpPort: 70000}\n", "/operator/httpPort"),
        (
            "resources: {requests: {cpu: lots}}\n",
            "/resources/requests/cpu",
        ),
        (
            "metrics: {serviceMonitor: {enabled: \"yes\"}}\n",
            "/metrics/serviceMonitor/enabled",
        ),
        (
            "metrics: {serviceMonitor: {interval: often}}\n",
            "/metrics/serviceMonitor/interval",
        ),
    ] {
        let error = helm
            .template(values)
            .expect_err(&format!("helm template accepted {values:?}"));
        assert!(
            error.contains("don't meet the specifications of the schema")
                && error.contains(complaint),
            "{values:?}: expected a schema error at {complaint}, got:\n{error}"
        );
    }
}

/// NOTES.txt as `helm install` would print it: rendered through a copy of
/// the chart where it is an ordinary template (`helm template` skips it).
fn notes(helm: &Helm, values: &str) -> String {
    let copy = helm.dir.path().join("chart");
    if !copy.exists() {
        copy_dir(&chart(), &copy);
        let notes = read(&copy.join("templates/NOTES.txt"));
        std::fs::remove_file(copy.join("templates/NOTES.txt")).expect("remove NOTES.txt");
        std::fs::write(
            copy.join("templates/_notes.tpl"),
            format!("{{{{- define \"test.notes\" -}}}}\n{notes}{{{{- end }}}}\n"),
        )
        .expect("write _notes.tpl");
        std::fs::write(
            copy.join("templates/notes.yaml"),
            "notes: {{ include \"test.notes\" . | quote }}\n",
        )
        .expect("write notes.yaml");
    }
    let yaml = helm.template_chart(&copy, values).expect("render NOTES");
    documents(&yaml)
        .iter()
        .find_map(|d| d["notes"].as_str().map(str::to_owned))
        .expect("the rendered notes")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("list directory") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[test]
fn notes_tell_the_next_three_commands() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let text = notes(&helm, "");
    for expected in [
        "kubectl -n kubemqtt-system rollout status deployment/kubemqtt-operator\n",
        "every namespace",
        "export NS=default",
        "kubectl -n \"$NS\" wait --for=condition=Ready mqttbroker/broker",
        "kubectl -n \"$NS\" get mqttbroker broker",
        "kubectl -n \"$NS\" get mqttbroker broker -o jsonpath='{.status.endpoint}",
        "stays False (reason LoadBalancerPending)",
        "kubectl -n \"$NS\" get secret device-1-mqtt-credentials -o jsonpath='{.data.password}' | base64 -d",
        "username, password, ca.crt, host, port, tls-port, uri, and\n   external-host",
    ] {
        assert!(text.contains(expected), "NOTES.txt lacks {expected:?}:\n{text}");
    }
    // The broker it applies is one the operator accepts.
    let manifest = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("echo '"))
        .and_then(|rest| rest.split_once("' |"))
        .map(|(json, _)| json)
        .expect("an `echo '<broker>' | kubectl apply` line");
    let broker = read_broker(manifest, Some("default")).expect("a valid MqttBroker");
    assert_eq!(broker.metadata.name.as_deref(), Some("broker"));

    let namespaced = notes(&helm, TWO_NAMESPACES.values);
    assert!(
        namespaced.contains("MqttBrokers and MqttUsers in: iot, edge"),
        "{namespaced}"
    );
    assert!(namespaced.contains("export NS=iot"), "{namespaced}");
}
