//! `checkvalve-status`: serves the receiver's live state read-only over HTTP, as its own process
//! (and user): Prometheus metrics at `/metrics` and a status page at `/`.
//!
//! The receiver never sends a byte; it writes `STATE/live.json` every second. This program only
//! reads that file: nothing it receives changes anything, it serves no share contents, and it
//! works with the receiver stopped (and says so).

mod metrics;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use tracing::{error, info};

/// A live state older than this, from a receiver that did not say it stopped, means it is down.
const STALE: Duration = Duration::from_secs(5);

/// Serve a checkvalve receiver's live state: /metrics (Prometheus) and / (status page).
#[derive(Debug, Parser)]
#[command(name = "checkvalve-status", version, about)]
struct Args {
    /// Address to serve on, HOST:PORT (port 0 picks a free one; the log says which).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9480")]
    listen: SocketAddr,
    /// The receiver's state folder (where it writes live.json).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
}

/// What the handlers share: where the live state is.
struct Shared {
    state: PathBuf,
}

/// The live state as the handlers see it: what the receiver last wrote, and whether it runs.
pub struct View {
    /// The state, if the receiver ever wrote one.
    pub live: Option<checkvalve_formats::live::State>,
    /// The receiver wrote it within the last few seconds and did not stop.
    pub running: bool,
    /// Seconds since it was written.
    pub age_s: Option<u64>,
}

fn view(shared: &Shared) -> View {
    let live = checkvalve_formats::live::State::read(&shared.state);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age_s = live.as_ref().map(|l| now.saturating_sub(l.updated_unix));
    let running = live
        .as_ref()
        .is_some_and(|l| !l.stopped && age_s.unwrap_or(u64::MAX) <= STALE.as_secs());
    View {
        live,
        running,
        age_s,
    }
}

async fn index(State(shared): State<Arc<Shared>>) -> Html<String> {
    Html(page::render(&view(&shared)))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match metrics::render(&view(&shared)) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            error!("cannot encode metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn main() -> Result<()> {
    checkvalve_host::logging::init(checkvalve_host::logging::LogFormat::Human);
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let shared = Arc::new(Shared {
        state: args.state.clone(),
    });
    // GET (and HEAD) only: any other method gets 405, any other path 404.
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    // A hang-up never ends the server; there is nothing to reload (every request reads the live
    // state afresh).
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP: nothing to reload (every request reads the live state afresh)");
            }
        });
    }
    info!(bind = %local, state = %args.state.display(), "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        })
        .await
        .context("server failed")?;
    info!("stopped");
    Ok(())
}
