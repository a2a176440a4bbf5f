//! Metrics with the real tools (issue 7, docs/architecture.md §9): a local job on two
//! worker processes under `amdimctl local --metrics-port`, its live
//! `/metrics` pages checked by `promtool check metrics`, a real Prometheus
//! (Debian's `prometheus` package) scraping the job, and PromQL through its
//! HTTP API returning a non-zero training rate. Prometheus scrapes with its
//! default settings (no `honor_labels`): the amdim job id arrives as
//! `job_id`, next to Prometheus' own `job`. The Grafana dashboard and
//! `deploy/prometheus.yml` are held against the same live scrape.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::coordinator_bin;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `GET path` on 127.0.0.1:port: (status code, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `n` consecutive ports free now on 127.0.0.1.
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 65000 {
            continue;
        }
        let all: Vec<_> = (0..n).map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i))).collect();
        if all.iter().all(|l| l.is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `promtool check metrics` on `body`: must pass without a single lint remark.
fn promtool_check_metrics(who: &str, body: &str) {
    let out = support::pipe_through(
        Command::new("promtool").args(["check", "metrics"]),
        "promtool (Debian package prometheus; .ci/run installs it)",
        body,
    );
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {who}: {said}"
    );
}

/// The value of the first sample of a Prometheus instant-query answer.
fn first_value(answer: &serde_json::Value) -> Option<f64> {
    answer["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

fn query(port: u16, q: &str) -> serde_json::Value {
    let (code, body) = http_get(port, &format!("/api/v1/query?query={}", encode(q))).unwrap_or((0, String::new()));
    assert!(code == 200 || code == 0, "prometheus answered {code}: {body}");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// Metric names a PromQL expression uses (`amdim_…`, histogram suffixes off).
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("amdim_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(base.to_string());
        rest = &tail[end..];
    }
    names
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Every metric the dashboard queries is exported by a live process.
fn dashboard_matches(scraped: &str, dashboard: &Path) {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dashboard).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has only {} queries", exprs.len());
    let exported: Vec<&str> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for e in &exprs {
        for name in names_in(e) {
            assert!(
                exported.contains(&name.as_str()),
                "dashboard query {e:?} uses {name}, which nothing exports"
            );
        }
    }
}

#[test]
fn a_local_job_is_scraped_by_a_real_prometheus() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let log = std::fs::File::create(tmp.path().join("local.log")).unwrap();
    let job = Command::new(coordinator_bin("amdimctl"))
        .args([
            "local",
            "-f",
            "examples/fashion-mnist-smoke.toml",
            "--workers",
            "2",
            "--metrics-port",
            &base.to_string(),
        ])
        .args(["--worker-bin", env!("CARGO_BIN_EXE_amdim-worker")])
        .current_dir(repo())
        .env("AMDIM_TRAIN__EPOCHS", "4")
        .env("AMDIM_CHECKPOINT__URI", tmp.path().join("ckpt").to_str().unwrap())
        .env("AMDIM_CHECKPOINT__EVERY_STEPS", "50")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut job = Killed(job);
    let (coordinator, workers) = (base, [base + 1, base + 2]);

    // Both workers have trained a few steps and evaluated once.
    let steps = |port| {
        let (_, body) = http_get(port, "/metrics").ok()?;
        let line = body.lines().find(|l| l.starts_with("amdim_train_steps_total{"))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    wait_for("the workers' first steps", Duration::from_secs(180), || {
        workers.iter().all(|&p| steps(p).is_some_and(|s| s >= 5.0)).then_some(())
    });

    // promtool on each live page; the names docs/architecture.md §9 lists are there.
    let mut scraped = String::new();
    for (who, port) in [("coordinator", coordinator), ("worker 0", workers[0]), ("worker 1", workers[1])] {
        let (code, body) = http_get(port, "/metrics").unwrap();
        assert_eq!(code, 200, "{who}");
        promtool_check_metrics(who, &body);
        scraped.push_str(&body);
        let (health, _) = http_get(port, "/healthz").unwrap();
        let (ready, _) = http_get(port, "/readyz").unwrap();
        assert_eq!((health, ready), (200, 200), "{who}: /healthz, /readyz");
    }
    for family in [
        "amdim_jobs gauge",
        "amdim_workers gauge",
        "amdim_job_restarts_total counter",
        "amdim_train_samples_total counter",
        "amdim_step_duration_seconds histogram",
        "amdim_step_phase_seconds_total counter",
        "amdim_loss gauge",
        "amdim_allreduce_duration_seconds histogram",
        "amdim_allreduce_bytes_total counter",
        "amdim_allgather_bytes_total counter",
        "amdim_dataloader_wait_seconds histogram",
        "amdim_decode_errors_total counter",
        "amdim_data_read_retries_total counter",
        "amdim_checkpoint_prune_failures_total counter",
        "amdim_checkpoint_duration_seconds histogram",
        "amdim_rank_step_lag_seconds gauge",
        "amdim_eval_accuracy_ratio gauge",
        "amdim_build_info gauge",
    ] {
        assert!(scraped.contains(&format!("# TYPE {family}\n")), "no {family} in the scrapes");
    }
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("amdim_loss{job_id=\"job-") && l.contains(",rank=\"1\",term=\"nce_1t5\"}")),
        "{scraped}"
    );
    dashboard_matches(&scraped, &repo().join("deploy/grafana/amdim-dashboard.json"));
    // Two ranks wait for each other at the straggler exchange: that time is
    // counted, as its own phase.
    let rank_sync: f64 = scraped
        .lines()
        .filter(|l| l.starts_with("amdim_step_phase_seconds_total{") && l.contains("phase=\"rank_sync\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(rank_sync > 0.0, "no rank_sync time in\n{scraped}");

    // A real Prometheus scrapes all three, every second.
    let prom_port = free_ports(1);
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: amdim-coordinator\n    static_configs:\n      - targets: ['127.0.0.1:{coordinator}']\n  - job_name: amdim-worker\n    static_configs:\n      - targets: ['127.0.0.1:{}', '127.0.0.1:{}']\n",
            workers[0], workers[1]
        ),
    )
    .unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package prometheus; .ci/run installs it)");
    let _prometheus = Killed(prometheus);
    let rate = wait_for("a non-zero training rate from Prometheus", Duration::from_secs(60), || {
        first_value(&query(prom_port, "sum(rate(amdim_train_samples_total[5s]))")).filter(|r| *r > 0.0)
    });
    let busy = wait_for("the coordinator's worker count in Prometheus", Duration::from_secs(30), || {
        first_value(&query(prom_port, "amdim_workers{state=\"busy\"}"))
    });
    let targets_up = first_value(&query(prom_port, "sum(up)")).unwrap_or(0.0);
    eprintln!("prometheus: {rate:.1} samples/s, {busy} busy workers, {targets_up} targets up");
    assert_eq!(busy, 2.0);
    assert_eq!(targets_up, 3.0);
    // The amdim job id arrives intact as job_id; `job` stays the scrape job's.
    let series = query(prom_port, "amdim_train_steps_total");
    let labels: Vec<&serde_json::Value> = series["data"]["result"]
        .as_array()
        .map_or(Vec::new(), |r| r.iter().map(|s| &s["metric"]).collect());
    assert_eq!(labels.len(), 2, "{series}");
    for l in &labels {
        assert!(l["job_id"].as_str().is_some_and(|j| j.starts_with("job-")), "job_id lost: {l}");
        assert_eq!(l["job"], "amdim-worker", "{l}");
        assert!(l.get("exported_job").is_none(), "{l}");
    }
    let builds = query(prom_port, "count by (job, backend) (amdim_build_info)");
    let backends: Vec<String> = builds["data"]["result"].as_array().map_or(Vec::new(), |r| {
        r.iter()
            .map(|s| format!("{}/{}", s["metric"]["job"], s["metric"]["backend"]))
            .collect()
    });
    assert!(backends.iter().any(|b| b == "\"amdim-coordinator\"/\"none\""), "{builds}");
    let backend = if cfg!(feature = "cuda") { "cuda" } else { "cpu-flex" };
    assert!(backends.iter().any(|b| *b == format!("\"amdim-worker\"/\"{backend}\"")), "{builds}");

    // deploy/prometheus.yml is a valid configuration for the local mode.
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo().join("deploy/prometheus.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The job still ends well.
    let status = wait_for("the local job to end", Duration::from_secs(300), || job.0.try_wait().unwrap());
    let log = std::fs::read_to_string(tmp.path().join("local.log")).unwrap();
    assert!(status.success(), "{log}");
}
