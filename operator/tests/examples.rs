//! The examples in `examples/` render, and every rendered object (and the
//! CRD) passes the Kubernetes 1.32 schemas and the CRD structural checks.
//!
//! The schema checks use `kubernetes-validate` and `crd-structural-check`
//! (installed by `../shared/tools/install-k8s-tools PREFIX`), found on PATH
//! or in the workspace's `.tools/bin`. Without them those checks are
//! skipped with a message, unless `KUBEMQTT_REQUIRE_K8S_TOOLS=1`, which
//! turns a missing tool into a failure (for CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use kubemqtt_operator::plan::{plan, Observed, Settings};
use kubemqtt_operator::render::{plan_yaml, read_broker};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("examples"))
        .expect("examples/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the minimal and production examples"
    );
    files
}

/// Renders `file` as `kubemqtt-operator render` does, at a fixed time.
fn render(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("readable example");
    let broker = read_broker(&text, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let now = "2025-06-01T12:00:00Z".parse().expect("valid time");
    let plan = plan(&broker, &Observed::default(), &Settings::default(), now)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    plan_yaml(&plan).expect("YAML output")
}

/// The tool's path, or `None` (after saying so) when it is not installed.
fn tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = on_path
        .into_iter()
        .chain([workspace().join(".tools/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let message = format!(
            "{name} not found on PATH or in .tools/bin; install it with \
             ../shared/tools/install-k8s-tools .tools"
        );
        if std::env::var("KUBEMQTT_REQUIRE_K8S_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{message}");
        }
        eprintln!("SKIPPED schema check: {message}");
    }
    found
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
    for file in examples() {
        let yaml = render(&file);
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&yaml).expect("rendered YAML reads back");
        let kinds: Vec<&str> = documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap",
                "Secret",
                "Secret",
                "Secret",
                "Service",
                "Service",
                "StatefulSet",
                "PodDisruptionBudget"
            ],
            "{}",
            file.display()
        );
    }
}

#[test]
fn rendered_objects_and_the_crd_pass_kubernetes_validate() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for example in examples() {
        let name = example.file_name().expect("file name");
        let rendered = dir.path().join(name);
        std::fs::write(&rendered, render(&example)).expect("write rendered objects");
        files.push(rendered);
    }
    files.push(workspace().join("crds/mqttbroker.yaml"));
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    run(&validate, &["--strict", "-k", "1.32.0"], &files);
}

#[test]
fn crds_pass_the_structural_schema_check() {
    let Some(check) = tool("crd-structural-check") else {
        return;
    };
    let crds: Vec<PathBuf> = std::fs::read_dir(workspace().join("crds"))
        .expect("crds/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    assert!(!crds.is_empty());
    let crds: Vec<&Path> = crds.iter().map(PathBuf::as_path).collect();
    run(&check, &[], &crds);
}
