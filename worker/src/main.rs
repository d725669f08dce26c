//! `worker`: consumes chat events and answers them. Run as many as you like.

use std::process::ExitCode;

// The request path allocates a lot of small, short-lived objects; mimalloc handles
// that pattern markedly better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use worker::config::WorkerConfig;
use worker::startup::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    events::telemetry::init();
    let config = match WorkerConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    let worker = match Worker::build(config).await {
        Ok(worker) => worker,
        Err(e) => {
            tracing::error!(error = %e, "worker failed to start");
            return ExitCode::FAILURE;
        }
    };
    worker.run(events::shutdown::on_signal()).await;
    ExitCode::SUCCESS
}
