//! The names and labels of a broker's objects.

use std::collections::BTreeMap;

use super::{APP_NAME, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL};

/// The names of a broker's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The StatefulSet, the in-cluster Service and the
    /// PodDisruptionBudget: the broker's own name.
    pub broker: String,
    /// The headless Service: `<name>-headless`.
    pub headless_service: String,
    /// The external Service: `<name>-external`.
    pub external_service: String,
    /// The ConfigMap: `<name>-config`.
    pub config_map: String,
    /// The CA Secret: `<name>-ca`.
    pub ca_secret: String,
    /// The server certificate Secret (and cert-manager `Certificate`):
    /// `<name>-tls`.
    pub server_secret: String,
    /// The auth Secret: `<name>-auth`.
    pub auth_secret: String,
    /// The clients CA Secret: `<name>-clients-ca`.
    pub clients_ca_secret: String,
    /// The managed NATS: its StatefulSet, client Service and
    /// PodDisruptionBudget, `<name>-nats`.
    pub nats: String,
    /// Its headless Service: `<name>-nats-headless`.
    pub nats_headless_service: String,
    /// Its configuration: `<name>-nats-config`.
    pub nats_config_map: String,
    /// Its CA: `<name>-nats-ca`.
    pub nats_ca_secret: String,
    /// Its servers' certificate: `<name>-nats-tls`.
    pub nats_server_secret: String,
    /// The brokers' certificate for it: `<name>-nats-client`.
    pub nats_client_secret: String,
}

impl Names {
    /// The names of the objects of the broker called `name`.
    pub fn new(name: &str) -> Names {
        Names {
            broker: name.to_owned(),
            headless_service: format!("{name}-headless"),
            external_service: format!("{name}-external"),
            config_map: format!("{name}-config"),
            ca_secret: format!("{name}-ca"),
            server_secret: format!("{name}-tls"),
            auth_secret: format!("{name}-auth"),
            clients_ca_secret: format!("{name}-clients-ca"),
            nats: format!("{name}-nats"),
            nats_headless_service: format!("{name}-nats-headless"),
            nats_config_map: format!("{name}-nats-config"),
            nats_ca_secret: format!("{name}-nats-ca"),
            nats_server_secret: format!("{name}-nats-tls"),
            nats_client_secret: format!("{name}-nats-client"),
        }
    }
}

/// The labels that select a broker's pods.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The labels on every object of a broker: the selector labels and
/// `app.kubernetes.io/managed-by`.
pub fn common_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    labels
}
