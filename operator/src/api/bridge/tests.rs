use kube::CustomResourceExt;
use serde_json::Value;

use super::*;
use crate::api::schema_checks::undocumented;

fn crd() -> Value {
    serde_json::to_value(MqttBridge::crd()).unwrap()
}

#[test]
fn names_columns_and_documentation() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "mqttbridges.kubemqtt.io");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["mqbr"])
    );
    let version = &crd["spec"]["versions"][0];
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Broker", "Ready", "Forwarded", "Dead", "Lag", "Age"]
    );
    let mut missing = Vec::new();
    undocumented(&version["schema"]["openAPIV3Schema"], "", &mut missing);
    assert_eq!(missing, Vec::<String>::new());
}

fn bridge(yaml: &str) -> MqttBridge {
    let spec: MqttBridgeSpec = serde_saphyr::from_str(yaml).unwrap();
    MqttBridge::new("plant", spec)
}

#[test]
fn cel_rules_refuse_what_cannot_work() {
    let good = bridge(
        "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {http: {url: 'http://x'}}\n",
    );
    assert!(good.validate_cel().is_ok(), "{:?}", good.validate_cel());
    let cases = [
        ("brokerRef: {name: mq}\n", "at least one route"),
        (
            "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {}\n",
            "exactly one sink",
        ),
        (
            "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {http: {url: 'http://x'}, mqtt: {host: h}}\n",
            "exactly one sink",
        ),
        (
            "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {http: {url: 'http://x'}}\n  deadLetter: {table: t}\n",
            "dead-letter table needs a postgres sink",
        ),
        (
            "brokerRef: {name: mq}\nroutes:\n- {name: r, filters: [a/#], sink: {http: {url: 'http://x'}}}\n- {name: r, filters: [b/#], sink: {http: {url: 'http://x'}}}\n",
            "route names must be unique",
        ),
        (
            "brokerRef: {name: mq}\ncommands:\n- {name: c, http: {tokenSecretRef: {name: s, key: k}}, amqp: {url: 'amqp://h', queue: q}}\n",
            "exactly one command source",
        ),
        (
            "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {nats: {url: 'nats://h', subject: s, tls: {certSecretRef: {name: c, key: tls.crt}}}}\n",
            "certSecretRef and keySecretRef go together",
        ),
        (
            "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {http: {url: 'http://x', tls: {caSecretRef: {name: c, key: ca.crt}}}}\n",
            "tls needs an https:// url",
        ),
        (
            "brokerRef: {name: mq}\nroutes:\n- name: r\n  filters: [a/#]\n  sink: {amqp: {url: 'amqp://h', routingKey: q, tls: {}}}\n",
            "tls needs an amqps:// url",
        ),
        (
            "brokerRef: {name: mq}\ncommands:\n- {name: c, amqp: {url: 'amqp://h', queue: q, tls: {}}}\n",
            "tls needs an amqps:// url",
        ),
        (
            "brokerRef: {name: mq}\ncommands:\n- {name: c, nats: {url: 'nats://h', stream: s, consumer: c, tls: {keySecretRef: {name: c, key: tls.key}}}}\n",
            "certSecretRef and keySecretRef go together",
        ),
    ];
    for (yaml, expected) in cases {
        let errors = bridge(yaml).validate_cel().unwrap_err().to_string();
        assert!(errors.contains(expected), "{yaml}: {errors}");
    }
}
