//! The operator and a broker pod without Kubernetes: [`Operator`] runs the
//! user and broker planners as the controllers would, [`Pod`] runs the
//! broker binary on the rendered files and takes pushes like a pod.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kubemqtt_contract_tests::PodFiles;
use kubemqtt_operator::api::{MqttBroker, MqttUser, ROTATE_ANNOTATION};
use kubemqtt_operator::certs::CertifiedKeyPem;
use kubemqtt_operator::controller::push::{CredentialsPusher, HttpPusher, PushReply};
use kubemqtt_operator::plan::configmap::{CA_BUNDLE_KEY, CONFIG_FILE};
use kubemqtt_operator::plan::secrets::read_clients_ca;
use kubemqtt_operator::plan::user_secret::{plan_user, UserObserved};
use kubemqtt_operator::plan::{self, Observed, Plan, Settings, CONFIG_DIR};
use kubemqtt_operator::render::read_broker;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
    TlsConfiguration, Transport,
};

use super::{free_port, secret_text, tls_config, RunningBroker, PATIENCE};

/// A broker `mq` in namespace `iot` with every default.
pub const MANIFEST: &str = "\
apiVersion: kubemqtt.io/v1alpha1
kind: MqttBroker
metadata:
  name: mq
  namespace: iot
spec: {}
";

/// The operator's side of the test: the broker, its users and their
/// Secrets as the controllers would have stored them.
pub struct Operator {
    broker: MqttBroker,
    observed: Observed,
    users: BTreeMap<String, MqttUser>,
    secrets: BTreeMap<String, Secret>,
    plan: Plan,
}

impl Operator {
    /// The broker of [`MANIFEST`], planned with the load balancer address
    /// 127.0.0.1 (so that its certificate covers what clients dial).
    pub fn new() -> Operator {
        Operator::with_manifest(MANIFEST)
    }

    /// Like [`Operator::new`], for the broker of `manifest` (named `mq` in
    /// namespace `iot`).
    pub fn with_manifest(manifest: &str) -> Operator {
        let broker = read_broker(manifest, None).expect("the manifest reads");
        let observed = Observed {
            load_balancer_ingress: vec![LoadBalancerIngress {
                ip: Some("127.0.0.1".to_owned()),
                ..LoadBalancerIngress::default()
            }],
            ..Observed::default()
        };
        let plan = plan::plan(&broker, &observed, &Settings::default(), Timestamp::now())
            .expect("the broker plans");
        let mut operator = Operator {
            broker,
            observed,
            users: BTreeMap::new(),
            secrets: BTreeMap::new(),
            plan,
        };
        operator.keep_plan();
        operator
    }

    /// Stores what the last plan applied, as the next reconcile sees it.
    fn keep_plan(&mut self) {
        self.observed.ca_secret = self.plan.ca_secret.clone();
        self.observed.server_secret = self.plan.server_secret.clone();
        self.observed.auth_secret = Some(self.plan.auth_secret.clone());
        self.observed.clients_ca_secret = Some(self.plan.clients_ca_secret.clone());
    }

    /// The broker resource.
    pub fn broker(&self) -> &MqttBroker {
        &self.broker
    }

    /// The last plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn trust_bundle(&self) -> String {
        self.plan.config_map.data.as_ref().expect("data")[CA_BUNDLE_KEY].clone()
    }

    fn clients_ca(&self) -> CertifiedKeyPem {
        read_clients_ca(Some(&self.plan.clients_ca_secret)).expect("the clients CA")
    }

    /// Creates or changes a user and runs the user planner at `at`.
    pub fn put_user(&mut self, name: &str, spec: serde_json::Value, at: Timestamp) {
        let mut user: MqttUser = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubemqtt.io/v1alpha1",
            "kind": "MqttUser",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a user");
        user.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("iot".to_owned()),
            uid: Some(format!("5e0c3a9d-0000-4000-8000-{:0>12}", name.len())),
            creation_timestamp: Some(Time("2025-01-01T00:00:00Z".parse().unwrap())),
            annotations: self
                .users
                .get(name)
                .and_then(|old| old.metadata.annotations.clone()),
            ..ObjectMeta::default()
        };
        self.users.insert(name.to_owned(), user);
        self.plan_user(name, at);
    }

    pub fn annotate(&mut self, name: &str, value: &str, at: Timestamp) {
        let user = self.users.get_mut(name).expect("the user");
        user.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ROTATE_ANNOTATION.to_owned(), value.to_owned());
        self.plan_user(name, at);
    }

    fn plan_user(&mut self, name: &str, at: Timestamp) {
        let user = self.users[name].clone();
        let siblings: Vec<MqttUser> = self.users.values().cloned().collect();
        let trust = self.trust_bundle();
        let ca = self.clients_ca();
        let observed = UserObserved {
            broker: Some(&self.broker),
            siblings: &siblings,
            secret: self.secrets.get(name),
            password_source: None,
            trust_bundle: Some(&trust),
            clients_ca: Some(&ca),
        };
        let plan = plan_user(&user, &observed, &Settings::default(), at).expect("the user plans");
        self.secrets.insert(name.to_owned(), plan.secret);
    }

    pub fn delete_user(&mut self, name: &str) {
        self.users.remove(name);
        // The Secret goes later, with the garbage collector.
    }

    /// The broker controller: plans the broker with its users.
    pub fn reconcile_broker(&mut self) -> &Plan {
        self.observed.users = self
            .users
            .iter()
            .map(|(name, user)| (user.clone(), self.secrets.get(name).cloned()))
            .collect();
        self.plan = plan::plan(
            &self.broker,
            &self.observed,
            &Settings::default(),
            Timestamp::now(),
        )
        .expect("the broker plans");
        self.keep_plan();
        &self.plan
    }

    pub fn secret(&self, user: &str, key: &str) -> String {
        secret_text(&self.secrets[user], key)
    }

    /// Sets an annotation on the broker, as `kubectl annotate` would.
    pub fn annotate_broker(&mut self, key: &str, value: &str) {
        self.broker
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
    }

    /// The CA Secret as the next reconcile sees it, to change it as time
    /// would (the end of a CA rotation's overlap).
    pub fn stored_ca_secret(&mut self) -> &mut Secret {
        self.observed
            .ca_secret
            .as_mut()
            .expect("the operator's CA Secret")
    }
}

/// The running broker and where to reach it.
pub struct Pod {
    pub broker: RunningBroker,
    /// The broker's configuration, as localized for this machine.
    pub config: kubemqtt_broker::config::Config,
    pub mqtt_port: u16,
    pub mqtts_port: u16,
    pub http_port: u16,
    /// The pod's files (the credentials file the kubelet would update).
    pub files: PodFiles,
    _root: tempfile::TempDir,
}

impl Pod {
    pub fn start(plan: &Plan) -> Pod {
        Pod::start_with(plan, &[])
    }

    /// Starts the pod with Secrets that other controllers write (the
    /// broker's fleets Secret) mounted too.
    pub fn start_with(plan: &Plan, others: &[&Secret]) -> Pod {
        let root = tempfile::tempdir().expect("temporary directory");
        let pod = PodFiles::lay_out_with(plan, others, root.path()).expect("the files lay out");
        let (mqtt_port, mqtts_port, http_port) = (free_port(), free_port(), free_port());
        let config = pod
            .localize(
                &format!("{CONFIG_DIR}/{CONFIG_FILE}"),
                |listener| match listener {
                    "mqtt" => mqtt_port,
                    "mqtts" => mqtts_port,
                    other => panic!("unexpected listener {other}"),
                },
                http_port,
            )
            .expect("the configuration localizes");
        Pod {
            broker: RunningBroker::start(&pod.args, mqtts_port),
            config,
            mqtt_port,
            mqtts_port,
            http_port,
            files: pod,
            _root: root,
        }
    }

    /// What the kubelet does when the server certificate Secret changes:
    /// the files of the pod's `tls` volume are replaced (the broker
    /// reloads them).
    pub fn update_certificate(&self, plan: &Plan) {
        let secret = plan.server_secret.as_ref().expect("the server certificate");
        let dir = self.files.path(kubemqtt_operator::plan::TLS_DIR);
        for (key, value) in secret.data.iter().flatten() {
            let path = dir.join(key);
            // Written aside and renamed, as the kubelet's atomic writer does.
            let staged = dir.join(format!(".{key}.new"));
            std::fs::write(&staged, &value.0).expect("write the certificate file");
            std::fs::rename(&staged, &path).expect("replace the certificate file");
        }
    }

    /// What the broker controller does after applying: push the
    /// credentials file with the admin token.
    pub async fn push(&self, plan: &Plan) -> PushReply {
        let url = format!("http://127.0.0.1:{}/api/v1/credentials", self.http_port);
        HttpPusher::default()
            .push(
                &url,
                &secret_text(&plan.auth_secret, "admin-token"),
                &secret_text(&plan.auth_secret, "credentials.toml"),
            )
            .await
            .expect("the broker takes the push")
    }

    pub fn options(&self, client_id: &str, tls: rustls::ClientConfig) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.mqtts_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        options
    }

    /// Connects `client_id` with a user name and password over TLS.
    pub async fn connect(
        &self,
        operator: &Operator,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(AsyncClient, EventLoop), ConnectionError> {
        let mut options = self.options(client_id, tls_config(&operator.trust_bundle()));
        options.set_credentials(username, password);
        connect(options).await
    }
}

/// Connects and waits for the CONNACK.
pub async fn connect(options: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(PATIENCE, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return Ok((client, events));
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => panic!("no CONNACK within {PATIENCE:?}"),
        }
    }
}
