//! What the operator's integration tests share: the workspace's root and
//! the offline Kubernetes tools (helm, kubernetes-validate,
//! crd-structural-check) that `scripts/install-k8s-tools.sh` installs.

use std::path::{Path, PathBuf};

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tool's path, found on `PATH` or in `.tools/bin`, or `None` (after
/// saying so, for the `check`) when it is not installed. With
/// `KUBEMQTT_REQUIRE_K8S_TOOLS=1` (CI) a missing tool fails the test.
pub fn tool(name: &str, check: &str) -> Option<PathBuf> {
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
             scripts/install-k8s-tools.sh"
        );
        if std::env::var("KUBEMQTT_REQUIRE_K8S_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{message}");
        }
        eprintln!("SKIPPED {check}: {message}");
    }
    found
}
