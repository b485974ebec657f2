//! `crds/` must hold exactly what `kubemqtt-operator crd <file>` prints,
//! one file per CustomResourceDefinition, and nothing else.

use std::path::Path;
use std::process::Command;

const FILES: [&str; 4] = [
    "mqttbridge.yaml",
    "mqttbroker.yaml",
    "mqttdevicefleet.yaml",
    "mqttuser.yaml",
];

fn generated(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kubemqtt-operator"))
        .arg("crd")
        .args(args)
        .output()
        .expect("run kubemqtt-operator crd");
    assert!(
        output.status.success(),
        "kubemqtt-operator crd {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn crds_directory_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for file in FILES {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            committed == generated(&[file]),
            "crds/{file} is out of date with the Rust types. Regenerate it with:\n\n    \
             cargo run -p kubemqtt-operator -- crd {file} > crds/{file}\n"
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("read crds/")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    present.sort();
    assert_eq!(present, FILES, "crds/ holds exactly the generated files");
}

#[test]
fn all_crds_at_once_and_unknown_names_refused() {
    let all = generated(&[]);
    assert_eq!(
        all,
        format!(
            "{}---\n{}---\n{}---\n{}",
            generated(&["mqttbroker.yaml"]),
            generated(&["mqttuser.yaml"]),
            generated(&["mqttbridge.yaml"]),
            generated(&["mqttdevicefleet.yaml"])
        )
    );
    let output = Command::new(env!("CARGO_BIN_EXE_kubemqtt-operator"))
        .args(["crd", "nope.yaml"])
        .output()
        .expect("run kubemqtt-operator crd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mqttbroker.yaml, mqttuser.yaml"),
        "{stderr}"
    );
}
