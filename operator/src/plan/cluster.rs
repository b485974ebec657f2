//! What `spec.cluster` adds to the broker pods: the `[cluster]` table of
//! `broker.toml` (the NATS servers, the prefix of the broker's subjects,
//! credentials and TLS files), and the volumes those files come from.
//!
//! Every pod reads the same file: `node_name` is left out, so each one
//! takes its host name, which is its pod name (`mq-0`, `mq-1`, ...), a
//! valid NATS token since broker names are DNS labels.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};
use kubemqtt_broker::cluster::{ClusterConfig, ClusterTlsConfig};

use super::nats;
use super::{Context, PlanError};
use crate::api::{
    ClusterSpec, ExternalNatsSpec, NatsCredentialsType, AUTOSCALING_MESSAGE, REPLICAS_MESSAGE,
};

/// Where the broker pods see the NATS files.
pub const NATS_DIR: &str = "/etc/kubemqtt/nats";
/// The file names under [`NATS_DIR`]'s subdirectories.
const CREDENTIALS_FILE: &str = "credentials";
const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "tls.crt";
const KEY_FILE: &str = "tls.key";

/// JetStream replicas of a managed NATS (its three servers).
pub const MANAGED_STREAM_REPLICAS: usize = 3;

/// Refuses what a broker without `spec.cluster`, or with it, cannot do
/// (the CRD's CEL rules say the same; this covers an apiserver that did
/// not check them).
pub(super) fn check(ctx: &Context<'_>) -> Result<(), PlanError> {
    let spec = ctx.spec;
    match &spec.cluster {
        None if spec.replicas > 1 => Err(PlanError::invalid("replicas", REPLICAS_MESSAGE)),
        None if spec.autoscaling.is_some() => {
            Err(PlanError::invalid("autoscaling", AUTOSCALING_MESSAGE))
        }
        None => Ok(()),
        Some(_) if spec.persistence.enabled => Err(PlanError::invalid(
            "persistence.enabled",
            "a clustered broker keeps its sessions and retained messages in NATS JetStream, \
             shared by every pod, not on a volume of each pod (the broker refuses both): turn \
             persistence off, or remove spec.cluster",
        )),
        Some(cluster) => {
            if let Some(external) = &cluster.nats.external {
                check_external(external)?;
            }
            if cluster.nats.managed.is_some() && ctx.names.broker.len() > nats::MAX_BROKER_NAME {
                return Err(PlanError::invalid(
                    "cluster.nats.managed",
                    format!(
                        "the NATS the operator runs is named `{}-nats`: the broker's name must \
                         be at most {} characters for its pods' names to fit",
                        ctx.names.broker,
                        nats::MAX_BROKER_NAME
                    ),
                ));
            }
            Ok(())
        }
    }
}

fn check_external(external: &ExternalNatsSpec) -> Result<(), PlanError> {
    if external.urls.is_empty() {
        return Err(PlanError::invalid(
            "cluster.nats.external.urls",
            "at least one NATS URL is required",
        ));
    }
    for (index, url) in external.urls.iter().enumerate() {
        let known = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
        if !known || url.contains(char::is_whitespace) {
            return Err(PlanError::invalid(
                format!("cluster.nats.external.urls[{index}]"),
                format!("`{url}` is not a nats:// or tls:// URL"),
            ));
        }
    }
    Ok(())
}

/// The `[cluster]` table of `ctx`'s broker, or `None` without
/// `spec.cluster`.
pub(super) fn cluster_config(ctx: &Context<'_>) -> Option<ClusterConfig> {
    let cluster = ctx.spec.cluster.as_ref()?;
    let mut config = ClusterConfig {
        servers: Vec::new(),
        name: cluster_name(ctx, cluster),
        replicas: MANAGED_STREAM_REPLICAS,
        user: None,
        password_file: None,
        token_file: None,
        nkey_seed_file: None,
        credentials_file: None,
        tls: None,
        export: false,
        import_subjects: true,
        node_timeout_secs: 10,
    };
    if cluster.nats.managed.is_some() {
        config.servers = nats::server_urls(ctx);
        config.tls = Some(ClusterTlsConfig {
            ca_file: Some(format!("{NATS_DIR}/tls/{CA_FILE}").into()),
            cert_file: Some(format!("{NATS_DIR}/tls/{CERT_FILE}").into()),
            key_file: Some(format!("{NATS_DIR}/tls/{KEY_FILE}").into()),
        });
    } else if let Some(external) = &cluster.nats.external {
        config.servers = external.urls.clone();
        config.replicas = if external.urls.len() == 1 { 1 } else { 3 };
        if let Some(credentials) = &external.credentials {
            let file = Some(format!("{NATS_DIR}/credentials/{CREDENTIALS_FILE}").into());
            match credentials.type_ {
                NatsCredentialsType::Creds => config.credentials_file = file,
                NatsCredentialsType::UserPassword => {
                    config.user = credentials.user.clone();
                    config.password_file = file;
                }
                NatsCredentialsType::Token => config.token_file = file,
                NatsCredentialsType::Nkey => config.nkey_seed_file = file,
            }
        }
        if let Some(tls) = &external.tls {
            let has_ca = tls.ca_secret_name.is_some() || tls.ca_config_map_name.is_some();
            let client = tls.client_certificate_secret_name.is_some();
            config.tls = Some(ClusterTlsConfig {
                ca_file: has_ca.then(|| format!("{NATS_DIR}/ca/{CA_FILE}").into()),
                cert_file: client.then(|| format!("{NATS_DIR}/client/{CERT_FILE}").into()),
                key_file: client.then(|| format!("{NATS_DIR}/client/{KEY_FILE}").into()),
            });
        }
    }
    if let Some(replicas) = cluster.stream_replicas {
        config.replicas = usize::from(replicas);
    }
    Some(config)
}

/// The prefix of the broker's subjects: `spec.cluster.name`, else the
/// broker's name.
fn cluster_name(ctx: &Context<'_>, cluster: &ClusterSpec) -> String {
    cluster
        .name
        .clone()
        .unwrap_or_else(|| ctx.names.broker.clone())
}

/// The volumes and mounts of the broker container that carry the NATS
/// files; none without `spec.cluster`.
pub(super) fn volumes(ctx: &Context<'_>) -> (Vec<Volume>, Vec<VolumeMount>) {
    let Some(cluster) = &ctx.spec.cluster else {
        return (Vec::new(), Vec::new());
    };
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut add = |name: &str, dir: &str, volume: Volume| {
        volumes.push(Volume {
            name: name.to_owned(),
            ..volume
        });
        mounts.push(VolumeMount {
            name: name.to_owned(),
            mount_path: format!("{NATS_DIR}/{dir}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    };
    if cluster.nats.managed.is_some() {
        add(
            "nats-tls",
            "tls",
            secret_volume(&ctx.names.nats_client_secret, None),
        );
    } else if let Some(external) = &cluster.nats.external {
        if let Some(credentials) = &external.credentials {
            let key = credentials
                .key
                .clone()
                .unwrap_or_else(|| credentials.type_.default_key().to_owned());
            add(
                "nats-credentials",
                "credentials",
                secret_volume(&credentials.secret_name, Some((key, CREDENTIALS_FILE))),
            );
        }
        if let Some(tls) = &external.tls {
            let key = tls.ca_key.clone().unwrap_or_else(|| CA_FILE.to_owned());
            if let Some(secret) = &tls.ca_secret_name {
                add(
                    "nats-ca",
                    "ca",
                    secret_volume(secret, Some((key.clone(), CA_FILE))),
                );
            } else if let Some(config_map) = &tls.ca_config_map_name {
                add(
                    "nats-ca",
                    "ca",
                    Volume {
                        config_map: Some(ConfigMapVolumeSource {
                            name: config_map.clone(),
                            items: Some(vec![KeyToPath {
                                key,
                                path: CA_FILE.to_owned(),
                                mode: None,
                            }]),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                );
            }
            if let Some(secret) = &tls.client_certificate_secret_name {
                add("nats-client", "client", secret_volume(secret, None));
            }
        }
    }
    (volumes, mounts)
}

/// A volume of the Secret `name`, whole or only `key` as `path`.
fn secret_volume(name: &str, item: Option<(String, &str)>) -> Volume {
    Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some(name.to_owned()),
            default_mode: Some(0o440),
            items: item.map(|(key, path)| {
                vec![KeyToPath {
                    key,
                    path: path.to_owned(),
                    mode: None,
                }]
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use kubemqtt_broker::config::Config;

    use super::*;
    use crate::plan::configmap::CONFIG_FILE;
    use crate::plan::testing::{broker_yaml, now, plan_fresh};
    use crate::plan::{plan, Observed, Settings};

    fn config_of(spec: &str) -> Config {
        let plan = plan_fresh(&broker_yaml(spec));
        let text = plan.config_map.data.as_ref().unwrap()[CONFIG_FILE].clone();
        assert!(!text.contains("node_name"), "{text}");
        Config::from_toml_str(&text, CONFIG_FILE).expect("the broker reads it")
    }

    fn error_of(spec: &str) -> String {
        plan(
            &broker_yaml(spec),
            &Observed::default(),
            &Settings::default(),
            now(),
        )
        .unwrap_err()
        .to_string()
    }

    fn mounts(spec: &str) -> Vec<(String, String)> {
        let plan = plan_fresh(&broker_yaml(spec));
        let pod = plan.stateful_set.spec.unwrap().template.spec.unwrap();
        pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .filter(|m| m.mount_path.starts_with(NATS_DIR))
            .map(|m| (m.name, m.mount_path))
            .collect()
    }

    #[test]
    fn a_broker_without_cluster_has_no_cluster_table() {
        assert_eq!(config_of("{}").cluster, None);
        assert!(mounts("{}").is_empty());
    }

    #[test]
    fn managed_nats_gives_every_server_and_the_operators_tls_files() {
        let config = config_of("replicas: 3\ncluster: {nats: {managed: {}}}");
        let cluster = config.cluster.expect("a [cluster] table");
        assert_eq!(
            cluster.servers,
            [
                "tls://mq-nats-0.mq-nats-headless.iot.svc.cluster.local:4222",
                "tls://mq-nats-1.mq-nats-headless.iot.svc.cluster.local:4222",
                "tls://mq-nats-2.mq-nats-headless.iot.svc.cluster.local:4222",
            ]
        );
        assert_eq!(cluster.name, "mq");
        assert_eq!(cluster.replicas, 3);
        let tls = cluster.tls.expect("TLS to NATS");
        assert_eq!(
            tls.ca_file.unwrap().to_str(),
            Some("/etc/kubemqtt/nats/tls/ca.crt")
        );
        assert_eq!(
            tls.cert_file.unwrap().to_str(),
            Some("/etc/kubemqtt/nats/tls/tls.crt")
        );
        assert!(config
            .node_name
            .starts_with(|c: char| c.is_ascii_alphanumeric()));
        assert_eq!(
            mounts("cluster: {nats: {managed: {}}}"),
            [("nats-tls".to_owned(), "/etc/kubemqtt/nats/tls".to_owned())]
        );
    }

    #[test]
    fn external_nats_takes_its_urls_credentials_and_tls() {
        let spec = r#"
cluster:
  name: fleet_a
  nats:
    external:
      urls: ["tls://nats-a.example:4222", "tls://nats-b.example:4222"]
      credentials: {type: UserPassword, user: mqtt, secretName: nats-login}
      tls: {caConfigMapName: corp-ca, caKey: bundle.pem, clientCertificateSecretName: mq-nats-client}
"#;
        let cluster = config_of(spec).cluster.unwrap();
        assert_eq!(cluster.servers.len(), 2);
        assert_eq!(cluster.name, "fleet_a");
        assert_eq!(cluster.replicas, 3);
        assert_eq!(cluster.user.as_deref(), Some("mqtt"));
        assert_eq!(
            cluster.password_file.unwrap().to_str(),
            Some("/etc/kubemqtt/nats/credentials/credentials")
        );
        let tls = cluster.tls.unwrap();
        assert_eq!(
            tls.ca_file.unwrap().to_str(),
            Some("/etc/kubemqtt/nats/ca/ca.crt")
        );
        assert_eq!(
            tls.key_file.unwrap().to_str(),
            Some("/etc/kubemqtt/nats/client/tls.key")
        );
        assert_eq!(
            mounts(spec),
            [
                (
                    "nats-credentials".to_owned(),
                    "/etc/kubemqtt/nats/credentials".to_owned()
                ),
                ("nats-ca".to_owned(), "/etc/kubemqtt/nats/ca".to_owned()),
                (
                    "nats-client".to_owned(),
                    "/etc/kubemqtt/nats/client".to_owned()
                ),
            ]
        );
        // The Secret's key lands under the fixed file name.
        let plan = plan_fresh(&broker_yaml(spec));
        let pod = plan.stateful_set.spec.unwrap().template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        let credentials = volumes
            .iter()
            .find(|v| v.name == "nats-credentials")
            .unwrap();
        let items = credentials.secret.as_ref().unwrap().items.clone().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("password", "credentials")
        );
        let ca = volumes.iter().find(|v| v.name == "nats-ca").unwrap();
        let items = ca.config_map.as_ref().unwrap().items.clone().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("bundle.pem", "ca.crt")
        );
    }

    #[test]
    fn every_credential_type_reaches_its_key() {
        for (type_, key, field) in [
            ("Creds", "nats.creds", "credentials_file"),
            ("Token", "token", "token_file"),
            ("Nkey", "nkey.seed", "nkey_seed_file"),
        ] {
            let spec = format!(
                "cluster: {{nats: {{external: {{urls: [\"nats://n:4222\"], credentials: {{type: {type_}, secretName: s}}}}}}}}"
            );
            let cluster = config_of(&spec).cluster.unwrap();
            // A single URL: streams of one replica.
            assert_eq!(cluster.replicas, 1);
            let table = toml::Table::try_from(&cluster).unwrap();
            assert_eq!(
                table[field].as_str(),
                Some("/etc/kubemqtt/nats/credentials/credentials"),
                "{type_}"
            );
            let plan = plan_fresh(&broker_yaml(&spec));
            let pod = plan.stateful_set.spec.unwrap().template.spec.unwrap();
            let volume = pod
                .volumes
                .unwrap()
                .into_iter()
                .find(|v| v.name == "nats-credentials")
                .unwrap();
            assert_eq!(volume.secret.unwrap().items.unwrap()[0].key, key);
        }
        let replicas = config_of(
            "cluster: {streamReplicas: 2, nats: {external: {urls: [\"nats://n:4222\"]}}}",
        );
        assert_eq!(replicas.cluster.unwrap().replicas, 2);
    }

    #[test]
    fn what_a_cluster_cannot_be_is_refused() {
        assert_eq!(
            error_of("replicas: 2"),
            format!("spec.replicas: {REPLICAS_MESSAGE}")
        );
        assert_eq!(
            error_of("autoscaling: {maxReplicas: 3, targets: {cpuUtilization: 50}}"),
            format!("spec.autoscaling: {AUTOSCALING_MESSAGE}")
        );
        let persistent = error_of("persistence: {enabled: true}\ncluster: {nats: {managed: {}}}");
        assert!(
            persistent.starts_with("spec.persistence.enabled: a clustered broker keeps"),
            "{persistent}"
        );
        let url = error_of("cluster: {nats: {external: {urls: [\"http://n:4222\"]}}}");
        assert_eq!(
            url,
            "spec.cluster.nats.external.urls[0]: `http://n:4222` is not a nats:// or tls:// URL"
        );
        let mut long = broker_yaml("cluster: {nats: {managed: {}}}");
        long.metadata.name = Some("b".repeat(48));
        let error = plan(&long, &Observed::default(), &Settings::default(), now())
            .unwrap_err()
            .to_string();
        assert!(error.contains("at most 47 characters"), "{error}");
    }
}
