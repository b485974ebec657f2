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

mod files;
mod helm;

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
