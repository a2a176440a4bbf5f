//! The plain-HTTP endpoints of the coordinator and the workers (design §1,
//! §9): `GET /healthz` (the process answers), `GET /readyz` (ready to serve;
//! 503 otherwise) and `GET /metrics` (Prometheus text format, produced by
//! the caller's closure at scrape time). One request per connection, no
//! keep-alive; anything else is 404. Owns nothing but the HTTP framing:
//! what is measured belongs to the process serving it.

use crate::metrics::CONTENT_TYPE;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Produces the `/metrics` body at scrape time.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// What a request line such as `GET /readyz HTTP/1.1` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Healthz,
    Ready,
    NotReady,
    Metrics,
    NotFound,
    BadRequest,
}

/// Which route a request line asks for, with readiness `ready`.
fn route(request_line: &str, ready: bool) -> Route {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    // Prometheus and probes may add a query string; the path decides.
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/readyz") if ready => Route::Ready,
        ("GET", "/readyz") => Route::NotReady,
        ("GET", "/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

async fn answer(mut stream: TcpStream, ready: bool, metrics: MetricsFn) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // Read the whole head (up to the blank line, or a full buffer): closing
    // with unread bytes would reset the connection under the response.
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    let (status, content_type, body) = match route(text.lines().next().unwrap_or_default(), ready) {
        Route::Healthz => ("200 OK", "text/plain", "ok\n".to_string()),
        Route::Ready => ("200 OK", "text/plain", "ready\n".to_string()),
        Route::NotReady => ("503 Service Unavailable", "text/plain", "not ready\n".to_string()),
        Route::Metrics => ("200 OK", CONTENT_TYPE, metrics()),
        Route::NotFound => ("404 Not Found", "text/plain", "not found\n".to_string()),
        Route::BadRequest => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves the endpoints on `listener` for as long as the task lives.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, metrics: MetricsFn) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let ready = ready.load(Ordering::Relaxed);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = answer(stream, ready, metrics).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_route_by_path_and_readiness() {
        assert_eq!(route("GET /healthz HTTP/1.1", false), Route::Healthz);
        assert_eq!(route("GET /readyz HTTP/1.1", true), Route::Ready);
        assert_eq!(route("GET /readyz HTTP/1.1", false), Route::NotReady);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1", false), Route::Metrics);
        assert_eq!(route("POST /metrics HTTP/1.1", true), Route::NotFound);
        assert_eq!(route("GET /other HTTP/1.1", true), Route::NotFound);
        assert_eq!(route("", true), Route::BadRequest);
    }
}
