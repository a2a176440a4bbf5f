//! `amdimctl`: the user's command-line client. Today it validates job specs
//! locally (`amdimctl validate -f job.toml`), with the same field-named errors
//! the worker and coordinator give.

use amdim_shared::spec::JobSpec;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "amdimctl", version, about = "Submit and watch AMDIM training jobs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
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
}

/// Exit codes scripts can rely on: 0 ok, 2 invalid input.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file, output } => match JobSpec::load(&file) {
            Ok(spec) => {
                match output {
                    Output::Json => match serde_json::to_string_pretty(&spec) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::FAILURE;
                        }
                    },
                    Output::Table => println!(
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
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                ExitCode::from(EXIT_INVALID)
            }
        },
    }
}
