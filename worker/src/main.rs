//! `worker`: consumes chat events and answers them (run as many as you like), or,
//! with `replay`, rebuilds the read models and exports streams.

use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};

use events::config::DatabaseSettings;
use events::projections::rows::RowFormat;
use worker::config::WorkerConfig;
use worker::replay::billing::{self, BillingFormat};
use worker::replay::export::{ExportFilter, ExportFormat};
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
    #[arg(long, env = "WORKER_ROLES", default_value = "replies,memory")]
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
    /// Outbox rows the broker kept refusing, parked so they hold nothing back.
    Outbox {
        #[command(subcommand)]
        action: Outbox,
    },
}

#[derive(Subcommand)]
enum Outbox {
    /// List parked rows: position, failed attempts, when, and the last error.
    Parked,
    /// Give parked rows a fresh set of attempts; the next sweep publishes them.
    Retry {
        /// Only the row of this global position.
        #[arg(long, conflicts_with = "all")]
        position: Option<i64>,
        /// Every parked row.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum Replay {
    /// Rebuild every read model from the log and swap it in, while the system runs.
    Rebuild {
        /// Events per batch (one transaction, a few multi-row statements).
        #[arg(long, default_value_t = 2000)]
        batch: u32,
    },
    /// Rebuild every read model aside and compare it, row by row, with the live one.
    /// Exits 0 when they match, 1 (listing the first differences) when not.
    Verify {
        /// Events per batch.
        #[arg(long, default_value_t = 2000)]
        batch: u32,
    },
    /// Write events to standard output, oldest first. Filters combine.
    Export {
        /// Only this stream, e.g. `chat-7-42`, `bot-42` or `session-<uuid>`.
        #[arg(long)]
        stream: Option<String>,
        /// Only this user's streams: their bots, their chats, their sessions.
        #[arg(long)]
        user: Option<i64>,
        /// Only events recorded at or after this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        from: Option<DateTime<Utc>>,
        /// Only events recorded before this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        to: Option<DateTime<Utc>>,
        /// Only events after this global position.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Payloads in today's schema (through the upcasters), not as stored.
        #[arg(long)]
        upcast: bool,
    },
    /// Print one conversation as it stood at an instant, rebuilt from the log, in
    /// the rows of `GET /chat/history`.
    History {
        #[arg(long)]
        user: i64,
        #[arg(long)]
        bot: i64,
        /// The instant (RFC 3339), e.g. `2026-11-24T18:00:00Z`.
        #[arg(long, value_parser = rfc3339)]
        as_of: DateTime<Utc>,
        /// `array` (the app's positional rows) or `object`.
        #[arg(long, default_value = "array")]
        format: String,
    },
    /// Sum the usage the log records, per user, UTC day and model: replies and
    /// memory refreshes, prompt and completion tokens (failed and stopped calls'
    /// included: they are paid too).
    Usage {
        /// The first UTC day, e.g. `2026-12-01`.
        #[arg(long)]
        from: NaiveDate,
        /// The last UTC day, included.
        #[arg(long)]
        to: NaiveDate,
        /// Only this user.
        #[arg(long)]
        user: Option<i64>,
        #[arg(long, value_enum, default_value = "csv")]
        format: BillingFormat,
    },
    /// Rewrap every data key under the key-encryption key in
    /// `DATA_KEY_ENCRYPTION_KEY`, opening those still under the one in
    /// `DATA_KEY_ENCRYPTION_KEY_PREVIOUS`. Safe to rerun or interrupt.
    RotateKek,
    /// Seal, in place, the personal texts that releases before sealing wrote in
    /// the clear; then rebuild the views from the sealed log, record the run
    /// (`HistoryEncrypted`) and verify. Resumable, and safe to rerun: a rerun
    /// finds nothing left to seal. Takes the replay lock.
    EncryptHistory {
        /// Events per batch (one transaction).
        #[arg(long, default_value_t = 2000)]
        batch: u32,
    },
    /// Rebuild the prompt of a reply from the log, print it turn by turn, and
    /// check it against the digest the reply recorded. Exits 1 when it differs.
    Explain {
        /// The reply's id, or its message's (the latest attempt's reply).
        #[arg(long)]
        message: String,
    },
}

fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| format!("{e}; expected RFC 3339, e.g. 2026-11-24T18:00:00Z"))
}

#[tokio::main]
async fn main() -> ExitCode {
    events::telemetry::init();
    events::tls::use_ring_crypto();
    let cli = Cli::parse();
    let outcome = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.roles).await,
        Command::Replay { action } => replay(action).await,
        Command::Outbox { action } => outbox(action).await,
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
    // Every setting once, secrets redacted (see `SecretString`).
    tracing::info!(settings = ?config, "settings");
    if let Some(addr) = config.metrics_addr {
        events::metrics::prometheus()?
            .with_http_listener(addr)
            .install()?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let worker = Worker::build(config).await?;
    tracing::info!(replies = roles.replies, memory = roles.memory, "roles");
    worker.run(roles, events::shutdown::on_signal()).await?;
    Ok(())
}

async fn outbox(action: Outbox) -> Result<(), Box<dyn std::error::Error>> {
    use events::outbox::OutboxRelay;
    let pool = events::db::connect_and_migrate_for_replay(&DatabaseSettings::from_env()?).await?;
    match action {
        Outbox::Parked => {
            let parked = OutboxRelay::parked(&pool).await?;
            if parked.is_empty() {
                println!("no parked outbox rows");
            }
            for row in parked {
                println!(
                    "position {}: {} failed attempts, parked at {}: {}",
                    row.global_position,
                    row.attempts,
                    row.parked_at,
                    row.last_error.unwrap_or_default()
                );
            }
        }
        Outbox::Retry { position, all } => {
            if position.is_none() && !all {
                return Err("say which rows: --position <N>, or --all".into());
            }
            let released = OutboxRelay::retry_parked(&pool, position).await?;
            println!("released {released} parked row(s); the next sweep publishes them");
        }
    }
    Ok(())
}

/// Runs `verify`, prints its verdict, and fails when the views differ.
async fn verify_and_report(
    pool: &sqlx::MySqlPool,
    batch: u32,
    session_retention: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = worker::replay::verify(pool, batch, session_retention, cancel).await?;
    println!("{}", worker::replay::describe(&report));
    if !report.is_identical() {
        return Err("the live views differ from the log (listed above)".into());
    }
    Ok(())
}

async fn replay(action: Replay) -> Result<(), Box<dyn std::error::Error>> {
    let settings = DatabaseSettings::from_env()?;
    let pool = events::db::connect_and_migrate_for_replay(&settings).await?;
    let keyring = events::sealing::Keyring::new(pool.clone(), events::sealing::Kek::from_env()?);
    // Ctrl-C (or SIGTERM) stops a rebuild or verify between batches; the live
    // views are never touched before the swap.
    let cancel = events::shutdown::on_signal();
    match action {
        Replay::Rebuild { batch } => {
            worker::replay::rebuild(&pool, batch, &cancel).await?;
        }
        Replay::Verify { batch } => {
            verify_and_report(&pool, batch, settings.session_retention, &cancel).await?;
        }
        Replay::Export {
            stream,
            user,
            from,
            to,
            after,
            format,
            upcast,
        } => {
            let filter = ExportFilter {
                stream,
                user,
                from,
                to,
                after,
                upcast,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written =
                worker::replay::export::export((&pool, &keyring), &filter, format, &mut out)
                    .await?;
            tracing::info!(events = written, "exported");
        }
        Replay::History {
            user,
            bot,
            as_of,
            format,
        } => {
            let format = RowFormat::from_param(Some(&format))?;
            let rows =
                worker::replay::as_of::history_as_of((&pool, &keyring), user, bot, as_of, format)
                    .await?;
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Replay::Usage {
            from,
            to,
            user,
            format,
        } => {
            if from > to {
                return Err("--from must not be after --to".into());
            }
            let lines = billing::usage_lines(&pool, (from, to), user).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            billing::write_lines(&lines, format, &mut out)?;
            tracing::info!(lines = lines.len(), "usage summed from the log");
        }
        Replay::EncryptHistory { batch } => {
            let mut display = worker::replay::progress::ProgressDisplay::new("encrypt-history");
            let run = worker::replay::encrypt_history::encrypt_history(
                (&pool, &keyring),
                batch,
                &cancel,
                |run| {
                    display.update(events::projections::shadow::Progress {
                        position: run.position,
                        head: run.head,
                        events: run.scanned,
                    })
                },
            )
            .await;
            display.finish();
            let run = run?;
            println!(
                "encrypt-history: {} texts in {} events sealed by this run ({} by every run), \
                 the log is sealed through position {}; the views were rebuilt from it",
                run.fields_sealed, run.events_sealed, run.fields_sealed_in_all, run.position
            );
            verify_and_report(&pool, batch, settings.session_retention, &cancel).await?;
        }
        Replay::RotateKek => {
            let done = keyring
                .rotate(|so_far| {
                    eprintln!(
                        "rotate-kek: {} rewrapped, {} already current",
                        so_far.rewrapped, so_far.current
                    )
                })
                .await?;
            println!(
                "rotate-kek: {} data keys rewrapped under the current key-encryption key, {} \
                 already under it; DATA_KEY_ENCRYPTION_KEY_PREVIOUS can now be removed",
                done.rewrapped, done.current
            );
        }
        Replay::Explain { message } => {
            let explanation = worker::replay::explain::explain((&pool, &keyring), &message).await?;
            print!("{}", worker::replay::explain::describe(&explanation));
            if !explanation.matches() {
                return Err("the prompt rebuilt from the log differs from what was sent".into());
            }
        }
    }
    Ok(())
}
