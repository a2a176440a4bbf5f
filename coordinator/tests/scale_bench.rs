//! The scale benchmark runs end to end at a small size: a real coordinator
//! child process, simulated workers on real sockets, every one registered
//! and assigned, no failed call, and a JSON line with the numbers. (The
//! 1,000-worker figures are in README; this only proves the tool works.)

use std::process::Command;

#[test]
fn the_scale_benchmark_reports_latencies_cpu_and_memory() {
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-coordinator"))
        .args(["bench", "--workers", "40", "--jobs", "4", "--seconds", "2", "--heartbeat-ms", "250"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(json["benchmark"], "coordinator_scale");
    assert_eq!(json["register"]["calls"], 40, "{json}");
    assert_eq!(json["busy_workers"], 40, "every simulated worker assigned: {json}");
    assert_eq!(json["running_jobs"], 4, "{json}");
    for call in ["register", "heartbeat", "get", "list"] {
        assert_eq!(json[call]["errors"], 0, "{call}: {json}");
        assert!(
            json[call]["p99_ms"].as_f64().unwrap() >= json[call]["p50_ms"].as_f64().unwrap(),
            "{json}"
        );
    }
    // 40 workers every 250 ms for about 2 s.
    assert!(json["heartbeat"]["calls"].as_u64().unwrap() >= 200, "{json}");
    assert!(json["coordinator_rss_mib"].as_f64().unwrap() > 1.0, "{json}");
    assert_eq!(json["failed_worker_tasks"], 0, "{json}");
}
