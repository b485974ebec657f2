//! The team's device registry of a hook fleet, over HTTPS, inside the
//! test: its own CA and server certificate, a bearer token, and answers
//! for logins and topics.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubemqtt_operator::certs::{generate_ca, issue_server_cert, San};
use rumqttc::tokio_rustls::TlsAcceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The team's device registry over HTTPS. A login is allowed with the
/// password `good` and the bearer token; a topic when it is under
/// `vending/<device>/`. Anything without the token is denied.
pub struct Registry {
    pub url: String,
    /// The CA its certificate chains to (PEM).
    pub ca_pem: String,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registry {
    pub async fn start(token: &'static str) -> Registry {
        let now = Timestamp::now();
        let day = SignedDuration::from_hours(24);
        let ca = generate_ca("registry CA", now, day).expect("a CA");
        let sans = BTreeSet::from([San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))]);
        let server = issue_server_cert(&ca, "registry", &sans, now, day).expect("a certificate");
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the chain");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
            .expect("the key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server configuration");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                connections.spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve(stream, token, &count).await;
                    }
                });
            }
        });
        Registry {
            url,
            ca_pem: ca.cert_pem,
            requests,
            task,
        }
    }
}

/// Answers HTTP/1.1 requests on one connection (kept alive).
async fn serve(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    token: &str,
    count: &AtomicUsize,
) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if body.len() < length {
            continue;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let request: serde_json::Value = serde_json::from_str(&body[..length]).unwrap_or_default();
        let bearer = format!("bearer {token}");
        let authorized = head
            .lines()
            .any(|l| l.to_ascii_lowercase() == format!("authorization: {bearer}"));
        let allowed = authorized
            && match request.get("topic").and_then(|t| t.as_str()) {
                Some(topic) => {
                    let device = request["device_id"].as_str().unwrap_or("?");
                    topic.starts_with(&format!("vending/{device}/"))
                }
                None => request["password"] == "good",
            };
        let reply = format!(
            "{{\"result\": \"{}\"}}",
            if allowed { "allow" } else { "deny" }
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        buf.clear();
    }
}
