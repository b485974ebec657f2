//! API requests per reconcile, for a broker with 1, 100 and 1,000 users,
//! against the controllers' fake API server (`controller::fixtures`):
//!
//! ```sh
//! cargo bench -p kubemqtt-operator --features testing --bench requests
//! ```
//!
//! For each size it runs the controllers as the cluster would: the broker
//! created and running, every user created and in force, then measures
//! - a steady-state reconcile of the broker and of one user (nothing
//!   changed: what the periodic resync and every stray watch event cost);
//! - a leader failover: a new operator (nothing cached) reconciling the
//!   broker and every user once;
//! - one user's password rotated: that user's reconciles and the broker's.
//!
//! It prints a Markdown table (requests, of which writes, and bytes the
//! API server sent), as docs/benchmarks.md shows it.

use std::sync::Arc;
use std::time::Instant;

use http::Method;
use kubemqtt_operator::api::{MqttBroker, MqttUser};
use kubemqtt_operator::controller::fixtures::{ApiServer, Recorded, RecordingPusher, UserCache};
use kubemqtt_operator::controller::{self, user, Context};
use kubemqtt_operator::metrics::Metrics;
use kubemqtt_operator::plan::{selector_labels, Settings};
use serde_json::json;

const BROKER: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/mq";
const USERS: &str = "/apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttusers";
const STATEFUL_SET: &str = "/apis/apps/v1/namespaces/iot/statefulsets/mq";
const EXTERNAL: &str = "/api/v1/namespaces/iot/services/mq-external";
const POD: &str = "/api/v1/namespaces/iot/pods/mq-0";

/// Requests, writes among them, and response bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    requests: usize,
    writes: usize,
    bytes: usize,
}

impl Cost {
    fn of(server: &ApiServer) -> Cost {
        let requests: Vec<Recorded> = server.take_requests();
        Cost {
            requests: requests.len(),
            writes: requests.iter().filter(|r| r.method != Method::GET).count(),
            bytes: server.take_response_bytes(),
        }
    }

    fn add(self, other: Cost) -> Cost {
        Cost {
            requests: self.requests + other.requests,
            writes: self.writes + other.writes,
            bytes: self.bytes + other.bytes,
        }
    }

    fn cell(self) -> String {
        format!(
            "{} ({} writes, {})",
            self.requests,
            self.writes,
            human_bytes(self.bytes)
        )
    }
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.0} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

struct Operator {
    ctx: Arc<Context>,
    users: UserCache,
}

impl Operator {
    fn start(server: &ApiServer, client: kube::Client) -> Operator {
        let ctx = Context::new(
            client,
            Settings::default(),
            Metrics::new().expect("metrics"),
            None,
        )
        .with_pusher(Arc::new(RecordingPusher::default()));
        let users = UserCache::new(&ctx.index);
        users.sync(server, USERS);
        Operator {
            ctx: Arc::new(ctx),
            users,
        }
    }

    async fn broker(&self, server: &ApiServer) {
        self.users.sync(server, USERS);
        self.reconcile_broker(server).await;
    }

    /// A broker reconcile, the user cache as it is.
    async fn reconcile_broker(&self, server: &ApiServer) {
        let broker: MqttBroker = server.broker(BROKER);
        controller::reconcile(Arc::new(broker), self.ctx.clone())
            .await
            .expect("the broker reconciles");
    }

    async fn user(&self, server: &ApiServer, name: &str) {
        let user: MqttUser =
            serde_json::from_value(server.get(&format!("{USERS}/{name}")).expect("the user"))
                .expect("a user");
        user::reconcile(Arc::new(user), self.ctx.clone())
            .await
            .expect("the user reconciles");
    }
}

fn user_name(index: usize) -> String {
    format!("device-{index:04}")
}

async fn scenario(users: usize) -> Vec<String> {
    let (client, server) = ApiServer::start();
    server.put(
        BROKER,
        json!({
            "apiVersion": "kubemqtt.io/v1alpha1",
            "kind": "MqttBroker",
            "metadata": {"name": "mq", "namespace": "iot", "uid": "b-uid", "generation": 1},
            "spec": {},
        }),
    );
    let operator = Operator::start(&server, client.clone());
    // The broker runs: its pod ready, its load balancer addressed.
    operator.broker(&server).await;
    server.put(
        POD,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "mq-0", "namespace": "iot", "uid": "pod-uid",
                         "labels": selector_labels("mq")},
            "status": {"podIP": "10.0.0.7", "containerStatuses": [
                {"name": "broker", "restartCount": 0, "ready": true, "image": "b", "imageID": ""}]},
        }),
    );
    let generation = server.get(STATEFUL_SET).expect("sts")["metadata"]["generation"].clone();
    server.set_status(
        STATEFUL_SET,
        json!({"observedGeneration": generation, "replicas": 1, "readyReplicas": 1,
               "updatedReplicas": 1, "currentRevision": "r", "updateRevision": "r"}),
    );
    server.set_status(
        EXTERNAL,
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
    );
    operator.broker(&server).await;
    operator.broker(&server).await;

    // Every user created, taken in by the broker, and Ready.
    for index in 0..users {
        let name = user_name(index);
        server.put(
            &format!("{USERS}/{name}"),
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttUser",
                "metadata": {"name": name, "namespace": "iot", "uid": format!("u-{index}"),
                             "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"},
                "spec": {"brokerRef": {"name": "mq"},
                         "acl": [{"action": "publish", "topic": "devices/%u/#"}]},
            }),
        );
    }
    Cost::of(&server);
    operator.users.sync(&server, USERS);
    let started = Instant::now();
    for index in 0..users {
        operator.user(&server, &user_name(index)).await;
    }
    let creating = Cost::of(&server);
    let create_time = started.elapsed();
    operator.broker(&server).await;
    let taking_in = Cost::of(&server);
    for index in 0..users {
        operator.user(&server, &user_name(index)).await;
    }
    Cost::of(&server);

    // Steady state.
    operator.users.sync(&server, USERS);
    let started = Instant::now();
    operator.reconcile_broker(&server).await;
    let broker_time = started.elapsed();
    let steady_broker = Cost::of(&server);
    operator.user(&server, &user_name(0)).await;
    let steady_user = Cost::of(&server);

    // A leader failover: nothing cached, everything reconciled once.
    let successor = Operator::start(&server, client.clone());
    successor.broker(&server).await;
    for index in 0..users {
        successor.user(&server, &user_name(index)).await;
    }
    let failover = Cost::of(&server);

    // One user's password rotated.
    let path = format!("{USERS}/{}", user_name(0));
    let mut rotated = server.get(&path).expect("the user");
    rotated["metadata"]["annotations"] = json!({"kubemqtt.io/rotate": "now"});
    server.put(&path, rotated);
    successor.user(&server, &user_name(0)).await;
    successor.broker(&server).await;
    successor.user(&server, &user_name(0)).await;
    let rotation = Cost::of(&server);

    vec![format!(
        "| {users} | {} | {} | {} | {} | {} | {} | {:.1} ms |",
        steady_broker.cell(),
        steady_user.cell(),
        failover.cell(),
        rotation.cell(),
        Cost::add(creating, taking_in).cell(),
        format!(
            "{:.1} ms/user",
            create_time.as_secs_f64() * 1000.0 / users as f64
        ),
        broker_time.as_secs_f64() * 1000.0,
    )]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "| users | steady broker reconcile | steady user reconcile | failover: broker + every user | one password rotated | creating every user | user creation time | steady broker reconcile time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for users in [1, 100, 1000] {
        for line in runtime.block_on(scenario(users)) {
            println!("{line}");
        }
    }
}
