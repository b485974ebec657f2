//! `crds/` must hold exactly what `kubemqtt-operator crd` prints.

use std::path::Path;
use std::process::Command;

#[test]
fn crds_directory_matches_the_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubemqtt-operator"))
        .arg("crd")
        .output()
        .expect("run kubemqtt-operator crd");
    assert!(
        output.status.success(),
        "kubemqtt-operator crd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("UTF-8 output");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/mqttbroker.yaml");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        committed == generated,
        "crds/mqttbroker.yaml is out of date with the MqttBroker types. Regenerate it with:\n\n    \
         cargo run -p kubemqtt-operator -- crd > crds/mqttbroker.yaml\n"
    );
}
