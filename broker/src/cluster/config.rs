//! The `[cluster]` table: the NATS that every replica of one broker shares.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Several replicas of one broker, sharing one NATS with JetStream
/// (`[cluster]`). A broker without this table runs alone, with no NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:4222`, `tls://host:4222`);
    /// the others of its cluster are discovered. At least one.
    pub servers: Vec<String>,
    /// Prefix of every subject, stream and bucket this broker uses, so
    /// that several brokers can share one NATS: letters, digits, `-` and
    /// `_`. Default: `kubemqtt`.
    #[serde(default = "default_name")]
    pub name: String,
    /// JetStream replicas of the streams and buckets (1 to 5; at most the
    /// number of NATS servers). Default: 3.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// NATS user name (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// File holding the NATS password of `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding a NATS token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed, `.creds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// TLS to NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsConfig>,
    /// Publish every message, as it arrives, on the NATS subject of its
    /// topic (`<name>.<topic as subject>`, nats-server's MQTT mapping), so
    /// that NATS clients and JetStream streams can read device data. It
    /// costs one NATS publish per message, on every message (about three
    /// times the broker's CPU for local traffic, docs/benchmarks.md).
    /// Default: false.
    #[serde(default)]
    pub export: bool,
    /// Route what NATS clients publish on `<name>.>` to MQTT subscribers
    /// (QoS 0, as nats-server's MQTT does). Default: true.
    #[serde(default = "default_true", rename = "import")]
    pub import_subjects: bool,
    /// Seconds a replica may be silent before the others take over its
    /// clients' wills and sessions. Default: 10.
    #[serde(default = "default_node_timeout_secs")]
    pub node_timeout_secs: u64,
}

/// TLS to NATS (`[cluster.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// CA certificates (PEM) that NATS servers' certificates are checked
    /// against; without it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for NATS servers that verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

fn default_name() -> String {
    "kubemqtt".to_string()
}

fn default_replicas() -> usize {
    3
}

fn default_true() -> bool {
    true
}

fn default_node_timeout_secs() -> u64 {
    10
}

/// Whether `text` is a NATS name token this broker accepts for a cluster
/// or node name: letters, digits, `-` and `_` (also valid in stream and
/// bucket names and in key-value keys).
pub fn valid_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterConfig {
    /// The rules serde cannot express: (key, message) of the first broken
    /// one. `node_name` must be a token too.
    pub fn check(&self, node_name: &str) -> Result<(), (&'static str, String)> {
        if self.servers.is_empty() {
            return Err((
                "cluster.servers",
                "at least one NATS server is required".into(),
            ));
        }
        if !valid_token(&self.name) {
            return Err((
                "cluster.name",
                "may hold only letters, digits, `-` and `_`".into(),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("cluster.replicas", "must be between 1 and 5".into()));
        }
        if self.password_file.is_some() != self.user.is_some() {
            return Err((
                "cluster.user",
                "`user` and `password_file` go together".into(),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err((
                    "cluster.tls.cert_file",
                    "`cert_file` and `key_file` go together".into(),
                ));
            }
        }
        if self.node_timeout_secs < 2 {
            return Err(("cluster.node_timeout_secs", "must be at least 2".into()));
        }
        if !valid_token(node_name) {
            return Err((
                "node_name",
                "with a [cluster], may hold only letters, digits, `-` and `_`".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        toml::from_str("servers = [\"nats://127.0.0.1:4222\"]").unwrap()
    }

    #[test]
    fn defaults() {
        let c = config();
        assert_eq!(c.name, "kubemqtt");
        assert_eq!(c.replicas, 3);
        assert!(!c.export && c.import_subjects);
        assert_eq!(c.node_timeout_secs, 10);
        assert_eq!(c.check("kubemqtt-0"), Ok(()));
    }

    #[test]
    fn a_cluster_table_round_trips_inside_a_configuration() {
        let text = "node_name = \"broker-0\"\n[cluster]\nservers = [\"nats://nats-0:4222\"]\n\
                    name = \"b1\"\nreplicas = 1\nexport = false\nuser = \"u\"\n\
                    password_file = \"/p\"\n[cluster.tls]\nca_file = \"/ca.crt\"\n";
        let config: crate::config::Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let cluster = config.cluster.clone().unwrap();
        assert_eq!(
            (cluster.name.as_str(), cluster.replicas, cluster.export),
            ("b1", 1, false)
        );
        let again: crate::config::Config =
            toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn local_persistence_is_refused_with_a_cluster() {
        let text = "[persistence]\nenabled = true\n[cluster]\nservers = [\"nats://n:4222\"]\n";
        let config: crate::config::Config = toml::from_str(text).unwrap();
        let error = config.validate().unwrap_err();
        assert_eq!(error.key(), Some("persistence.enabled"), "{error}");
    }

    #[test]
    fn names_must_be_tokens() {
        let c = ClusterConfig {
            name: "a.b".into(),
            ..config()
        };
        assert_eq!(c.check("n").unwrap_err().0, "cluster.name");
        assert_eq!(config().check("pod 0").unwrap_err().0, "node_name");
        let no_servers = ClusterConfig {
            servers: vec![],
            ..config()
        };
        assert_eq!(no_servers.check("n").unwrap_err().0, "cluster.servers");
    }
}
