//! Tests of `http` over real sockets: routes and status codes, HEAD,
//! keep-alive, idle and slow clients, the handler timeout, the accept
//! back-off schedule.

use super::*;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEST_LIMITS: Limits = Limits {
    header_read: Duration::from_secs(1),
    handler: Duration::from_secs(1),
    connections: 8,
};

async fn start(limits: Limits, ready: Arc<AtomicBool>, metrics: MetricsFn) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with(listener, ready, metrics, limits));
    addr
}

async fn start_default() -> (SocketAddr, Arc<AtomicBool>) {
    let ready = Arc::new(AtomicBool::new(false));
    let metrics: MetricsFn = Arc::new(|| "amdim_up 1\n".to_string());
    (start(TEST_LIMITS, ready.clone(), metrics).await, ready)
}

/// One response read off `stream`: (status, lower-cased head, body), the
/// body by its Content-Length (so the connection can carry another one).
async fn read_response(stream: &mut TcpStream, head_only: bool) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed inside a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    if !head_only {
        while body.len() < length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside a body");
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(&mut s, method == "HEAD").await
}

#[tokio::test]
async fn paths_and_readiness_decide_the_status() {
    let (addr, ready) = start_default().await;
    assert_eq!(request(addr, "GET", "/healthz").await.2, "ok\n");
    let (status, _, body) = request(addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready\n"));
    ready.store(true, Ordering::Relaxed);
    let (status, _, body) = request(addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, head, body) = request(addr, "GET", "/metrics?x=1").await;
    assert_eq!((status, body.as_str()), (200, "amdim_up 1\n"));
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    for (method, path) in [("POST", "/metrics"), ("GET", "/other"), ("DELETE", "/healthz")] {
        let (status, _, body) = request(addr, method, path).await;
        assert_eq!((status, body.as_str()), (404, "not found\n"), "{method} {path}");
    }
}

#[tokio::test]
async fn head_answers_200_without_a_body() {
    let (addr, _) = start_default().await;
    for path in ["/metrics", "/healthz"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert_eq!(body, "", "{path}: HEAD carried a body");
    }
}

#[tokio::test]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let (addr, _) = start_default().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    for path in ["/metrics", "/healthz"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, head, _) = read_response(&mut s, false).await;
        assert_eq!(status, 200, "{path}");
        assert!(!head.contains("connection: close"), "{head}");
    }
}

#[tokio::test]
async fn an_idle_or_slow_client_neither_blocks_others_nor_stays_forever() {
    let (addr, _) = start_default().await;
    // Half a request head, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /hea").await.unwrap();
    let idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
    assert!(
        started.elapsed() < TEST_LIMITS.header_read,
        "served only after {:?}",
        started.elapsed()
    );
    // Both are closed once the head timeout passes.
    for (who, mut s) in [("slow", slow), ("idle", idle)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the {who} client's connection is still open after 5 s");
    }
}

#[tokio::test]
async fn a_slow_metrics_closure_times_out_without_blocking_probes() {
    let metrics: MetricsFn = Arc::new(|| {
        std::thread::sleep(Duration::from_secs(3));
        "late\n".to_string()
    });
    let addr = start(TEST_LIMITS, Arc::new(AtomicBool::new(true)), metrics).await;
    let scrape = tokio::spawn(request(addr, "GET", "/metrics"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(request(addr, "GET", "/readyz").await.0, 200);
    assert!(!scrape.is_finished(), "the probe waited for the slow scrape");
    let started = Instant::now();
    let (status, _, body) = scrape.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the scrape was not cut at the handler limit"
    );
    assert_eq!((status, body.as_str()), (503, "metrics timed out\n"));
}

#[test]
fn accept_failures_back_off_up_to_a_second_and_start_over_after_a_success() {
    let mut b = Backoff::default();
    let waits: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
    assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    b.reset();
    assert_eq!(b.next(), Duration::from_millis(10));
    let emfile = std::io::Error::from_raw_os_error(24); // EMFILE on Linux
    assert!(!about_one_connection(&emfile), "EMFILE must back off");
    assert!(about_one_connection(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)));
}
