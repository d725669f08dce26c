//! `worker`: consumes chat events and answers them (run as many as you like), or,
//! with `replay`, rebuilds the read models and exports streams.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use events::config::DatabaseSettings;
use worker::config::WorkerConfig;
use worker::startup::{Roles, Worker};

// The request path allocates a lot of small, short-lived objects; mimalloc handles
// that pattern markedly better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Configuration comes from the environment (see the README); the flags only pick
/// what to do.
#[derive(Parser)]
#[command(name = "worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// What to do when running: `replies`, `memory`, or both (comma-separated).
    #[arg(
        long,
        env = "WORKER_ROLES",
        default_value = "replies,memory",
        global = true
    )]
    roles: Roles,
}

#[derive(Subcommand)]
enum Command {
    /// Consume user messages and answer them, and keep memory (the default).
    Run,
    /// Operator tools over the event log.
    Replay {
        #[command(subcommand)]
        action: Replay,
    },
}

#[derive(Subcommand)]
enum Replay {
    /// Rebuild every read model from the log and swap it in, while the system runs.
    Rebuild {
        /// Events per transaction while replaying.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
    /// Write events as JSON lines to standard output, oldest first.
    Export {
        /// Only this stream, e.g. `chat-7-42` or `bot-42`.
        #[arg(long)]
        stream: Option<String>,
        /// Only events after this global position.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    events::telemetry::init();
    let cli = Cli::parse();
    let outcome = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.roles).await,
        Command::Replay { action } => replay(action).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(roles: Roles) -> Result<(), Box<dyn std::error::Error>> {
    let config = WorkerConfig::from_env()?;
    let worker = Worker::build(config).await?;
    tracing::info!(replies = roles.replies, memory = roles.memory, "roles");
    worker.run(roles, events::shutdown::on_signal()).await;
    Ok(())
}

async fn replay(action: Replay) -> Result<(), Box<dyn std::error::Error>> {
    let pool = events::db::connect_and_migrate(&DatabaseSettings::from_env()?).await?;
    match action {
        Replay::Rebuild { batch } => {
            worker::replay::rebuild(&pool, batch).await?;
        }
        Replay::Export { stream, after } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = worker::replay::export(&pool, stream.as_deref(), after, &mut out).await?;
            tracing::info!(events = written, "exported");
        }
    }
    Ok(())
}
