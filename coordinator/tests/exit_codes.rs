//! `amdimctl` as a real process against a real coordinator on loopback:
//! its exit codes (0 ok, 1 the job did not succeed, 2 invalid input, 3
//! coordinator unreachable or refused, 130 interrupted), `list --state
//! --limit` and its tables, and `submit --set` with the environment's
//! overrides named on stderr.

use amdim_coordinator::server::{Coordinator, Settings};
use amdim_shared::proto::v1 as pb;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fashion-mnist.toml");

/// amdimctl with a clean environment: no config file, no AMDIM_* variables.
fn ctl(server: &str, token: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amdimctl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AMDIM_") {
            c.env_remove(k);
        }
    }
    c.env("AMDIM_CONFIG", "/nonexistent/amdim-config.toml");
    if let Some(t) = token {
        c.env("AMDIM_TOKEN", t);
    }
    c.args(["--server", server]).args(args).envs(env.iter().copied());
    c
}

fn run(server: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    ctl(server, Some("client"), args, env).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exit_codes_tell_failed_jobs_bad_input_unreachable_and_interrupts_apart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let coordinator = Coordinator::open(Settings {
        store: None,
        heartbeat_interval: Duration::from_millis(250),
        heartbeat_timeout: Duration::from_secs(5),
        keep_finished_jobs: Duration::from_secs(86_400),
        client_token: Some("client".into()),
        join_token: None,
        tls: None,
    })
    .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let _serving = rt.spawn(coordinator.serve(listener, std::future::pending::<()>()));

    // 3: nothing listens there; the coordinator refuses a missing token.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run(&format!("http://127.0.0.1:{free}"), &["list"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach the coordinator"), "{}", text(&out.stderr));
    let out = ctl(&server, None, &["list"], &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--token"), "{}", text(&out.stderr));

    // 2: a bad --set, an unknown field, a bad state, an unknown job.
    let out = run(&server, &["submit", "-f", EXAMPLE, "--set", "train.batch_size=x"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("train.batch_size"), "{}", text(&out.stderr));
    let out = run(&server, &["submit", "-f", EXAMPLE, "--set", "train.batchsize=8"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown field `train.batchsize`"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&server, &["list", "--state", "sleeping"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("running") && text(&out.stderr).contains("cancelled"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&server, &["get", "job-999999"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // 0: two submissions; the environment's change is named, --set wins over it.
    let env = [("AMDIM_TRAIN__MAX_STEPS", "5")];
    let out = run(&server, &["submit", "-f", EXAMPLE], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = text(&out.stdout).trim().to_string();
    assert!(
        text(&out.stderr).contains("AMDIM_TRAIN__MAX_STEPS changes train.max_steps") && text(&out.stderr).contains("-> 5"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &server,
        &["submit", "-f", EXAMPLE, "--set", "train.max_steps=7", "--set", "job.name=x"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("AMDIM_TRAIN__MAX_STEPS"), "{}", text(&out.stderr));
    let second = text(&out.stdout).trim().to_string();
    let spec_of = |id: &str| {
        rt.block_on(async {
            let mut c = amdim_coordinator::ctl::jobs::connect(&server, Some("client"), None).await.unwrap();
            let j = c.get(pb::GetJobRequest { id: id.into() }).await.unwrap().into_inner();
            amdim_shared::spec::JobSpec::from_toml_with_env(&j.spec_toml, &[]).unwrap()
        })
    };
    assert_eq!(spec_of(&first).train.max_steps, 5);
    assert_eq!((spec_of(&second).train.max_steps, spec_of(&second).job.name.as_str()), (7, "x"));

    // list: upper-case headers, --no-headers, --state and --limit.
    let out = run(&server, &["list"], &[]);
    let table = text(&out.stdout);
    assert!(
        table.starts_with("ID ") && table.contains("   NAME ") && table.contains("   STATE "),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");
    let out = run(&server, &["list", "--no-headers", "--limit", "1"], &[]);
    let table = text(&out.stdout);
    assert!(table.starts_with(&second) && table.lines().count() == 1, "{table}");
    let out = run(&server, &["list", "--state", "running,failed", "-o", "json"], &[]);
    assert_eq!(text(&out.stdout).trim(), "[]");

    // 1: a watched job that is cancelled did not succeed.
    let watcher = ctl(&server, Some("client"), &["watch", &first], &[])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let out = run(&server, &["cancel", &first], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let watched = watcher.wait_with_output().unwrap();
    assert_eq!(watched.status.code(), Some(1), "{}", text(&watched.stderr));
    assert!(text(&watched.stderr).contains("CANCELLED"), "{}", text(&watched.stderr));
    let out = run(&server, &["list", "--state", "cancelled", "--no-headers", "-o", "wide"], &[]);
    let row = text(&out.stdout);
    assert!(
        row.starts_with(&first) && row.lines().count() == 1 && row.contains("CANCELLED"),
        "{row}"
    );

    // 130: Ctrl-C while watching.
    let watcher = ctl(&server, Some("client"), &["watch", &second], &[])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let pid = libc::pid_t::try_from(watcher.id()).unwrap();
    // SAFETY: sends a signal to the child we started; no memory involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let watched = watcher.wait_with_output().unwrap();
    assert_eq!(watched.status.code(), Some(130), "{}", text(&watched.stderr));
}
