//! A NATS pod's files and process arguments from the planned StatefulSet,
//! and its `nats.conf` made local.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use kubemqtt_operator::plan::nats::NatsPlan;

use super::Ports;

/// `pod_path` under `root`.
fn reroot(root: &Path, pod_path: &str) -> PathBuf {
    root.join(pod_path.trim_start_matches('/'))
}

/// Writes the files every volume mount of the container shows under
/// `root`; returns the container's arguments with their paths moved there.
pub(super) fn lay_out(
    nats: &NatsPlan,
    pod: &PodSpec,
    container: &Container,
    root: &Path,
) -> Vec<String> {
    let claims: Vec<String> = nats
        .stateful_set
        .spec
        .iter()
        .flat_map(|spec| spec.volume_claim_templates.iter().flatten())
        .filter_map(|claim| claim.metadata.name.clone())
        .collect();
    for mount in container.volume_mounts.iter().flatten() {
        let dir = reroot(root, &mount.mount_path);
        std::fs::create_dir_all(&dir).expect("a mount directory");
        if claims.contains(&mount.name) {
            continue; // a new persistent volume is empty
        }
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name)
            .unwrap_or_else(|| panic!("no volume {}", mount.name));
        let (files, mode): (BTreeMap<String, Vec<u8>>, Option<i32>) =
            if let Some(source) = &volume.config_map {
                let config_map = &nats.config_map;
                assert_eq!(config_map.metadata.name.as_ref(), Some(&source.name));
                let data = config_map.data.clone().unwrap_or_default();
                let files = data.into_iter().map(|(k, v)| (k, v.into_bytes()));
                (files.collect(), source.default_mode)
            } else if let Some(source) = &volume.secret {
                let secret = &nats.server_secret;
                assert_eq!(
                    secret.metadata.name, source.secret_name,
                    "the mounted Secret"
                );
                let data = secret.data.clone().unwrap_or_default();
                let files = data.into_iter().map(|(k, v)| (k, v.0));
                (files.collect(), source.default_mode)
            } else if volume.empty_dir.is_some() {
                (BTreeMap::new(), None)
            } else {
                panic!(
                    "volume {} is of a kind this test does not lay out",
                    volume.name
                )
            };
        for (key, bytes) in files {
            let path = dir.join(key);
            std::fs::write(&path, bytes).expect("write a mounted file");
            if let Some(mode) = mode {
                let mode = u32::try_from(mode).expect("a file mode");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .expect("the volume's mode");
            }
        }
    }
    assert!(container.command.is_none(), "the image's entrypoint runs");
    container
        .args
        .iter()
        .flatten()
        .map(|arg| match arg.starts_with('/') {
            true => reroot(root, arg).display().to_string(),
            false => arg.clone(),
        })
        .collect()
}

pub(super) fn config_arg(args: &[String]) -> &str {
    let at = args
        .iter()
        .position(|arg| arg == "--config" || arg == "-c")
        .expect("nats-server is given its configuration file");
    &args[at + 1]
}

/// The container's environment as the kubelet sets it for pod `pod`.
pub(super) fn environment(container: &Container, pod: &str) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let field = var
                .value_from
                .as_ref()
                .and_then(|from| from.field_ref.as_ref())
                .map(|field| field.field_path.as_str());
            let value = match (&var.value, field) {
                (Some(value), None) => value.clone(),
                (None, Some("metadata.name")) => pod.to_owned(),
                _ => panic!(
                    "environment variable {} is not one this test sets",
                    var.name
                ),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// `rendered` (the pod's `nats.conf`) for server `ordinal` on this
/// machine. Every change is checked to land, so that a change in what the
/// operator renders fails here instead of running something else:
/// - every quoted absolute path must lie on one of the container's mounts,
///   and moves under `root`;
/// - each `"0.0.0.0:<port>"` must be a container port, and binds
///   `127.0.0.1` on that server's loopback port for it;
/// - each route URL must be `nats-route://<pod DNS name>:<cluster port>`,
///   one per pod; its port becomes that pod's loopback route port.
pub(super) fn localize(
    rendered: &str,
    container: &Container,
    root: &Path,
    hosts: &[String],
    ports: &[Ports],
    ordinal: usize,
) -> String {
    let container_port = |name: &str| -> u16 {
        let port = container
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no container port {name}"));
        u16::try_from(port.container_port).expect("a port")
    };
    let (client, cluster, monitor) = (
        container_port("client"),
        container_port("cluster"),
        container_port("monitor"),
    );
    let mounts: Vec<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();

    // Quoted strings, one at a time.
    let mut out = String::new();
    let mut rest = rendered;
    let mut routes = Vec::new();
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        let end = after.find('"').expect("a closing quote");
        let value = &after[..end];
        let local = if value.starts_with('/') {
            assert!(
                mounts
                    .iter()
                    .any(|m| value == *m || value.starts_with(&format!("{m}/"))),
                "nats.conf names {value}, which no volume of the pod holds"
            );
            reroot(root, value).display().to_string()
        } else if let Some(port) = value.strip_prefix("0.0.0.0:") {
            let port: u16 = port.parse().expect("a port");
            let local = if port == client {
                ports[ordinal].client
            } else if port == cluster {
                ports[ordinal].route
            } else if port == monitor {
                ports[ordinal].http
            } else {
                panic!("nats.conf listens on {value}, not a container port")
            };
            format!("127.0.0.1:{local}")
        } else if let Some(url) = value.strip_prefix("nats-route://") {
            let (host, port) = url.rsplit_once(':').expect("host:port");
            assert_eq!(port.parse::<u16>().ok(), Some(cluster), "{value}");
            let pod = hosts
                .iter()
                .position(|h| h == host)
                .unwrap_or_else(|| panic!("route {value} is not a pod's DNS name: {hosts:?}"));
            routes.push(pod);
            format!("nats-route://{host}:{}", ports[pod].route)
        } else {
            value.to_owned()
        };
        out.push_str(&local);
        out.push('"');
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    routes.sort_unstable();
    assert_eq!(
        routes,
        (0..hosts.len()).collect::<Vec<_>>(),
        "one route to every pod"
    );
    for port in [client, cluster, monitor] {
        let local = match port {
            p if p == client => ports[ordinal].client,
            p if p == cluster => ports[ordinal].route,
            _ => ports[ordinal].http,
        };
        assert!(
            out.contains(&format!("\"127.0.0.1:{local}\"")),
            "nats.conf does not listen on container port {port}:\n{rendered}"
        );
    }
    assert!(!out.contains("0.0.0.0"), "an address left unmapped:\n{out}");
    out
}
