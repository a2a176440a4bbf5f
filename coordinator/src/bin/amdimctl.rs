//! `amdimctl`: the user's command-line client. It submits, lists, describes,
//! watches and cancels jobs and shows their events and the workers (gRPC to
//! the coordinator, `ctl::jobs` and `ctl::watch`); runs a whole job on this
//! machine (`local`); validates job specs locally with the same field-named
//! errors the worker and coordinator give; packs and inspects datasets;
//! lists and exports checkpoints; prints and plots run histories. Output as a table, a wide table, JSON or
//! YAML (`-o`). This file owns the flags and the exit status: every command
//! returns `anyhow::Result`, its error tagged with a `ctl::exit::Exit`
//! kind, mapped here to 0 ok, 1 job failed, 2 invalid input, 3 coordinator
//! unreachable or refused, 130 interrupted.

use amdim_coordinator::ctl::exit::{self, Exit, ExitExt, tagged};
use amdim_coordinator::ctl::jobs::{self, StateFilter};
use amdim_coordinator::ctl::spec_args::SpecArgs;
use amdim_coordinator::ctl::table::Format;
use amdim_coordinator::ctl::{checkpoints, client_config, dataset, health, history, local, logs, plot, probe, show, watch};
use amdim_shared::auth::read_token;
use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit status: 0 ok; 1 the job failed (watch, submit --watch, local) or another \
failure; 2 invalid input (flags, job spec, --set, unknown job); 3 coordinator unreachable or refused \
(address, TLS, token); 130 interrupted (Ctrl-C).";

#[derive(Parser)]
#[command(name = "amdimctl", version, about = "Submit and watch AMDIM training jobs", after_help = EXIT_CODES)]
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

/// The subcommands; each arm of `run` is one call into `ctl`.
#[derive(Subcommand)]
enum Command {
    /// Check a job spec (TOML, AMDIM_SECTION__FIELD variables, --set) without submitting it.
    Validate {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        format: Format,
    },
    /// Submit a job spec to the coordinator (validated here first). The
    /// shell's AMDIM_SECTION__FIELD variables apply, each one that changes
    /// the spec is printed on stderr; --set wins over them.
    Submit {
        #[command(flatten)]
        spec: SpecArgs,
        /// Override scheduling.min_workers / max_workers.
        #[arg(long)]
        min_workers: Option<u32>,
        #[arg(long)]
        max_workers: Option<u32>,
        /// Wait until the job ends, printing its progress; exit 1 unless it succeeded.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        format: Format,
    },
    /// List jobs, oldest first.
    List {
        /// Only jobs in these states (repeatable or comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        state: Vec<StateFilter>,
        /// Only the N newest jobs (after --state).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        format: Format,
    },
    /// One job: state, generations (with why each ended), checkpoints.
    #[command(alias = "describe")]
    Get {
        id: String,
        #[command(flatten)]
        format: Format,
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
        #[command(flatten)]
        format: Format,
    },
    /// The log lines of a job's workers, `[rank R]` in front when several
    /// ranks are shown (kept by the coordinator, or stored next to the
    /// checkpoints once the job ended).
    Logs {
        id: String,
        /// Only this rank's lines.
        #[arg(long)]
        rank: Option<u32>,
        /// Keep printing new lines until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        format: Format,
    },
    /// Print a shell completion script (e.g. `amdimctl completions bash >
    /// /etc/bash_completion.d/amdimctl`).
    Completions { shell: clap_complete::Shell },
    /// Run a job on this machine: an in-process coordinator and N local
    /// worker processes (`amdim-worker agent`) whose output goes to files;
    /// the terminal shows the progress and a summary. Exit 0 when it succeeds.
    Local {
        #[command(flatten)]
        spec: SpecArgs,
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
        /// Where the workers' logs (worker-N.log) and the job's events
        /// (events.jsonl) go (default: logs/ beside a local checkpoint.uri,
        /// else a folder under the temporary directory).
        #[arg(long)]
        log_dir: Option<PathBuf>,
    },
    /// Ask the coordinator's gRPC health service (grpc.health.v1, no token
    /// needed); prints the status; exit 0 on SERVING, 1 when not serving,
    /// 2 for an unknown service, 3 when unreachable.
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
        #[command(flatten)]
        format: Format,
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
        #[command(flatten)]
        format: Format,
    },
    /// Linear-probe and k-NN accuracy of a job's (or a checkpoint's) frozen
    /// features, via `amdim-worker probe`.
    Probe(probe::Args),
    /// A run's history (history.jsonl beside its checkpoints): step, epoch,
    /// elapsed, loss, lr, images/s and the online heads' accuracies.
    History {
        /// A job id or a checkpoint URI.
        #[arg(value_name = "JOB|URI")]
        uri: String,
        #[command(flatten)]
        format: Format,
    },
    /// Draw the loss and online accuracy curves of one or several runs
    /// (job ids or checkpoint URIs) on shared axes into a PNG.
    Plot(plot::Args),
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
        #[command(flatten)]
        format: Format,
    },
    /// Print samples, classes, shards and sizes of a packed dataset, after
    /// checking its index and shard sizes against the manifest.
    Inspect {
        uri: String,
        #[command(flatten)]
        format: Format,
    },
}

fn main() -> ExitCode {
    // clap's own errors (bad flags, an unknown --state) exit 2 as well.
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code(&e))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let conn = Conn {
        server: cli.server,
        token: cli.token,
        token_file: cli.token_file,
        tls_ca_file: cli.tls_ca_file,
    };
    let ok = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Validate { spec, format } => ok(show::validate(&spec.file, &spec.load()?, format)),
        Command::Submit {
            spec,
            min_workers,
            max_workers,
            watch,
            format,
        } => {
            let loaded = spec.load()?;
            ok(conn.call(|c| jobs::submit(c, &spec.file, &loaded, (min_workers, max_workers), watch, format)))
        }
        Command::List { state, limit, format } => ok(conn.call(|c| async move { jobs::list(c, &state, limit, format).await })),
        Command::Get { id, format } => ok(conn.call(|c| async move { jobs::get(c, &id, format).await })),
        Command::Watch { id } => ok(conn.call(|c| async move { watch::watch(c, &id).await })),
        Command::Events { id, follow, format } => ok(conn.call(|c| async move { watch::events(c, &id, follow, format).await })),
        Command::Cancel { id, format } => ok(conn.call(|c| async move { jobs::cancel(c, &id, format).await })),
        Command::Workers { format } => ok(conn.call(|c| jobs::workers(c, format))),
        Command::Logs { id, rank, follow } => conn.call(|c| async move { logs::logs(c, &id, rank, follow).await }),
        Command::Local {
            spec,
            workers,
            worker_bin,
            metrics_port,
            log_dir,
        } => {
            let loaded = spec.load()?;
            let run = local::Run {
                spec_file: &spec.file,
                spec: &loaded,
                workers: workers.unwrap_or(loaded.scheduling.max_workers).max(1),
                worker_bin,
                metrics_port,
                log_dir,
            };
            ok(runtime()?.block_on(local::run(run)))
        }
        Command::Health { service, timeout_s } => {
            let timeout = std::time::Duration::from_secs(timeout_s.max(1));
            let c = conn.resolve()?;
            let status = runtime()?.block_on(health::check(&c.server, c.tls_ca_file.as_deref(), &service, timeout))?;
            println!("{status}");
            Ok(if status == "SERVING" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Dataset { command } => ok(runtime()?.block_on(async move {
            match command {
                DatasetCommand::Pack {
                    src,
                    dst,
                    shard_size,
                    format,
                } => show::pack(&src, &dst, shard_size, format).await,
                DatasetCommand::Inspect { uri, format } => show::inspect(&uri, format).await,
            }
        })),
        Command::Checkpoints { uri, format } => {
            ok(conn.with_checkpoint_uri(uri, |uri| async move { show::checkpoints(&uri, format).await }))
        }
        Command::Export { uri, step, out } => ok(conn.with_checkpoint_uri(uri, |uri| async move {
            let path = checkpoints::export(&uri, step, &out).await?;
            eprintln!("{}", checkpoints::describe(&path)?);
            println!("{}", path.display());
            Ok(())
        })),
        Command::History { uri, format } => {
            ok(conn.with_checkpoint_uri(uri, |uri| async move { history::print(&uri, format.output).await }))
        }
        Command::Plot(args) if args.targets.iter().any(|t| plot::is_job(t)) => ok(conn.call(|c| plot::run(Some(c), args))),
        Command::Plot(args) => ok(runtime()?.block_on(plot::run(None, args))),
        Command::Probe(args) if args.is_job() => conn.call(|c| probe::for_job(c, args)),
        Command::Probe(args) => runtime()?.block_on(probe::for_uri(args)),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "amdimctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
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
    /// The flags merged with the config file (client_config's rules); a
    /// bad config file is invalid input.
    fn resolve(&self) -> Result<client_config::Connection> {
        let file = match client_config::default_path(|k| std::env::var(k).ok()) {
            Some(path) => client_config::load(&path)
                .map_err(|e| anyhow::anyhow!("config file {e}"))
                .exit(Exit::Invalid)?,
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

    /// Connects and runs `f` with the client; Ctrl-C or SIGTERM ends it
    /// with exit 130.
    fn call<T, F>(&self, f: impl FnOnce(jobs::Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let conn = self.resolve()?;
        let token = read_token(conn.token.clone(), conn.token_file.as_deref(), "--token-file")
            .map_err(anyhow::Error::msg)
            .exit(Exit::Invalid)?;
        runtime()?.block_on(async {
            tokio::select! {
                r = async {
                    let client = jobs::connect(&conn.server, token.as_deref(), conn.tls_ca_file.as_deref()).await?;
                    f(client).await
                } => r,
                signal = amdim_shared::shutdown::signalled() => {
                    eprintln!();
                    Err(tagged(Exit::Interrupted, anyhow::anyhow!("{signal}: interrupted")))
                }
            }
        })
    }

    /// Runs `f` on a checkpoint URI: `target` itself, or, when it is a job
    /// id, the job's `checkpoint.uri` as the coordinator has it.
    fn with_checkpoint_uri<F>(&self, target: String, f: impl FnOnce(String) -> F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        if jobs::is_job_id(&target) && !std::path::Path::new(&target).exists() {
            self.call(|c| async move { f(jobs::checkpoint_uri(c, &target).await?).await })
        } else {
            runtime()?.block_on(f(target))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}
