//! Plain HTTP reads of a pod's own server (a broker's `/metrics`, a
//! bridge's `/status`): one GET, the body, errors naming the pod.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a pod has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The body of `GET path` from `host:port`.
pub async fn get_body(host: &str, port: u16, path: &str) -> Result<String, String> {
    tokio::time::timeout(ANSWER_WITHIN, get(host, port, path))
        .await
        .map_err(|_| format!("{host}: no answer within {}s", ANSWER_WITHIN.as_secs()))?
}

async fn get(host: &str, port: u16, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{host}: not an HTTP response"))?;
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_of_the_answer_or_an_error_naming_the_pod() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let n = conn.read(&mut request).await.unwrap();
            let line = String::from_utf8_lossy(&request[..n]).to_string();
            conn.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nkubemqtt_connections 3\n",
            )
            .await
            .unwrap();
            line
        });
        let body = get_body("127.0.0.1", port, "/metrics").await.unwrap();
        assert_eq!(body, "kubemqtt_connections 3\n");
        assert!(server
            .await
            .unwrap()
            .starts_with("GET /metrics HTTP/1.0\r\n"));

        // Nothing listens there any more.
        let error = get_body("127.0.0.1", port, "/metrics").await.unwrap_err();
        assert!(error.starts_with("127.0.0.1: "), "{error}");
    }
}
