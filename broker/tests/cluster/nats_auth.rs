use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;

/// The example user NKey pair of NATS's documentation ("NKeys"): the seed
/// a broker is given, and the public key the server knows.
const NKEY_SEED: &str = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";
const NKEY_PUBLIC: &str = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";

/// `[cluster]` credentials and `[cluster.tls]` against a nats-server that
/// requires TLS with a client certificate and a user: one broker logs in
/// with a user name and password file, another with an NKey seed file;
/// both are ready and route to each other. A broker with a wrong password
/// is not ready, and says why.
#[tokio::test]
async fn brokers_log_in_to_a_nats_server_that_requires_tls_and_users() {
    let files = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nats test CA");
    let server = ca.server_cert();
    let client = ca.client_cert("kubemqtt", &["kubemqtt"]);
    let path = |name: &str, text: &str| write_file(files.path(), name, text).display().to_string();
    let ca_file = path("ca.crt", &ca.cert_pem);
    let nats_tls = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{ca_file}\", verify: true }}\n\
         authorization {{ users: [ {{ user: kmq, password: \"s3cret\" }}, {{ nkey: {NKEY_PUBLIC} }} ] }}\n",
        path("nats.crt", &server.cert_pem),
        path("nats.key", &server.key_pem),
    );
    let nats = NatsCluster::start_configured(1, &nats_tls).await;
    let tls = format!(
        "[cluster.tls]\nca_file = \"{ca_file}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        path("client.crt", &client.cert_pem),
        path("client.key", &client.key_pem),
    );
    let password = |text: &str| path(&format!("password-{text}"), &format!("{text}\n"));
    let node_cluster_toml = vec![
        format!(
            "user = \"kmq\"\npassword_file = \"{}\"\n{tls}",
            password("s3cret")
        ),
        format!("nkey_seed_file = \"{}\"\n{tls}", path("seed", NKEY_SEED)),
        format!(
            "user = \"kmq\"\npassword_file = \"{}\"\n{tls}",
            password("wrong")
        ),
    ];
    let mut cluster = BrokerCluster::start(
        &nats,
        2,
        ClusterOpts {
            node_cluster_toml,
            ..ClusterOpts::default()
        },
    )
    .await;

    let (mut sub, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("sub")).await;
    sub.subscribe(1, &[("t/#", 1)]).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[0], &Connect::v5("pub")).await;
    await_routes(&mut publisher, "t/probe", &mut [&mut sub]).await;
    publish_qos1(&mut publisher, "t/a", "m", 3).await;
    assert_eq!(payloads(&receive(&mut sub, 3).await), ["m-0", "m-1", "m-2"]);

    let wrong = cluster.add_node_unready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.nodes[wrong]
        .logs()
        .iter()
        .any(|l| l.to_lowercase().contains("authorization violation"))
    {
        assert!(
            Instant::now() < deadline,
            "the refused login is not logged:\n{}",
            cluster.nodes[wrong].logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = cluster.nodes[wrong].http("GET", "/readyz", None).await;
    assert_eq!(ready.status, 503);
}

/// A token file against a nats-server that requires that token.
#[tokio::test]
async fn a_broker_logs_in_with_a_token() {
    let files = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start_configured(1, "authorization { token: \"t0ken\" }\n").await;
    let token = write_file(files.path(), "token", "t0ken\n");
    // Ready only once connected with its streams and buckets in place.
    let _cluster = BrokerCluster::start(
        &nats,
        1,
        ClusterOpts {
            cluster_toml: format!("token_file = \"{}\"", token.display()),
            ..ClusterOpts::default()
        },
    )
    .await;
}

/// A `.creds` file (a user JWT and its NKey seed) against a nats-server in
/// operator mode: the operator, account and user JWTs are made here, the
/// account's with JetStream allowed, as `nsc` would.
#[tokio::test]
async fn a_broker_logs_in_with_a_credentials_file() {
    let files = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt::sign(&operator, &operator, "operator", serde_json::json!({}));
    let system_jwt = jwt::sign(&operator, &system, "account", serde_json::json!({}));
    let account_jwt = jwt::sign(
        &operator,
        &account,
        "account",
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
            },
            "default_permissions": { "pub": {}, "sub": {} }
        }),
    );
    let user_jwt = jwt::sign(
        &account,
        &user,
        "user",
        serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 }),
    );
    let nats = NatsCluster::start_configured(
        1,
        &format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{ {system}: \"{system_jwt}\", {}: \"{account_jwt}\" }}\n",
            account.public_key(),
            system = system.public_key(),
        ),
    )
    .await;
    let creds = write_file(
        files.path(),
        "broker.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("user seed")
        ),
    );
    // Ready only once connected with its streams and buckets in place.
    let _cluster = BrokerCluster::start(
        &nats,
        1,
        ClusterOpts {
            cluster_toml: format!("credentials_file = \"{}\"", creds.display()),
            ..ClusterOpts::default()
        },
    )
    .await;
}

/// NATS JWTs (version 2), signed with NKeys.
mod jwt {
    use base64::Engine;

    /// A JWT of `kind` ("operator", "account", "user") for `subject`,
    /// issued by `issuer`, with `nats` claims of that kind.
    pub fn sign(
        issuer: &nkeys::KeyPair,
        subject: &nkeys::KeyPair,
        kind: &str,
        mut nats: serde_json::Value,
    ) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        nats["type"] = kind.into();
        nats["version"] = 2.into();
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = serde_json::json!({
            "jti": format!("{kind}{iat}"),
            "iat": iat,
            "iss": issuer.public_key(),
            "name": kind,
            "sub": subject.public_key(),
            "nats": nats,
        });
        let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let payload = b64(claims.to_string().as_bytes());
        let signed = format!("{header}.{payload}");
        let signature = issuer.sign(signed.as_bytes()).expect("sign");
        format!("{signed}.{}", b64(&signature))
    }
}
