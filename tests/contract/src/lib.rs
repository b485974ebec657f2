//! What a broker pod sees, without Kubernetes: the files of a rendered
//! [`Plan`] laid out as the kubelet mounts them, for the contract test
//! between the operator and the broker (`tests/broker.rs`).
//!
//! [`PodFiles::lay_out`] follows the StatefulSet's own volumes and mounts:
//! each ConfigMap or Secret key becomes a file under the mount path, moved
//! under a root directory instead of `/`. The broker container's arguments
//! are moved the same way. [`PodFiles::localize`] then makes the one change
//! a pod would not need: the configuration file's paths move under the root
//! too, and the listeners bind loopback ports instead of `0.0.0.0`.
//!
//! Secrets that other controllers write (the `<broker>-fleets` Secret of
//! the `MqttDeviceFleet` controller) are given to
//! [`PodFiles::lay_out_with`]; an optional Secret volume whose Secret does
//! not exist is an empty directory, as the kubelet mounts it.
//! [`PodFiles::update_secret_volume`] changes a mounted Secret the way the
//! kubelet's atomic writer does (a `..data` symlink swapped at once).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec, Secret, Volume};
use kubemqtt_broker::config::{Config, ConfigError};
use kubemqtt_operator::plan::statefulset::CONTAINER_NAME;
use kubemqtt_operator::plan::Plan;

/// Why the pod's files could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The StatefulSet lacks something every broker pod has.
    #[error("the StatefulSet has no {0}")]
    Incomplete(&'static str),
    /// A mount names a volume neither the pod nor the claim templates
    /// declare.
    #[error("the mount of volume `{0}` has no volume")]
    NoVolume(String),
    /// A volume refers to a ConfigMap or Secret the plan does not hold
    /// (a user-provided certificate Secret, say).
    #[error("volume `{volume}` refers to {kind} {name}, which the plan does not hold")]
    NotInPlan {
        /// The volume.
        volume: String,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not one the broker reads.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The changed configuration could not be written back as TOML.
    #[error("cannot write the configuration: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// A broker pod's files under a root directory.
#[derive(Debug, Clone)]
pub struct PodFiles {
    /// The directory standing for the pod's `/`.
    pub root: PathBuf,
    /// The broker container's arguments, with paths moved under `root`.
    pub args: Vec<String>,
}

impl PodFiles {
    /// Writes every file the broker container of `plan` mounts under
    /// `root`; the persistent volume (a claim template) and any volume that
    /// is not a ConfigMap or a Secret become empty directories.
    pub fn lay_out(plan: &Plan, root: &Path) -> Result<PodFiles, LayoutError> {
        PodFiles::lay_out_with(plan, &[], root)
    }

    /// Like [`PodFiles::lay_out`], with Secrets the plan does not hold but
    /// other controllers write (the broker's fleets Secret).
    pub fn lay_out_with(
        plan: &Plan,
        others: &[&Secret],
        root: &Path,
    ) -> Result<PodFiles, LayoutError> {
        let stateful_set = plan
            .stateful_set
            .spec
            .as_ref()
            .ok_or(LayoutError::Incomplete("spec"))?;
        let pod = stateful_set
            .template
            .spec
            .as_ref()
            .ok_or(LayoutError::Incomplete("pod template"))?;
        let claims: Vec<&str> = stateful_set
            .volume_claim_templates
            .iter()
            .flatten()
            .filter_map(|claim| claim.metadata.name.as_deref())
            .collect();
        let container = broker_container(pod)?;
        let files = PodFiles {
            root: root.to_owned(),
            args: container
                .args
                .iter()
                .flatten()
                .map(|arg| match arg.starts_with('/') {
                    true => reroot(root, arg).display().to_string(),
                    false => arg.clone(),
                })
                .collect(),
        };
        for mount in container.volume_mounts.iter().flatten() {
            let dir = files.path(&mount.mount_path);
            create_dir(&dir)?;
            if claims.contains(&mount.name.as_str()) {
                // A persistent volume starts empty.
                continue;
            }
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|volume| volume.name == mount.name)
                .ok_or_else(|| LayoutError::NoVolume(mount.name.clone()))?;
            for (key, bytes) in volume_files(plan, others, volume)? {
                let path = dir.join(key);
                std::fs::write(&path, bytes).map_err(|source| LayoutError::Io { path, source })?;
            }
        }
        Ok(files)
    }

    /// Where the pod's `pod_path` is on this machine.
    pub fn path(&self, pod_path: &str) -> PathBuf {
        reroot(&self.root, pod_path)
    }

    /// What the kubelet does when a mounted Secret changes: the new keys
    /// are written into a fresh hidden directory, the `..data` symlink is
    /// swapped to it in one rename, each key is a symlink through
    /// `..data`, and keys the Secret no longer has go.
    pub fn update_secret_volume(
        &self,
        mount_path: &str,
        secret: &Secret,
    ) -> Result<(), LayoutError> {
        let dir = self.path(mount_path);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LayoutError::Io { path, source }
        };
        let entries = |dir: &Path| -> Result<Vec<String>, LayoutError> {
            std::fs::read_dir(dir)
                .map_err(io(dir))?
                .map(|entry| {
                    entry
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .map_err(io(dir))
                })
                .collect()
        };
        let before = entries(&dir)?;
        let version = (0..)
            .map(|n| format!("..version-{n}"))
            .find(|name| !before.contains(name))
            .unwrap_or_default();
        let staged = dir.join(&version);
        create_dir(&staged)?;
        let data = secret.data.clone().unwrap_or_default();
        for (key, value) in &data {
            let path = staged.join(key);
            std::fs::write(&path, &value.0).map_err(io(&path))?;
        }
        let link = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).map_err(io(&link))?;
        std::fs::rename(&link, dir.join("..data")).map_err(io(&link))?;
        for key in data.keys() {
            let path = dir.join(key);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                continue;
            }
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(format!("..data/{key}"), &path).map_err(io(&path))?;
        }
        for name in before {
            let path = dir.join(&name);
            if name.starts_with("..version-") {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            } else if !name.starts_with("..") && !data.contains_key(&name) {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// Rewrites the configuration file at the pod path `config_file` for
    /// this machine: every file and directory it names moves under the
    /// root, each listener binds `127.0.0.1` on the port `listener_port`
    /// gives for its name, and the HTTP server binds `127.0.0.1:http_port`.
    /// Returns the new configuration.
    pub fn localize(
        &self,
        config_file: &str,
        mut listener_port: impl FnMut(&str) -> u16,
        http_port: u16,
    ) -> Result<Config, LayoutError> {
        let path = self.path(config_file);
        let mut config = Config::load(&path)?;
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let move_path = |path: &mut PathBuf| *path = reroot(&self.root, &path.to_string_lossy());
        for listener in &mut config.listeners {
            listener.bind = local(listener_port(&listener.display_name()));
            if let Some(tls) = &mut listener.tls {
                move_path(&mut tls.cert_file);
                move_path(&mut tls.key_file);
                tls.ca_file.iter_mut().for_each(move_path);
            }
        }
        let auth = &mut config.auth;
        for file in [
            &mut auth.password_file,
            &mut auth.credentials_file,
            &mut auth.acl_file,
            &mut auth.fleets_dir,
            &mut config.http.admin_token_file,
        ] {
            file.iter_mut().for_each(move_path);
        }
        if config.http.bind.is_some() {
            config.http.bind = Some(local(http_port));
        }
        move_path(&mut config.persistence.dir);
        create_dir(&config.persistence.dir)?;
        let mut table = toml::Table::try_from(&config)?;
        // As in the pod, the broker names itself after its host.
        table.remove("node_name");
        let text = toml::to_string(&table)?;
        std::fs::write(&path, text).map_err(|source| LayoutError::Io { path, source })?;
        Ok(config)
    }
}

/// `pod_path` (absolute in the pod) under `root`.
fn reroot(root: &Path, pod_path: &str) -> PathBuf {
    root.join(pod_path.trim_start_matches('/'))
}

fn create_dir(dir: &Path) -> Result<(), LayoutError> {
    std::fs::create_dir_all(dir).map_err(|source| LayoutError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn broker_container(pod: &PodSpec) -> Result<&Container, LayoutError> {
    pod.containers
        .iter()
        .find(|container| container.name == CONTAINER_NAME)
        .ok_or(LayoutError::Incomplete("broker container"))
}

/// The files a volume shows: a key each, from the plan's ConfigMap or
/// Secret (or one of `others`); none for other volumes, or for an optional
/// Secret that does not exist.
fn volume_files(
    plan: &Plan,
    others: &[&Secret],
    volume: &Volume,
) -> Result<BTreeMap<String, Vec<u8>>, LayoutError> {
    let not_in_plan = |kind, name: &str| LayoutError::NotInPlan {
        volume: volume.name.clone(),
        kind,
        name: name.to_owned(),
    };
    if let Some(source) = &volume.config_map {
        let config_map = &plan.config_map;
        if config_map.metadata.name.as_deref() != Some(source.name.as_str()) {
            return Err(not_in_plan("ConfigMap", &source.name));
        }
        return Ok(config_map
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.clone().into_bytes()))
            .collect());
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.as_deref().unwrap_or_default();
        let found = [&plan.ca_secret, &plan.server_secret]
            .into_iter()
            .flatten()
            .chain([&plan.auth_secret])
            .chain(others.iter().copied())
            .find(|secret| secret.metadata.name.as_deref() == Some(name));
        let secret = match found {
            Some(secret) => secret,
            None if source.optional == Some(true) => return Ok(BTreeMap::new()),
            None => return Err(not_in_plan("Secret", name)),
        };
        return Ok(secret
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.0.clone()))
            .collect());
    }
    Ok(BTreeMap::new())
}

#[cfg(test)]
mod tests {
    use kubemqtt_operator::plan::{self, Observed, Settings};
    use kubemqtt_operator::render::read_broker;

    use super::*;

    fn plan_of(spec: &str) -> Plan {
        let manifest = format!(
            "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttBroker\nmetadata: {{name: mq}}\nspec: {spec}\n"
        );
        let broker = read_broker(&manifest, None).unwrap();
        let now = "2025-06-01T12:00:00Z".parse().unwrap();
        plan::plan(&broker, &Observed::default(), &Settings::default(), now).unwrap()
    }

    #[test]
    fn every_mounted_key_becomes_a_file_under_the_root() {
        let plan = plan_of("{persistence: {enabled: true}}");
        let root = tempfile::tempdir().unwrap();
        let pod = PodFiles::lay_out(&plan, root.path()).unwrap();
        let config_file = root.path().join("etc/kubemqtt/config/broker.toml");
        assert_eq!(
            pod.args,
            ["--config".to_owned(), config_file.display().to_string()]
        );
        for file in [
            "etc/kubemqtt/config/broker.toml",
            "etc/kubemqtt/config/ca.crt",
            "etc/kubemqtt/tls/tls.crt",
            "etc/kubemqtt/tls/tls.key",
            "etc/kubemqtt/tls/ca.crt",
            "etc/kubemqtt/auth/credentials.toml",
            "etc/kubemqtt/auth/admin-token",
        ] {
            assert!(root.path().join(file).is_file(), "{file}");
        }
        assert!(root.path().join("var/lib/kubemqtt").is_dir());
        assert_eq!(
            std::fs::read_to_string(&config_file).unwrap(),
            plan.config_map.data.as_ref().unwrap()["broker.toml"]
        );
    }

    #[test]
    fn localizing_moves_files_and_ports_to_this_machine() {
        let plan = plan_of("{persistence: {enabled: true}}");
        let root = tempfile::tempdir().unwrap();
        let pod = PodFiles::lay_out(&plan, root.path()).unwrap();
        let config = pod
            .localize(
                "/etc/kubemqtt/config/broker.toml",
                |name| if name == "mqtt" { 11883 } else { 18883 },
                18080,
            )
            .unwrap();
        let binds: Vec<String> = config
            .listeners
            .iter()
            .map(|l| l.bind.to_string())
            .collect();
        assert_eq!(binds, ["127.0.0.1:11883", "127.0.0.1:18883"]);
        let tls = config.listeners[1].tls.as_ref().unwrap();
        assert_eq!(tls.cert_file, root.path().join("etc/kubemqtt/tls/tls.crt"));
        assert_eq!(
            config.auth.credentials_file,
            Some(root.path().join("etc/kubemqtt/auth/credentials.toml"))
        );
        assert_eq!(config.http.bind, Some("127.0.0.1:18080".parse().unwrap()));
        assert_eq!(config.persistence.dir, root.path().join("var/lib/kubemqtt"));
        // The file on disk is the localized one.
        let reread = Config::load(&pod.path("/etc/kubemqtt/config/broker.toml")).unwrap();
        assert_eq!(reread.listeners, config.listeners);
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_fleets_secret_is_optional_and_changes_like_the_kubelet_writes_it() {
        let plan = plan_of("{}");
        let root = tempfile::tempdir().unwrap();
        let pod = PodFiles::lay_out(&plan, root.path()).unwrap();
        let fleets = root.path().join("etc/kubemqtt/fleets");
        assert_eq!(
            std::fs::read_dir(&fleets).unwrap().count(),
            0,
            "no Secret yet"
        );
        let config = pod
            .localize("/etc/kubemqtt/config/broker.toml", |_| 1, 2)
            .unwrap();
        assert_eq!(config.auth.fleets_dir, Some(fleets.clone()));

        let first = secret("mq-fleets", &[("a.toml", "one")]);
        let root = tempfile::tempdir().unwrap();
        let pod = PodFiles::lay_out_with(&plan, &[&first], root.path()).unwrap();
        let fleets = root.path().join("etc/kubemqtt/fleets");
        assert_eq!(
            std::fs::read_to_string(fleets.join("a.toml")).unwrap(),
            "one"
        );

        let second = secret("mq-fleets", &[("b.toml", "two"), ("b.secret", "s")]);
        pod.update_secret_volume("/etc/kubemqtt/fleets", &second)
            .unwrap();
        assert!(!fleets.join("a.toml").exists(), "a key that went is gone");
        assert_eq!(
            std::fs::read_to_string(fleets.join("b.toml")).unwrap(),
            "two"
        );
        assert!(std::fs::symlink_metadata(fleets.join("b.toml"))
            .unwrap()
            .file_type()
            .is_symlink());
        let third = secret("mq-fleets", &[("b.toml", "three")]);
        pod.update_secret_volume("/etc/kubemqtt/fleets", &third)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(fleets.join("b.toml")).unwrap(),
            "three"
        );
        let mut names: Vec<String> = std::fs::read_dir(&fleets)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["..data", "..version-1", "b.toml"]);
    }

    #[test]
    fn a_user_certificate_secret_is_not_in_the_plan() {
        let plan = plan_of("{tls: {secretName: my-cert}}");
        let root = tempfile::tempdir().unwrap();
        match PodFiles::lay_out(&plan, root.path()) {
            Err(LayoutError::NotInPlan { kind, name, .. }) => {
                assert_eq!((kind, name.as_str()), ("Secret", "my-cert"))
            }
            other => panic!("expected the missing Secret, got {other:?}"),
        }
    }
}
