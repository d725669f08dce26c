//! One place that sets up `tracing` for a process.
//!
//! `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` switches to one JSON object
//! per line for log shippers. Logs go to standard error, so that standard output
//! stays clean for commands that write data (`worker replay export`).
//!
//! lapin is silenced by default: it logs every broker blip at ERROR, and our
//! publisher and consumer supervisor already report those conditions themselves,
//! once per episode (see [`crate::episode`]). So is `pinky_swear`, the promises
//! lapin answers with: it warns whenever a broker reply comes for a waiter that
//! is gone, as when a stopping process drops what it was waiting on.

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// What is logged when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=off,pinky_swear=off";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` so that tests which build the app in-process more than once don't panic.
    let _ = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        // Colours only on a terminal: in containers and files they are noise.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
}
