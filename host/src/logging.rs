//! Log set-up shared by the programs: to standard error, filtered by `RUST_LOG` (default `info`),
//! as text (coloured on a terminal) or one JSON object per line for log collectors.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people (what journald shows).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global logger.
pub fn init(format: LogFormat) {
    init_with(format, tracing_subscriber::layer::Identity::new());
}

/// Installs the global logger with `extra`, a layer that sees every event unfiltered (the
/// sender's status file keeps the last warning with one).
pub fn init_with<L: Layer<Registry> + Send + Sync + 'static>(format: LogFormat, extra: L) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(extra)
        .with(fmt.with_filter(filter))
        .init();
}
