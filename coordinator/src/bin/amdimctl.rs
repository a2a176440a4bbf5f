//! `amdimctl`: the user's command-line client. It submits, lists, describes,
//! watches and cancels jobs and shows their events and the workers (gRPC to
//! the coordinator, `jobs`); runs a whole job on this machine (`local`);
//! validates job specs locally with the same field-named errors the worker
//! and coordinator give; packs and inspects datasets; lists and exports
//! checkpoints; prints and plots run histories. Output as a table, JSON or YAML (`-o`). Exit codes: 0 ok,
//! 1 failure (or a watched job that did not succeed), 2 invalid input,
//! 130 interrupted.

use amdim_coordinator::ctl::checkpoints::{self, human_age};
use amdim_coordinator::ctl::client_config;
use amdim_coordinator::ctl::dataset::{self, human_bytes};
use amdim_coordinator::ctl::jobs;
use amdim_coordinator::ctl::output::Output;
use amdim_shared::auth::read_token;
use amdim_shared::spec::JobSpec;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "amdimctl", version, about = "Submit and watch AMDIM training jobs")]
struct Cli {
    /// The coordinator's gRPC address (default: the config file's `server`,
    /// else http://127.0.0.1:7070). The config file is $AMDIM_CONFIG, else
    /// ~/.config/amdim/config.toml, with `server`, `token_file`, `tls_ca_file`.
    #[arg(long, global = true, env = "AMDIM_SERVER")]
    server: Option<String>,
    /// The client token, when the coordinator requires one.
    #[arg(long, global = true, env = "AMDIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the client token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinator's TLS certificate,
    /// for an https:// --server (default: the system's roots).
    #[arg(long, global = true, env = "AMDIM_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a job spec (TOML, with AMDIM_SECTION__FIELD overrides) without submitting it.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Submit a job spec to the coordinator (validated here first).
    Submit {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Override scheduling.min_workers / max_workers.
        #[arg(long)]
        min_workers: Option<u32>,
        #[arg(long)]
        max_workers: Option<u32>,
        /// Wait until the job ends, printing its progress; exit 1 unless it succeeded.
        #[arg(long)]
        watch: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List jobs.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One job: state, generations (with why each ended), progress.
    #[command(alias = "describe")]
    Get {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Wait until a job ends, printing its progress and events; exit 1
    /// unless it succeeded. Survives a coordinator restart.
    Watch { id: String },
    /// What happened to a job: submitted, generations started and ended
    /// (with why), workers lost, restarts, checkpoints, the end.
    Events {
        id: String,
        /// Keep printing new events until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Print a shell completion script (e.g. `amdimctl completions bash >
    /// /etc/bash_completion.d/amdimctl`).
    Completions { shell: clap_complete::Shell },
    /// Run a job on this machine: an in-process coordinator and N local
    /// worker processes (`amdim-worker agent`); exit 0 when it succeeds.
    Local {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Worker processes (default: scheduling.max_workers).
        #[arg(long)]
        workers: Option<u32>,
        /// The amdim-worker binary (default: next to amdimctl, then PATH).
        #[arg(long, env = "AMDIM_WORKER_BIN")]
        worker_bin: Option<PathBuf>,
        /// Serve Prometheus metrics on 127.0.0.1: the coordinator at this
        /// port, worker i at port+1+i (deploy/prometheus.yml scrapes 9464, 9465, 9466).
        #[arg(long)]
        metrics_port: Option<u16>,
    },
    /// Ask the coordinator's gRPC health service (grpc.health.v1, no token
    /// needed); prints the status and exits 0 on SERVING, 1 otherwise.
    Health {
        /// The service to ask about ("" for the whole server,
        /// amdim.v1.JobService, amdim.v1.WorkerService).
        #[arg(long, default_value = "")]
        service: String,
        /// Seconds to wait for the connection and the answer.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
    /// List the workers the coordinator knows.
    Workers {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Pack and inspect datasets.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// List the complete checkpoints of a job (its id: the coordinator
    /// gives its checkpoint.uri) or under a checkpoint URI (a folder,
    /// file:// or s3://bucket/prefix), with step, epoch, ranks, size, age.
    Checkpoints {
        /// A job id or a checkpoint URI.
        #[arg(value_name = "JOB|URI")]
        uri: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Linear-probe and k-NN accuracy of a job's (or a checkpoint's) frozen
    /// features, via `amdim-worker probe`.
    Probe(amdim_coordinator::ctl::probe::Args),
    /// A run's history (history.jsonl beside its checkpoints): step, epoch,
    /// elapsed, loss, lr, images/s and the online heads' accuracies.
    History {
        /// A job id or a checkpoint URI.
        #[arg(value_name = "JOB|URI")]
        uri: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Draw the loss and online accuracy curves of one or several runs
    /// (job ids or checkpoint URIs) on shared axes into a PNG.
    Plot(amdim_coordinator::ctl::plot::Args),
    /// Download a checkpoint's model weights (safetensors, the authors'
    /// PyTorch names, their model described in the metadata) and manifest
    /// into a folder, verified; says on stderr which model they hold.
    Export {
        /// A job id or a checkpoint URI.
        #[arg(value_name = "JOB|URI")]
        uri: String,
        /// The checkpoint's step (default: the newest complete one).
        #[arg(long)]
        step: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Pack an ImageFolder tree (SRC/train/<class>/<image>, optional SRC/val)
    /// into tar shards plus index and manifest at DST (a folder, file:// or
    /// s3://bucket/prefix; S3 settings from AWS_* variables, AWS_ENDPOINT_URL
    /// for a custom endpoint).
    Pack {
        src: PathBuf,
        dst: String,
        /// Largest shard (B, KB, KiB, MB, MiB, GB, GiB).
        #[arg(long, default_value = "256MiB", value_parser = dataset::parse_size)]
        shard_size: u64,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print samples, classes, shards and sizes of a packed dataset, after
    /// checking its index and shard sizes against the manifest.
    Inspect {
        uri: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// Exit codes scripts can rely on: 0 ok, 1 failure, 2 invalid input.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let conn = Conn {
        server: cli.server,
        token: cli.token,
        token_file: cli.token_file,
        tls_ca_file: cli.tls_ca_file,
    };
    match cli.command {
        Command::Validate { file, output } => validate(file, output),
        Command::Submit {
            file,
            min_workers,
            max_workers,
            watch,
            output,
        } => match load_spec(&file) {
            Err(code) => code,
            Ok(spec) => jobs_command(&conn, |c| jobs::submit(c, &file, &spec, min_workers, max_workers, watch, output)),
        },
        Command::List { output } => jobs_command(&conn, |c| jobs::list(c, output)),
        Command::Get { id, output } => jobs_command(&conn, |c| jobs::get(c, &id, output)),
        Command::Watch { id } => jobs_command(&conn, |c| jobs::watch(c, &id)),
        Command::Events { id, follow, output } => jobs_command(&conn, |c| jobs::events(c, &id, follow, output)),
        Command::Cancel { id } => jobs_command(&conn, |c| jobs::cancel(c, &id)),
        Command::Local {
            file,
            workers,
            worker_bin,
            metrics_port,
        } => match load_spec(&file) {
            Err(code) => code,
            Ok(spec) => {
                let n = workers.unwrap_or(spec.scheduling.max_workers).max(1);
                match runtime().and_then(|rt| rt.block_on(amdim_coordinator::ctl::local::run(&file, &spec, n, worker_bin, metrics_port))) {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        },
        Command::Workers { output } => jobs_command(&conn, |c| jobs::workers(c, output)),
        Command::Health { service, timeout_s } => health(&conn, &service, timeout_s),
        Command::Dataset { command } => report(run_dataset(command)),
        Command::Checkpoints { uri, output } => with_checkpoint_uri(&conn, uri, |uri| async move { list_checkpoints(&uri, output).await }),
        Command::Export { uri, step, out } => with_checkpoint_uri(&conn, uri, |uri| async move {
            let path = checkpoints::export(&uri, step, &out).await?;
            eprintln!("{}", checkpoints::describe(&path)?);
            println!("{}", path.display());
            Ok(())
        }),
        Command::History { uri, output } => with_checkpoint_uri(&conn, uri, |uri| async move {
            amdim_coordinator::ctl::history::print(&uri, output).await
        }),
        Command::Plot(args) if args.targets.iter().any(|t| amdim_coordinator::ctl::plot::is_job(t)) => {
            jobs_command(&conn, |c| async move {
                amdim_coordinator::ctl::plot::run(Some(c), args).await.map(|()| ExitCode::SUCCESS)
            })
        }
        Command::Plot(args) => report(runtime().and_then(|rt| rt.block_on(amdim_coordinator::ctl::plot::run(None, args)))),
        Command::Probe(args) if args.is_job() => jobs_command(&conn, |c| amdim_coordinator::ctl::probe::for_job(c, args)),
        Command::Probe(args) => runtime()
            .and_then(|rt| rt.block_on(amdim_coordinator::ctl::probe::for_uri(args)))
            .unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "amdimctl", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// How to reach the coordinator, as given by flags and environment.
struct Conn {
    server: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
}

impl Conn {
    /// The flags merged with the config file (client_config's rules).
    fn resolve(&self) -> anyhow::Result<client_config::Connection> {
        let file = match client_config::default_path(|k| std::env::var(k).ok()) {
            Some(path) => client_config::load(&path).map_err(|e| anyhow::anyhow!("config file {e}"))?,
            None => client_config::FileConfig::default(),
        };
        Ok(client_config::merge(
            self.server.clone(),
            self.token.clone(),
            self.token_file.clone(),
            self.tls_ca_file.clone(),
            file,
        ))
    }
}

/// Runs a coordinator command; its result is the exit code.
fn jobs_command<F>(cli: &Conn, f: impl FnOnce(jobs::Client) -> F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let result = cli.resolve().and_then(|conn| {
        let token = read_token(conn.token.clone(), conn.token_file.as_deref(), "--token-file").map_err(anyhow::Error::msg)?;
        runtime()?.block_on(async {
            let client = jobs::connect(&conn.server, token.as_deref(), conn.tls_ca_file.as_deref()).await?;
            f(client).await
        })
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `amdimctl health`: the status on stdout; 0 only for SERVING.
fn health(conn: &Conn, service: &str, timeout_s: u64) -> ExitCode {
    let timeout = std::time::Duration::from_secs(timeout_s.max(1));
    let status = conn.resolve().and_then(|c| {
        runtime()?.block_on(amdim_coordinator::ctl::health::check(
            &c.server,
            c.tls_ca_file.as_deref(),
            service,
            timeout,
        ))
    });
    match status {
        Ok(status) => {
            println!("{status}");
            if status == "SERVING" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Runs `f` on a checkpoint URI: `target` itself, or, when it is a job id,
/// the job's `checkpoint.uri` as the coordinator has it.
fn with_checkpoint_uri<F>(conn: &Conn, target: String, f: impl FnOnce(String) -> F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if jobs::is_job_id(&target) && !std::path::Path::new(&target).exists() {
        jobs_command(conn, |c| async move {
            let uri = jobs::checkpoint_uri(c, &target).await?;
            f(uri).await.map(|()| ExitCode::SUCCESS)
        })
    } else {
        report(runtime().and_then(|rt| rt.block_on(f(target))))
    }
}

async fn list_checkpoints(uri: &str, output: Output) -> anyhow::Result<()> {
    let list = checkpoints::list(uri).await?;
    match output.document(&serde_json::to_value(&list)?) {
        Some(doc) => println!("{doc}"),
        None => {
            println!("{:>10} {:>6} {:>6} {:>11} {:>9}", "step", "epoch", "ranks", "size", "age");
            for c in list {
                println!(
                    "{:>10} {:>6} {:>6} {:>11} {:>9}",
                    c.step,
                    c.epoch,
                    c.world_size,
                    human_bytes(c.bytes),
                    human_age(c.age_s)
                );
            }
        }
    }
    Ok(())
}

/// The spec in `file` with its environment overrides, or exit code 2
/// after printing the field-named error.
fn load_spec(file: &std::path::Path) -> Result<JobSpec, ExitCode> {
    JobSpec::load(file).map_err(|e| {
        eprintln!("error: {}: {e}", file.display());
        ExitCode::from(EXIT_INVALID)
    })
}

fn validate(file: PathBuf, output: Output) -> ExitCode {
    match load_spec(&file) {
        Ok(spec) => {
            let value = match serde_json::to_value(&spec) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match output.document(&value) {
                Some(doc) => println!("{doc}"),
                None => println!(
                    "{}: valid — {} px encoder (ndf {}, D {}, depth {}), global batch {}, {} epochs, checkpoints at {}",
                    file.display(),
                    spec.model.image_size,
                    spec.model.ndf,
                    spec.model.n_rkhs,
                    spec.model.depth,
                    spec.train.batch_size,
                    spec.train.epochs,
                    spec.checkpoint.uri
                ),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run_dataset(command: DatasetCommand) -> anyhow::Result<()> {
    let runtime = runtime()?;
    match command {
        DatasetCommand::Pack {
            src,
            dst,
            shard_size,
            output,
        } => {
            let packed = runtime.block_on(dataset::pack(&src, &dst, shard_size))?;
            match output.document(&serde_json::to_value(&packed)?) {
                Some(doc) => println!("{doc}"),
                None => {
                    for p in packed {
                        println!(
                            "{dst}/{}: {} samples, {} classes, {} shards, {}",
                            p.split,
                            p.samples,
                            p.classes,
                            p.shards,
                            human_bytes(p.bytes)
                        );
                    }
                }
            }
        }
        DatasetCommand::Inspect { uri, output } => {
            let reports = runtime.block_on(dataset::inspect(&uri))?;
            match output.document(&serde_json::to_value(&reports)?) {
                Some(doc) => println!("{doc}"),
                None => {
                    println!(
                        "{:<6} {:>10} {:>8} {:>7} {:>11}  samples/class  classes",
                        "split", "samples", "classes", "shards", "size"
                    );
                    for r in reports {
                        let more = if r.classes > r.class_names.len() { ", …" } else { "" };
                        println!(
                            "{:<6} {:>10} {:>8} {:>7} {:>11}  {}–{}  {}{more}",
                            r.split,
                            r.samples,
                            r.classes,
                            r.shards,
                            human_bytes(r.bytes),
                            r.class_samples_min,
                            r.class_samples_max,
                            r.class_names.join(", ")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
