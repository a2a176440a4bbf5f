//! The coordinator's plain-HTTP endpoints for probes (design §1):
//! `GET /healthz` (the process answers) and `GET /readyz` (the state is
//! loaded and the gRPC port is serving; 503 otherwise). One request per
//! connection, no keep-alive; anything else is 404. Owns nothing but the
//! HTTP framing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Status line and body for a request line such as `GET /readyz HTTP/1.1`.
pub fn route(request_line: &str, ready: bool) -> (&'static str, &'static str) {
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/healthz")) => ("200 OK", "ok\n"),
        (Some("GET"), Some("/readyz")) if ready => ("200 OK", "ready\n"),
        (Some("GET"), Some("/readyz")) => ("503 Service Unavailable", "not ready\n"),
        (Some(_), Some(_)) => ("404 Not Found", "not found\n"),
        _ => ("400 Bad Request", "bad request\n"),
    }
}

async fn answer(mut stream: TcpStream, ready: bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // Read until the end of the request line (or the buffer is full).
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    let (status, body) = route(text.lines().next().unwrap_or_default(), ready);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves the probes on `listener` for as long as the task lives.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let ready = ready.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = answer(stream, ready).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_route_by_path_and_readiness() {
        assert_eq!(route("GET /healthz HTTP/1.1", false).0, "200 OK");
        assert_eq!(route("GET /readyz HTTP/1.1", true).0, "200 OK");
        assert_eq!(route("GET /readyz HTTP/1.1", false).0, "503 Service Unavailable");
        assert_eq!(route("GET /other HTTP/1.1", true).0, "404 Not Found");
        assert_eq!(route("", true).0, "400 Bad Request");
    }
}
