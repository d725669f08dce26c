//! `api`: reads its configuration, then builds and runs the HTTP server until
//! SIGTERM or Ctrl-C (in-flight requests are drained first).

use std::process::ExitCode;

// The request path allocates a lot of small, short-lived objects; mimalloc handles
// that pattern markedly better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use api::config::ApiConfig;
use api::startup::Application;

#[tokio::main]
async fn main() -> ExitCode {
    events::telemetry::init();
    events::tls::use_ring_crypto();
    let config = match ApiConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    if config.metrics {
        if let Err(e) = api::http_metrics::install() {
            tracing::error!(error = %e, "cannot record metrics");
            return ExitCode::FAILURE;
        }
    }
    // Every setting once, secrets redacted (see `SecretString`).
    tracing::info!(settings = ?config, "settings");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "api failed to start");
            return ExitCode::FAILURE;
        }
    };
    return_startup_memory();
    match app.run_until_stopped(startup_shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "api stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// Gives back to the OS what building the app allocated and freed (migrations,
/// the OpenAPI document). mimalloc returns freed memory lazily, on later
/// allocations, so an idle api would otherwise keep it for as long as it is idle.
fn return_startup_memory() {
    // SAFETY: `mi_collect` only walks mimalloc's own heaps; it takes no pointers.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

async fn startup_shutdown_signal() {
    events::shutdown::signal().await;
}
