//! Custom resources in the examples against their CRD.

use super::*;

/// The `openAPIV3Schema` of the CRD in `crds/` that defines the kind and
/// version of `document`.
fn crd_schema(document: &Value) -> Value {
    let kind = kind(document);
    let version = document["apiVersion"]
        .as_str()
        .and_then(|api_version| api_version.rsplit('/').next())
        .unwrap_or_default();
    let crds = std::fs::read_dir(workspace().join("crds")).expect("crds/ exists");
    for crd in crds.map(|entry| entry.expect("readable entry").path()) {
        for definition in documents(&crd) {
            if definition["spec"]["names"]["kind"] != kind {
                continue;
            }
            let versions = definition["spec"]["versions"].as_array().cloned();
            let schema = versions
                .unwrap_or_default()
                .into_iter()
                .find(|v| v["name"] == version)
                .map(|v| v["schema"]["openAPIV3Schema"].clone());
            return schema
                .unwrap_or_else(|| panic!("{} has no version {version} of {kind}", crd.display()));
        }
    }
    panic!("no CRD in crds/ defines the kind `{kind}`")
}

/// What the apiserver would refuse in `document` (a custom resource), as
/// `path: problem` lines: the OpenAPI checks of its CRD's schema with
/// strict field validation (what `kubectl apply` asks for), then the CEL
/// rules. Not checked: `format`s and the CEL cost limits.
fn crd_violations(document: &Value) -> Vec<String> {
    let schema = crd_schema(document);
    let mut violations = Vec::new();
    let mut patterns = Vec::new();
    let Some(fields) = document.as_object() else {
        return vec!["the document is not an object".to_owned()];
    };
    // Every object has these; CRD schemas do not declare them.
    for (key, value) in fields {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match schema["properties"].get(key) {
            Some(field_schema) => check(value, field_schema, key, &mut violations, &mut patterns),
            None => violations.push(format!("{key}: unknown field")),
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        if !fields.contains_key(required) {
            violations.push(format!("{required}: required"));
        }
    }
    if document["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        violations.push("metadata.name: required".to_owned());
    }
    for (path, pattern, text) in patterns {
        if !matches_pattern(&text, &pattern) {
            violations.push(format!("{path}: `{text}` does not match `{pattern}`"));
        }
    }
    if let Err(errors) = Validator::new().validate(&schema, document, None) {
        violations.extend(
            errors
                .as_slice()
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    violations
}

/// Checks `value` against the OpenAPI `schema` at `path`; string patterns
/// are collected in `patterns` for [`matches_pattern`].
fn check(
    value: &Value,
    schema: &Value,
    path: &str,
    violations: &mut Vec<String>,
    patterns: &mut Vec<(String, String, String)>,
) {
    let mut problem = |message: String| violations.push(format!("{path}: {message}"));
    if value.is_null() {
        if schema["nullable"] != true {
            problem("may not be null".to_owned());
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            problem("must be an integer or a string".to_owned());
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        problem(format!("must be of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            problem(format!("must be one of {}", schema["enum"]));
        }
    }
    if let Some(number) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| number < min) {
            problem(format!("must be at least {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| number > max) {
            problem(format!("must be at most {}", schema["maximum"]));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min) {
            problem(format!(
                "must be at least {} characters",
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
            problem(format!(
                "must be at most {} characters",
                schema["maxLength"]
            ));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            patterns.push((path.to_owned(), pattern.to_owned(), text.to_owned()));
        }
    }
    if let Some(items) = value.as_array() {
        for (index, item) in items.iter().enumerate() {
            let path = format!("{path}[{index}]");
            check(item, &schema["items"], &path, violations, patterns);
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap_or_default();
            if !fields.contains_key(required) {
                violations.push(format!("{path}.{required}: required"));
            }
        }
        if schema["x-kubernetes-preserve-unknown-fields"] == true {
            return;
        }
        for (key, field) in fields {
            let path = format!("{path}.{key}");
            match (
                schema["properties"].get(key),
                &schema["additionalProperties"],
            ) {
                (Some(field_schema), _) => check(field, field_schema, &path, violations, patterns),
                (None, Value::Object(_)) => check(
                    field,
                    &schema["additionalProperties"],
                    &path,
                    violations,
                    patterns,
                ),
                (None, Value::Bool(true)) => {}
                (None, _) => violations.push(format!("{path}: unknown field")),
            }
        }
    }
}

/// Whether `text` matches the schema `pattern`, with the regular
/// expressions of CEL's `matches` (RE2 syntax, as the apiserver's).
fn matches_pattern(text: &str, pattern: &str) -> bool {
    let program = Program::compile("text.matches(pattern)").expect("a valid CEL expression");
    let mut context = CelContext::default();
    context.add_variable_from_value("text", text.to_owned());
    context.add_variable_from_value("pattern", pattern.to_owned());
    match program.execute(&context) {
        Ok(CelValue::Bool(matched)) => matched,
        other => panic!("cannot match `{text}` against `{pattern}`: {other:?}"),
    }
}

#[test]
fn custom_resources_in_the_examples_match_their_crd() {
    let mut checked = BTreeMap::<String, usize>::new();
    // And the broker e2e/run.sh applies.
    let e2e = workspace().join("e2e/broker.yaml");
    for file in examples().into_iter().chain([e2e]) {
        for document in documents(&file) {
            let is_ours = document["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("kubemqtt.io/"));
            if !is_ours {
                continue;
            }
            let violations = crd_violations(&document);
            assert!(
                violations.is_empty(),
                "{} ({} {}):\n{}",
                file.display(),
                kind(&document),
                document["metadata"]["name"],
                violations.join("\n")
            );
            *checked.entry(kind(&document).to_owned()).or_default() += 1;
        }
    }
    assert!(checked["MqttBroker"] >= 2, "{checked:?}");
    assert!(checked["MqttUser"] >= 2, "{checked:?}");
}

/// The check above can fail: each mistake below is one the apiserver
/// would refuse.
#[test]
fn the_crd_check_finds_what_the_apiserver_would_refuse() {
    let user = json!({
        "apiVersion": "kubemqtt.io/v1alpha1",
        "kind": "MqttUser",
        "metadata": {"name": "device-1"},
        "spec": {
            "brokerRef": {"name": "broker"},
            "acl": [{"action": "publish", "topic": "devices/%u/#"}],
            "quotas": {"connections": 1},
        },
    });
    assert_eq!(crd_violations(&user), Vec::<String>::new());

    let with = |pointer: &str, value: Value| {
        let mut changed = user.clone();
        *changed.pointer_mut(pointer).expect("an existing field") = value;
        crd_violations(&changed)
    };
    let one = |violations: Vec<String>, expected: &str| {
        assert!(
            violations.len() == 1 && violations[0].starts_with(expected),
            "expected `{expected}`, got {violations:?}"
        );
    };
    one(
        with("/spec/acl/0/action", json!("read")),
        "spec.acl[0].action: must be one of",
    );
    one(
        with("/spec/quotas/connections", json!(0)),
        "spec.quotas.connections: must be at least",
    );
    one(
        with("/spec/quotas", json!({"connection": 1})),
        "spec.quotas.connection: unknown field",
    );
    one(
        with("/spec/brokerRef", json!({})),
        "spec.brokerRef.name: required",
    );
    one(
        with("/spec/acl", json!({"action": "publish"})),
        "spec.acl: must be of type \"array\"",
    );
    let mut username = user.clone();
    username["spec"]["username"] = json!("device 1");
    one(
        crd_violations(&username),
        "spec.username: `device 1` does not match",
    );
    // The CRD's CEL rule on the name's length.
    let long_name = "d".repeat(235);
    let violations = with("/metadata/name", json!(long_name));
    assert!(
        violations
            .iter()
            .any(|v| v.contains("at most 234 characters")),
        "{violations:?}"
    );
    // The kind picks the CRD: a broker's fields are not a user's.
    let mut broker = user.clone();
    broker["kind"] = json!("MqttBroker");
    let violations = crd_violations(&broker);
    assert!(
        violations.contains(&"spec.brokerRef: unknown field".to_owned()),
        "{violations:?}"
    );
}
