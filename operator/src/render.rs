//! YAML in and out, without a cluster: the CRDs, brokers, users and
//! bridges read from a file (checked against their CRD's schema and CEL
//! rules as the apiserver would), and what the operator would create for
//! them, written as one multi-document stream.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::core::TypeMeta;
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::api::{MqttBridge, MqttBroker, MqttUser};
use crate::plan::bridge::{plan_bridge, BridgePlan, BridgePlanError};
use crate::plan::configmap::CA_BUNDLE_KEY;
use crate::plan::secrets::{read_clients_ca, CREDENTIALS_KEY};
use crate::plan::user_secret::{plan_user, UserObserved, UserPlanError};
use crate::plan::{self, Observed, Plan, PlanError, Settings};

/// The namespace of a broker that names none, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a broker could not be read or rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The text is not YAML of the right shape.
    #[error("cannot read the {kind}: {message}")]
    Parse {
        /// What was being read.
        kind: &'static str,
        /// Why it could not be.
        message: String,
    },
    /// A document of a multi-document file is not one the operator reads.
    #[error("document {index}: expected an MqttBroker, an MqttUser or an MqttBridge ({expected_api_version}), found {api_version} {kind}")]
    UnknownDocument {
        /// Its position in the file, from 1.
        index: usize,
        /// The `apiVersion` the operator serves.
        expected_api_version: String,
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
    /// A user or a bridge names a broker the file does not hold.
    #[error("{kind} {name} names MqttBroker {broker}, which is not in the file")]
    NoSuchBroker {
        /// `MqttUser` or `MqttBridge`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The broker it names.
        broker: String,
    },
    /// A bridge cannot be planned (an expression that does not parse).
    #[error("MqttBridge {bridge}: {source}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// Why.
        source: BridgePlanError,
    },
    /// A user cannot be planned.
    #[error("MqttUser {user}: {source}")]
    User {
        /// The user.
        user: String,
        /// Why.
        source: UserPlanError,
    },
    /// The document is some other kind of object.
    #[error("expected apiVersion {expected_api_version} and kind MqttBroker, found {api_version} {kind}")]
    NotABroker {
        /// The `apiVersion` the operator serves.
        expected_api_version: String,
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
    /// The document and the command line name different namespaces.
    #[error("the resource is in namespace {in_file}, but {requested} was requested")]
    NamespaceMismatch {
        /// `metadata.namespace` of the document.
        in_file: String,
        /// The namespace asked for.
        requested: String,
    },
    /// The apiserver would reject the resource.
    #[error("the {kind} is invalid: {message}")]
    Invalid {
        /// `MqttBroker` or `MqttUser`.
        kind: &'static str,
        /// The broken rules.
        message: String,
    },
    /// Fields the CRD does not have (typos, usually): the apiserver would
    /// refuse them with strict field validation, or drop them.
    #[error("unknown fields in the {kind}: {}", .fields.join(", "))]
    UnknownFields {
        /// `MqttBroker` or `MqttUser`.
        kind: &'static str,
        /// Their paths.
        fields: Vec<String>,
    },
    /// The broker cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The output could not be written as YAML.
    #[error("cannot write YAML: {0}")]
    Serialize(String),
}

/// The CustomResourceDefinitions, each with the file name it has in
/// `crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("mqttbroker.yaml", MqttBroker::crd()),
        ("mqttuser.yaml", MqttUser::crd()),
        ("mqttbridge.yaml", crate::api::MqttBridge::crd()),
        ("mqttdevicefleet.yaml", crate::api::MqttDeviceFleet::crd()),
    ]
}

/// One CustomResourceDefinition as YAML (what `crds/<file>` holds).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, RenderError> {
    serde_saphyr::to_string(crd).map_err(|e| RenderError::Serialize(e.to_string()))
}

/// Reads one `MqttBroker` from YAML. A broker without a namespace is put
/// in `namespace` (or [`DEFAULT_NAMESPACE`]); one in another namespace is
/// refused. The broker is checked as the apiserver would: no fields the
/// CRD lacks, and the CRD's validation rules.
pub fn read_broker(yaml: &str, namespace: Option<&str>) -> Result<MqttBroker, RenderError> {
    let types: TypeMeta = serde_saphyr::from_str(yaml).map_err(|e| RenderError::Parse {
        kind: "MqttBroker",
        message: e.to_string(),
    })?;
    let expected_api_version = MqttBroker::api_version(&()).into_owned();
    if types.api_version != expected_api_version || types.kind != MqttBroker::kind(&()) {
        return Err(RenderError::NotABroker {
            expected_api_version,
            api_version: types.api_version,
            kind: types.kind,
        });
    }
    let document: serde_json::Value =
        serde_saphyr::from_str(yaml).map_err(|e| RenderError::Parse {
            kind: "MqttBroker",
            message: e.to_string(),
        })?;
    read_resource(document, "MqttBroker", namespace)
}

/// The resources of a (multi-document) YAML text.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// The `MqttBroker`s, in file order.
    pub brokers: Vec<MqttBroker>,
    /// The `MqttUser`s, in file order.
    pub users: Vec<MqttUser>,
    /// The `MqttBridge`s, in file order.
    pub bridges: Vec<MqttBridge>,
    /// Secrets the brokers and users read (a team's CA, a password).
    pub secrets: Vec<Secret>,
}

/// Reads every document of `yaml`: each must be an `MqttBroker` or an
/// `MqttUser`, checked as [`read_broker`] checks a broker, or a `v1`
/// Secret one of them reads (a team's CA, a user's password).
pub fn read_resources(yaml: &str, namespace: Option<&str>) -> Result<Resources, RenderError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| RenderError::Parse {
            kind: "resources",
            message: e.to_string(),
        })?;
    let expected_api_version = MqttBroker::api_version(&()).into_owned();
    let mut resources = Resources::default();
    for (index, document) in documents.into_iter().filter(|d| !d.is_null()).enumerate() {
        let field = |key: &str| document[key].as_str().unwrap_or_default().to_owned();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if api_version == "v1" && kind == "Secret" {
            let mut secret: Secret =
                serde_json::from_value(document).map_err(|e| RenderError::Parse {
                    kind: "Secret",
                    message: e.to_string(),
                })?;
            // As the apiserver stores it.
            for (key, value) in secret.string_data.take().unwrap_or_default() {
                secret
                    .data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, k8s_openapi::ByteString(value.into_bytes()));
            }
            if secret.metadata.namespace.is_none() {
                secret.metadata.namespace = Some(namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned());
            }
            resources.secrets.push(secret);
            continue;
        }
        match (api_version == expected_api_version, kind.as_str()) {
            (true, "MqttBroker") => {
                resources
                    .brokers
                    .push(read_resource(document, "MqttBroker", namespace)?)
            }
            (true, "MqttUser") => resources
                .users
                .push(read_resource(document, "MqttUser", namespace)?),
            (true, "MqttBridge") => {
                resources
                    .bridges
                    .push(read_resource(document, "MqttBridge", namespace)?)
            }
            _ => {
                return Err(RenderError::UnknownDocument {
                    index: index + 1,
                    expected_api_version,
                    api_version,
                    kind,
                })
            }
        }
    }
    Ok(resources)
}

/// A custom resource from its JSON form, checked as the apiserver would.
fn read_resource<K>(
    document: serde_json::Value,
    kind: &'static str,
    namespace: Option<&str>,
) -> Result<K, RenderError>
where
    K: CustomResourceExt + Resource + DeserializeOwned + CelChecked,
{
    let unknown = unknown_spec_fields(&document, K::crd())?;
    if !unknown.is_empty() {
        return Err(RenderError::UnknownFields {
            kind,
            fields: unknown,
        });
    }
    let mut resource: K = serde_json::from_value(document).map_err(|e| RenderError::Parse {
        kind,
        message: e.to_string(),
    })?;
    let meta = resource.meta_mut();
    match (&meta.namespace, namespace) {
        (Some(in_file), Some(requested)) if in_file != requested => {
            return Err(RenderError::NamespaceMismatch {
                in_file: in_file.clone(),
                requested: requested.to_owned(),
            });
        }
        (Some(_), _) => {}
        (None, requested) => {
            meta.namespace = Some(requested.unwrap_or(DEFAULT_NAMESPACE).to_owned())
        }
    }
    resource
        .check_cel()
        .map_err(|message| RenderError::Invalid { kind, message })?;
    Ok(resource)
}

/// A resource whose CRD's CEL rules can be checked offline.
pub trait CelChecked {
    /// The broken rules, joined.
    fn check_cel(&self) -> Result<(), String>;
}

macro_rules! cel_checked {
    ($kind:ty) => {
        impl CelChecked for $kind {
            fn check_cel(&self) -> Result<(), String> {
                self.validate_cel().map_err(|errors| {
                    errors
                        .as_slice()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            }
        }
    };
}
cel_checked!(MqttBroker);
cel_checked!(MqttUser);
cel_checked!(MqttBridge);

/// The paths of the fields under `spec` of `document` that the schema of
/// `crd` does not have.
fn unknown_spec_fields(
    document: &serde_json::Value,
    crd: CustomResourceDefinition,
) -> Result<Vec<String>, RenderError> {
    let crd = serde_json::to_value(crd).map_err(|e| RenderError::Serialize(e.to_string()))?;
    let spec_schema = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .unwrap_or(&serde_json::Value::Null);
    let mut unknown = Vec::new();
    if let Some(spec) = document.get("spec") {
        collect_unknown(spec, spec_schema, "spec", &mut unknown);
    }
    Ok(unknown)
}

/// Walks `value` along `schema` as the apiserver's pruning does, pushing
/// the path of every field the schema does not declare.
fn collect_unknown(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
    unknown: &mut Vec<String>,
) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true)) {
        return;
    }
    match value {
        serde_json::Value::Object(fields) => {
            let properties = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties");
            for (key, field) in fields {
                let child = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(field_schema), _) | (None, Some(field_schema)) => {
                        collect_unknown(field, field_schema, &child, unknown)
                    }
                    (None, None) => unknown.push(child),
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    collect_unknown(item, item_schema, &format!("{path}[{index}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Every object of `plan` as a multi-document YAML stream.
pub fn plan_yaml(plan: &Plan) -> Result<String, RenderError> {
    let objects = plan
        .objects()
        .map_err(|e| RenderError::Serialize(e.to_string()))?;
    serde_saphyr::to_string_multiple(&objects).map_err(|e| RenderError::Serialize(e.to_string()))
}

/// What the operator would create for `resources` at `now`, as its
/// controllers would get there: each broker's objects (its credentials
/// file holding its users from the file), each user's credentials Secret,
/// and, as a closing comment per broker, its credentials file in clear.
pub fn render(
    resources: &Resources,
    settings: &Settings,
    now: Timestamp,
) -> Result<String, RenderError> {
    let has_broker = |name: &str, namespace: Option<String>| {
        resources
            .brokers
            .iter()
            .any(|broker| broker.name_any() == name && broker.namespace() == namespace)
    };
    for user in &resources.users {
        if !has_broker(&user.spec.broker_ref.name, user.namespace()) {
            return Err(RenderError::NoSuchBroker {
                kind: "MqttUser",
                name: user.name_any(),
                broker: user.spec.broker_ref.name.clone(),
            });
        }
    }
    // Each bridge's objects, its MqttUser among them: the broker's users
    // include it, as they do once the bridge controller created it.
    let mut bridges: Vec<BridgePlan> = Vec::new();
    for bridge in &resources.bridges {
        if !has_broker(&bridge.spec.broker_ref.name, bridge.namespace()) {
            return Err(RenderError::NoSuchBroker {
                kind: "MqttBridge",
                name: bridge.name_any(),
                broker: bridge.spec.broker_ref.name.clone(),
            });
        }
        bridges.push(
            plan_bridge(bridge, None).map_err(|source| RenderError::Bridge {
                bridge: bridge.name_any(),
                source,
            })?,
        );
    }
    let mut out = String::new();
    for broker in &resources.brokers {
        let of_broker = |user: &&MqttUser| {
            user.spec.broker_ref.name == broker.name_any() && user.namespace() == broker.namespace()
        };
        let users: Vec<&MqttUser> = resources
            .users
            .iter()
            .chain(bridges.iter().map(|bridge| &bridge.user))
            .filter(of_broker)
            .collect();
        let secret = |name: &str| {
            resources
                .secrets
                .iter()
                .find(|s| s.name_any() == name && s.namespace() == broker.namespace())
                .cloned()
        };
        let ca_source = broker.spec.tls.ca.secret_name.as_deref().and_then(secret);
        // The broker first (its CA), then its users, then the broker again
        // with its users in its credentials file.
        let first = plan::plan(
            broker,
            &Observed {
                ca_source: ca_source.clone(),
                ..Observed::default()
            },
            settings,
            now,
        )?;
        let bundle = first
            .config_map
            .data
            .as_ref()
            .and_then(|data| data.get(CA_BUNDLE_KEY))
            .cloned();
        let clients_ca = read_clients_ca(Some(&first.clients_ca_secret));
        let siblings: Vec<MqttUser> = users.iter().map(|u| (*u).clone()).collect();
        let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
        for user in &users {
            let password_source = user
                .spec
                .authentication
                .password
                .value_from
                .as_ref()
                .and_then(|from| secret(&from.secret_key_ref.name));
            let observed = UserObserved {
                broker: Some(broker),
                siblings: &siblings,
                secret: None,
                password_source: password_source.as_ref(),
                trust_bundle: bundle.as_deref(),
                clients_ca: clients_ca.as_ref(),
            };
            let plan =
                plan_user(user, &observed, settings, now).map_err(|source| RenderError::User {
                    user: user.name_any(),
                    source,
                })?;
            secrets.insert(user.name_any(), plan.secret);
        }
        let observed = Observed {
            config_map: Some(first.config_map.clone()),
            ca_source,
            ca_secret: first.ca_secret.clone(),
            server_secret: first.server_secret.clone(),
            clients_ca_secret: Some(first.clients_ca_secret.clone()),
            users: users
                .iter()
                .map(|user| ((*user).clone(), secrets.get(&user.name_any()).cloned()))
                .collect(),
            ..Observed::default()
        };
        let plan = plan::plan(broker, &observed, settings, now)?;
        let mut objects = plan
            .objects()
            .map_err(|e| RenderError::Serialize(e.to_string()))?;
        for secret in secrets.values() {
            let mut object =
                serde_json::to_value(secret).map_err(|e| RenderError::Serialize(e.to_string()))?;
            object["apiVersion"] = "v1".into();
            object["kind"] = "Secret".into();
            objects.push(object);
        }
        for bridge in bridges.iter().filter(|bridge| of_broker(&&bridge.user)) {
            objects.extend(
                bridge
                    .objects()
                    .map_err(|e| RenderError::Serialize(e.to_string()))?,
            );
        }
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_saphyr::to_string_multiple(&objects)
                .map_err(|e| RenderError::Serialize(e.to_string()))?,
        );
        let file = plan
            .auth_secret
            .data
            .as_ref()
            .and_then(|data| data.get(CREDENTIALS_KEY))
            .map(|value| String::from_utf8_lossy(&value.0).into_owned())
            .unwrap_or_default();
        out.push_str(&format!(
            "# The credentials file of MqttBroker {}/{} (Secret {}, key {CREDENTIALS_KEY}):\n",
            broker.namespace().unwrap_or_default(),
            broker.name_any(),
            plan.auth_secret.name_any()
        ));
        for line in file.lines() {
            out.push_str(&format!("#   {line}\n").replace("#   \n", "#\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
