//! `checkvalve-status`: serves the receiver's live state read-only over HTTP, as its own process
//! (and user): a status page at `/`, Prometheus metrics at `/metrics`, the state and its alarms as
//! JSON at `/api/live.json`, and `/healthz` (200 while the receiver runs, 503 otherwise).
//!
//! The receiver never sends a byte; it writes `STATE/live.json` every second. This program only
//! reads that file: nothing it receives changes anything, it serves no share contents, and it
//! works with the receiver stopped (and says so).

mod alarms;
mod metrics;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use tracing::{error, info};

/// A live state older than this, from a receiver that did not say it stopped, means it is down.
const STALE: Duration = Duration::from_secs(5);

/// Examples, endpoints and exit codes, after the options in `--help`.
const STATUS_HELP: &str = "\
Examples:
  checkvalve-status --listen 127.0.0.1:9480 --state /var/lib/checkvalve-receive
  curl -s localhost:9480/metrics | promtool check metrics

Endpoints: / (status page, red in alarm), /metrics (Prometheus text format; OpenMetrics when
asked by Accept), /api/live.json (state and alarms), /healthz (200 while the receiver runs, 503
otherwise). GET only; nothing it receives changes anything.

Exit status: 0 stopped by SIGTERM or SIGINT; 1 cannot listen or start. SIGHUP reloads nothing
and never stops it.

Guide: docs/operator.md (/usr/share/doc/checkvalve-receiver/).";

/// Serve a checkvalve receiver's live state: / (status page), /metrics (Prometheus),
/// /api/live.json and /healthz.
#[derive(Debug, Parser)]
#[command(name = "checkvalve-status", version = checkvalve_host::VERSION, about, after_help = STATUS_HELP)]
struct Args {
    /// Address to serve on, HOST:PORT (port 0 picks a free one; the log says which).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9480")]
    listen: SocketAddr,
    /// The receiver's state folder (where it writes live.json).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Log lines as text (human) or one flat JSON object per line (json; fields in
    /// docs/operator.md).
    #[arg(long, value_enum, default_value = "human")]
    log_format: checkvalve_host::logging::LogFormat,
}

/// What the handlers share: where the live state is, and when this server started.
struct Shared {
    state: PathBuf,
    started_unix: f64,
}

/// `/api/live.json`: what the page shows, for tools.
#[derive(serde::Serialize)]
struct Api<'a> {
    /// The receiver wrote its state within the last 5 s and did not stop.
    running: bool,
    /// Seconds since it wrote it.
    age_s: Option<u64>,
    /// What is wrong (empty: all clear), the page's banner.
    alarms: Vec<alarms::Alarm>,
    /// The live state as the receiver wrote it.
    live: Option<&'a checkvalve_formats::live::State>,
    /// This server's version and commit.
    status_version: &'static str,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let now = now_unix();
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
    Html(page::render(&view(&shared), now_unix()))
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let format =
        metrics::Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        metrics::render(&view(&shared), format, shared.started_unix),
    )
        .into_response()
}

async fn api(State(shared): State<Arc<Shared>>) -> Response {
    let v = view(&shared);
    let body = Api {
        running: v.running,
        age_s: v.age_s,
        alarms: alarms::of(&v, now_unix()),
        live: v.live.as_ref(),
        status_version: checkvalve_host::VERSION,
    };
    match serde_json::to_string(&body) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            error!("cannot encode the live state: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// 200 while the receiver runs (the alarms are the page's and the API's business), 503 if not.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if view(&shared).running {
        (StatusCode::OK, "ok: the receiver is running\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the receiver is not running\n",
        )
            .into_response()
    }
}

fn main() -> Result<()> {
    checkvalve_host::manual::write_if_asked(<Args as clap::CommandFactory>::command());
    let args = Args::parse();
    checkvalve_host::logging::init(args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let shared = Arc::new(Shared {
        state: args.state.clone(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    });
    // GET (and HEAD) only: any other method gets 405, any other path 404.
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/api/live.json", get(api))
        .route("/healthz", get(healthz))
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
