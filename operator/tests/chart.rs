//! What ships: the Helm chart `charts/kubemqtt-operator`, the images'
//! Dockerfiles, and `e2e/run.sh` when no cluster answers.
//!
//! The chart checks use `helm` and `kubernetes-validate` (installed by
//! `scripts/install-k8s-tools.sh`), found on PATH or in the workspace's
//! `.tools/bin`. Without them those checks are skipped with a message,
//! unless `KUBEMQTT_REQUIRE_K8S_TOOLS=1`, which turns a missing tool into a
//! failure (for CI). The other checks need nothing but the files.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{tool, workspace};
use serde_json::{json, Value};

use kubemqtt_operator::plan::statefulset::RUN_AS_USER;
use kubemqtt_operator::render::read_broker;

const RELEASE: &str = "kubemqtt-operator";
const RELEASE_NAMESPACE: &str = "kubemqtt-system";
/// The objects' full name for that release: the release name, as it holds
/// the chart's.
const FULLNAME: &str = "kubemqtt-operator";
const KUBE_VERSION: &str = "1.32.0";

fn chart() -> PathBuf {
    workspace().join("charts/kubemqtt-operator")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm template` of the chart as release `kubemqtt-operator` in
/// `kubemqtt-system`, with the CRDs, for Kubernetes 1.32.
struct Helm {
    helm: PathBuf,
    dir: tempfile::TempDir,
}

impl Helm {
    fn find() -> Option<Helm> {
        Some(Helm {
            helm: tool("helm", "chart check")?,
            dir: tempfile::tempdir().expect("temporary directory"),
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.helm);
        // Keep helm's caches and settings out of the user's home.
        for variable in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
            command.env(variable, self.dir.path().join(variable));
        }
        command
    }

    /// The rendered YAML, or helm's error output.
    fn template_chart(&self, chart: &Path, values: &str) -> Result<String, String> {
        let values_file = self.dir.path().join("values.yaml");
        std::fs::write(&values_file, values).expect("write values");
        let output = self
            .command()
            .args(["template", RELEASE])
            .arg(chart)
            .args(["--namespace", RELEASE_NAMESPACE, "--include-crds"])
            .args(["--kube-version", KUBE_VERSION, "--values"])
            .arg(&values_file)
            .output()
            .expect("run helm template");
        if output.status.success() {
            Ok(String::from_utf8(output.stdout).expect("UTF-8 output"))
        } else {
            Err(output_text(&output))
        }
    }

    fn template(&self, values: &str) -> Result<String, String> {
        self.template_chart(&chart(), values)
    }

    fn render(&self, combination: &Combination) -> Vec<Value> {
        let yaml = self
            .template(combination.values)
            .unwrap_or_else(|e| panic!("{}: helm template failed:\n{e}", combination.name));
        documents(&yaml)
    }
}

/// The documents of a multi-document YAML text, without empty ones.
fn documents(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("YAML documents");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// A set of values the chart is rendered with.
struct Combination {
    name: &'static str,
    values: &'static str,
}

const DEFAULTS: Combination = Combination {
    name: "defaults",
    values: "",
};
const TWO_NAMESPACES: Combination = Combination {
    name: "two-namespaces",
    values: "operator:\n  watchNamespaces: [iot, edge]\n",
};
const TWO_REPLICAS: Combination = Combination {
    name: "two-replicas",
    values: "replicaCount: 2\npodDisruptionBudget:\n  enabled: true\n",
};
const SERVICE_MONITOR: Combination = Combination {
    name: "service-monitor",
    values: "metrics:\n  serviceMonitor:\n    enabled: true\n    interval: 15s\n    labels:\n      release: prometheus\nprometheusAdapter:\n  configMap:\n    enabled: true\n",
};
const CUSTOM: Combination = Combination {
    name: "custom",
    values: r#"
image:
  repository: registry.example.com/mqtt/operator
  tag: "1.2.3"
  pullPolicy: Always
imagePullSecrets: [{name: regcred}]
operator:
  brokerImage: registry.example.com/mqtt/broker:1.2.3
  brokerImagePullSecrets: [mirror-pull, other-pull]
  clusterDomain: k8s.example.internal
  logLevel: debug,kube=info
  logFormat: text
  httpPort: 9090
  leaseName: mqtt-leader
serviceAccount:
  create: false
  name: mqtt-operator
resources:
  requests: {cpu: 200m, memory: 128Mi}
  limits: {cpu: "1", memory: 512Mi}
nodeSelector: {kubernetes.io/os: linux}
tolerations:
  - {key: dedicated, operator: Equal, value: system, effect: NoSchedule}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}
podAnnotations: {example.com/team: iot}
priorityClassName: system-cluster-critical
"#,
};

const COMBINATIONS: [Combination; 5] = [
    DEFAULTS,
    TWO_NAMESPACES,
    TWO_REPLICAS,
    SERVICE_MONITOR,
    CUSTOM,
];

/// What the operator does in each namespace it watches (see
/// `templates/_helpers.tpl` for where each verb comes from). The chart's
/// README lists the same rules.
fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["kubemqtt.io"],
         "resources": ["mqttbrokers", "mqttusers", "mqttbridges", "mqttdevicefleets"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["kubemqtt.io"],
         "resources": ["mqttbrokers/status", "mqttusers/status", "mqttbridges/status",
                       "mqttdevicefleets/status"],
         "verbs": ["patch"]},
        // The bridge controller's MqttUser for each bridge.
        {"apiGroups": ["kubemqtt.io"], "resources": ["mqttusers"], "verbs": ["create", "patch"]},
        // The fleet controller's finalizer (a deleted fleet leaves its
        // broker first), and the owner references of the fleets' Secrets.
        {"apiGroups": ["kubemqtt.io"], "resources": ["mqttdevicefleets"], "verbs": ["patch"]},
        {"apiGroups": ["kubemqtt.io"], "resources": ["mqttdevicefleets/finalizers"],
         "verbs": ["update"]},
        // `delete`: a managed NATS the spec dropped.
        {"apiGroups": [""], "resources": ["configmaps", "secrets", "services"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        // `delete`: a StatefulSet is replaced (without its pods) when its
        // volume claims change.
        {"apiGroups": ["apps"], "resources": ["statefulsets"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        // A broker's pods: where to push credentials, and who confirmed them.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        // Grown when `persistence.size` grows.
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["list", "patch"]},
        // With `tls.certManager`.
        {"apiGroups": ["cert-manager.io"], "resources": ["certificates"],
         "verbs": ["get", "create", "patch"]},
        // `delete`: a broker scaled to one replica has no budget.
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        // With `spec.autoscaling` (provider hpa, or keda with KEDA installed).
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
         "verbs": ["get", "create", "patch", "delete"]},
        {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"],
         "verbs": ["get", "create", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// The leader election's rules, in the release namespace.
fn lease_rules(lease: &str) -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["get", "patch"]},
    ])
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn object<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn deployment(documents: &[Value]) -> &Value {
    object(documents, "Deployment", FULLNAME)
}

fn container(documents: &[Value]) -> &Value {
    let containers = deployment(documents)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The container's environment variables with a literal value.
fn env(documents: &[Value], name: &str) -> Option<String> {
    container(documents)["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|variable| variable["name"] == name)
        .map(|variable| {
            variable["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no literal value"))
                .to_owned()
        })
}

/// Whether every label of `subset` is in `labels`.
fn labels_include(labels: &Value, subset: &Value) -> bool {
    let subset = subset.as_object().expect("labels");
    !subset.is_empty() && subset.iter().all(|(key, value)| &labels[key] == value)
}

/// The CRDs in `crds/`, as documents.
fn crds() -> Vec<Value> {
    yaml_files(&workspace().join("crds"))
        .iter()
        .flat_map(|file| documents(&read(file)))
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------
// checks that need only the files

#[test]
fn chart_crds_are_copies_of_the_crds_directory() {
    let source = workspace().join("crds");
    let copies = chart().join("crds");
    let names = |dir: &Path| -> BTreeSet<String> {
        yaml_files(dir)
            .iter()
            .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
            .collect()
    };
    let fix = "copy them again with:\n\n    cp crds/*.yaml charts/kubemqtt-operator/crds/\n";
    assert!(!names(&source).is_empty(), "crds/ holds no CRD");
    assert_eq!(
        names(&source),
        names(&copies),
        "charts/kubemqtt-operator/crds/ must hold exactly the files of crds/; {fix}"
    );
    for name in names(&source) {
        assert!(
            read(&source.join(&name)) == read(&copies.join(&name)),
            "charts/kubemqtt-operator/crds/{name} differs from crds/{name}; {fix}"
        );
    }
}

#[test]
fn chart_app_version_is_the_operator_version() {
    let chart_yaml: Value = serde_saphyr::from_str(&read(&chart().join("Chart.yaml"))).unwrap();
    assert_eq!(
        chart_yaml["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml's appVersion (the default image tag) must be the operator's version"
    );
}

/// The dotted paths of the schema's leaves (properties without properties).
fn schema_leaves(schema: &Value, prefix: &str, leaves: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else {
        leaves.push(prefix.to_owned());
        return;
    };
    for (key, property) in properties {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        schema_leaves(property, &path, leaves);
    }
}

#[test]
fn every_value_has_a_default_a_schema_and_a_line_in_the_readme() {
    let schema: Value = serde_json::from_str(&read(&chart().join("values.schema.json")))
        .expect("values.schema.json is JSON");
    let values: Value = serde_saphyr::from_str(&read(&chart().join("values.yaml"))).unwrap();
    let readme = read(&chart().join("README.md"));
    let mut leaves = Vec::new();
    schema_leaves(&schema, "", &mut leaves);
    // `global` is Helm's, for parent charts.
    leaves.retain(|leaf| leaf != "global");
    assert!(leaves.len() > 20, "{leaves:?}");
    for leaf in &leaves {
        let pointer = format!("/{}", leaf.replace('.', "/"));
        assert!(
            values.pointer(&pointer).is_some(),
            "values.yaml has no default for {leaf}"
        );
        assert!(
            readme.contains(&format!("| `{leaf}` |")),
            "the chart README's values table has no row for `{leaf}`"
        );
    }
}

#[test]
fn the_readme_lists_the_rbac_rules() {
    let readme = read(&chart().join("README.md"));
    let list = |value: &Value| {
        value
            .as_array()
            .expect("list")
            .iter()
            .map(|item| item.as_str().expect("string"))
            .map(|item| if item.is_empty() { "\"\" (core)" } else { item })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for rule in operator_rules().as_array().expect("rules") {
        let row = format!(
            "| {} | {} | {} |",
            list(&rule["apiGroups"]),
            list(&rule["resources"]),
            list(&rule["verbs"])
        );
        assert!(
            readme.contains(&row),
            "the chart README does not list the rule\n{row}"
        );
    }
}

/// The instructions of a Dockerfile's last stage, and the whole text.
fn dockerfile(name: &str) -> (String, Vec<String>) {
    let text = read(&workspace().join(name));
    // Join continuation lines, drop comments.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let last_from = lines
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("a FROM");
    (joined, lines[last_from..].to_vec())
}

/// The `[[bin]]` names of a workspace member.
fn binaries(member: &str) -> Vec<String> {
    let manifest: toml::Value = toml::from_str(&read(&workspace().join(member).join("Cargo.toml")))
        .expect("Cargo.toml is TOML");
    manifest["bin"]
        .as_array()
        .map(|bins| {
            bins.iter()
                .filter_map(|bin| bin["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dockerfiles_build_the_workspace_binaries_and_run_them_as_non_root() {
    let workspace_manifest: toml::Value =
        toml::from_str(&read(&workspace().join("Cargo.toml"))).expect("Cargo.toml");
    let members: Vec<&str> = workspace_manifest["workspace"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("member"))
        .collect();

    for (file, member, ports) in [
        ("Dockerfile.broker", "broker", "1883 8883 8083 8084 8080"),
        ("Dockerfile.operator", "operator", "8080"),
        ("Dockerfile.bridge", "bridge", "9090"),
    ] {
        let binary = format!("kubemqtt-{member}");
        assert!(
            members.contains(&member),
            "{member} is not a workspace member"
        );
        assert!(
            binaries(member).contains(&binary),
            "{member}/Cargo.toml has no binary {binary}"
        );
        let (text, runtime) = dockerfile(file);
        assert!(
            text.contains(&format!("cargo build --release --locked -p {binary}")),
            "{file} must build package {binary}"
        );
        assert!(
            text.contains(&format!("target/release/{binary}")),
            "{file} must take target/release/{binary}"
        );
        let expect_line = |line: &str| {
            assert!(
                runtime.iter().any(|l| l == line),
                "{file}'s last stage lacks `{line}`: {runtime:#?}"
            )
        };
        expect_line("FROM gcr.io/distroless/cc-debian12:nonroot");
        expect_line(&format!(
            "COPY --from=builder /out/{binary} /usr/local/bin/{binary}"
        ));
        expect_line(&format!("USER {RUN_AS_USER}:{RUN_AS_USER}"));
        expect_line(&format!("EXPOSE {ports}"));
        expect_line(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]"));
        // Distroless has no shell: no shell-form instruction may run there.
        for line in &runtime {
            assert!(
                !line.starts_with("RUN ") && !line.starts_with("ENTRYPOINT /"),
                "{file}: `{line}` needs a shell at run time"
            );
        }
    }

    // The build context holds every workspace member.
    let ignore = read(&workspace().join(".dockerignore"));
    let kept: Vec<&str> = ignore
        .lines()
        .filter_map(|line| line.strip_prefix('!'))
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(kept.contains(&needed), ".dockerignore drops {needed}");
    }
    for member in members {
        assert!(
            kept.contains(&format!("{member}/").as_str()),
            ".dockerignore drops workspace member {member}"
        );
    }
}

fn e2e(envs: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    // A cluster that refuses connections at once.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster: {server: 'https://127.0.0.1:1'}\n\
         contexts:\n- name: none\n  context: {cluster: none, user: none}\ncurrent-context: none\n\
         users:\n- name: none\n  user: {token: none}\n",
    )
    .expect("write kubeconfig");
    let mut command = Command::new("bash");
    command
        .arg(workspace().join("e2e/run.sh"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("E2E_CREATE_CLUSTER")
        .env_remove("E2E_REQUIRE_CLUSTER")
        .stdin(std::process::Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run e2e/run.sh")
}

#[test]
fn e2e_skips_without_a_cluster_unless_one_is_required() {
    let skipped = e2e(&[]);
    let text = output_text(&skipped);
    assert_eq!(skipped.status.code(), Some(0), "{text}");
    assert!(
        text.contains("e2e: SKIPPED: no Kubernetes cluster answers"),
        "{text}"
    );

    let required = e2e(&[("E2E_REQUIRE_CLUSTER", "1")]);
    let text = output_text(&required);
    assert_eq!(required.status.code(), Some(1), "{text}");
    assert!(
        text.contains("e2e: FAILED: no Kubernetes cluster answers")
            && text.contains("E2E_REQUIRE_CLUSTER=1"),
        "{text}"
    );

    let wrong = e2e(&[("E2E_CREATE_CLUSTER", "minikube")]);
    assert_eq!(wrong.status.code(), Some(1), "{}", output_text(&wrong));
}

#[test]
fn scripts_parse_and_pass_shellcheck() {
    let scripts = [
        workspace().join("e2e/run.sh"),
        workspace().join("scripts/install-k8s-tools.sh"),
        workspace().join("scripts/bench-fleets.sh"),
        workspace().join("scripts/bench-operator-cluster.sh"),
        workspace().join("scripts/bench-cluster.sh"),
        workspace().join("scripts/lib/page-section.sh"),
    ];
    for script in &scripts {
        let output = Command::new("bash")
            .arg("-n")
            .arg(script)
            .output()
            .expect("run bash -n");
        assert!(output.status.success(), "{}", output_text(&output));
    }
    let Ok(output) = Command::new("shellcheck").args(&scripts).output() else {
        eprintln!("SKIPPED shellcheck: not installed (apt-get install shellcheck)");
        return;
    };
    assert!(output.status.success(), "{}", output_text(&output));
}

// ---------------------------------------------------------------------------
// checks that need helm (and kubernetes-validate)

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
