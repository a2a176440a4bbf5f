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
    let registration = &json["registration"];
    assert_eq!(registration["registered"], 40, "{json}");
    assert_eq!(registration["failed"], 0, "{json}");
    assert!(registration["calls"]["calls"].as_u64().unwrap() >= 40, "{json}");
    assert_eq!(json["busy_workers"], 40, "every simulated worker assigned: {json}");
    assert_eq!(json["running_jobs"], 4, "{json}");
    for call in ["heartbeat", "get", "list"] {
        assert_eq!(json[call]["errors"], 0, "{call}: {json}");
        assert!(
            json[call]["p99_ms"].as_f64().unwrap() >= json[call]["p50_ms"].as_f64().unwrap(),
            "{json}"
        );
    }
    // 40 workers every 250 ms for about 2 s.
    assert!(json["heartbeat"]["calls"].as_u64().unwrap() >= 200, "{json}");
    assert!(json["coordinator_rss_mib"].as_f64().unwrap() > 1.0, "{json}");
    assert!(json["coordinator_kib_per_worker"].as_f64().is_some(), "{json}");
    assert_eq!(json["failed_worker_tasks"], 0, "{json}");
}

/// Registrations over the coordinator's rate are shed with a retry-after
/// hint, and the simulated agents, following it, all register.
#[test]
fn registrations_over_the_limit_are_shed_and_every_agent_still_registers() {
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-coordinator"))
        .args(["bench", "--workers", "60", "--jobs", "3", "--seconds", "1", "--heartbeat-ms", "250"])
        .args(["--registrations-per-s", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap();
    let registration = &json["registration"];
    assert_eq!(registration["registered"], 60, "{json}");
    assert_eq!(registration["failed"], 0, "{json}");
    assert!(registration["shed"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(
        registration["calls"]["error_codes"]["ResourceExhausted"], registration["shed"],
        "{json}"
    );
    // 60 at 20 a second, two at once: about 3 s, never at once.
    assert!(registration["seconds"].as_f64().unwrap() > 1.5, "{json}");
    assert_eq!(json["busy_workers"], 60, "{json}");
}
