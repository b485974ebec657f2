//! Checks that need only the files: the chart's CRDs, version, values
//! and README; the Dockerfiles; `e2e/run.sh`; the scripts.

use super::*;

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
