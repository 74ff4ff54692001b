//! `checkvalve-receive`: rebuilds what crossed a one-way link, verifies it end to end, and
//! publishes it atomically into an output folder. It never sends anything.

mod manifest;
mod net;
mod publish;
mod ratelimit;
mod receive;
mod share;
mod writer;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use checkvalve_common::assembler::{Assembler, AssemblerConfig};
use checkvalve_common::units::{parse_duration, parse_size};
use clap::Parser;
use tracing::{error, info};

/// A block of decoded content at the default shape (64 x 1,400 bytes, rounded up): the unit in
/// which the writer's queue is sized.
const WRITE_UNIT: usize = 128 << 10;

/// Receive files from a one-way link into an output folder.
#[derive(Debug, Parser)]
#[command(name = "checkvalve-receive", version, about)]
struct Args {
    /// Address to listen on, HOST:PORT (port 0 picks a free one; the log says which).
    #[arg(long, value_name = "HOST:PORT")]
    bind: String,
    /// Output folder (vendor-visible).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// State folder: lock, temporary files, manifest [default: OUT/.checkvalve].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Give up on an object after this long without a new datagram for it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    object_timeout: Duration,
    /// Largest file accepted.
    #[arg(long, default_value = "1T", value_parser = parse_size)]
    max_object_size: u64,
    /// Memory for datagrams queued (a quarter), content on its way to disk (an eighth) and blocks
    /// in progress (the rest); the receiver's resident memory stays below this plus about 16 MiB.
    #[arg(long, default_value = "48M", value_parser = parse_size)]
    max_pending: u64,
    /// Free space always left on the output filesystem (half of it is kept for the manifest).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    min_free: u64,
    /// Kernel receive buffer to ask for.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    rcvbuf: u64,
    /// Manifest of outcomes, one JSON line per file [default: STATE/manifest.jsonl].
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Interval between statistics lines.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Objects lost without a name are recorded as one manifest record per session per interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    aggregate_interval: Duration,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn resolve(s: &str) -> Result<SocketAddr> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .with_context(|| format!("cannot resolve {s:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{s:?} resolves to no address"))
}

fn run(args: Args) -> Result<()> {
    let bind = resolve(&args.bind)?;
    let (share, stale) = share::Share::open(&args.out, args.state.as_deref())
        .with_context(|| format!("cannot use output folder {}", args.out.display()))?;
    let share = Arc::new(share);
    if stale > 0 {
        info!(
            count = stale,
            "removed unfinished temporary files from a previous run"
        );
    }
    let manifest_path = args
        .manifest
        .clone()
        .unwrap_or_else(|| share.state().join("manifest.jsonl"));
    let manifest = Arc::new(
        manifest::Manifest::open(&manifest_path, args.min_free)
            .with_context(|| format!("cannot open manifest {}", manifest_path.display()))?,
    );
    raise_fd_limit();
    let budget = usize::try_from(args.max_pending).unwrap_or(usize::MAX);
    // A quarter queues datagrams (the kernel's buffer absorbs more), an eighth holds decoded
    // content on its way to disk, the rest blocks in progress.
    let queue_bytes = budget / 4;
    let writer_bytes = budget / 8;
    let (socket, local) = net::bind(bind, usize::try_from(args.rcvbuf).unwrap_or(usize::MAX))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install signal handler")?;
    }

    let dropped = Arc::new(AtomicU64::new(0));
    let chunks = (queue_bytes / net::CHUNK_BYTES).max(2);
    let (free_tx, free_rx) = net::chunk_pool(chunks);
    let (full_tx, full_rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let net_thread = {
        let (stop, dropped, queued) =
            (Arc::clone(&stop), Arc::clone(&dropped), Arc::clone(&queued));
        std::thread::Builder::new()
            .name("net".into())
            .spawn(move || net::drain(socket, full_tx, free_rx, chunks, queued, stop, dropped))?
    };
    let reserved = Arc::new(AtomicU64::new(0));
    let publisher = publish::Publisher::start(
        Arc::clone(&share),
        Arc::clone(&manifest),
        Arc::clone(&reserved),
    )?;
    let (writer_tx, writer_rx) = std::sync::mpsc::sync_channel(writer_bytes / 2 / WRITE_UNIT);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel();
    let (failed_tx, failed_rx) = std::sync::mpsc::channel();
    let writer = writer::Writer::new(
        Arc::clone(&share),
        Arc::clone(&manifest),
        publisher,
        Arc::clone(&reserved),
        recycle_tx,
        failed_tx,
        writer_bytes / 2,
    );
    let writer_thread = std::thread::Builder::new()
        .name("write".into())
        .spawn(move || writer.run(writer_rx))?;
    let config = AssemblerConfig {
        object_timeout: args.object_timeout,
        max_pending_bytes: budget - queue_bytes - writer_bytes,
        max_content_len: args.max_object_size,
        ..AssemblerConfig::default()
    };
    info!(bind = %local, out = %share.root().display(), state = %share.state().display(), manifest = %manifest_path.display(), "receiving");
    let rx = receive::Receive::new(
        Assembler::new(config, Instant::now()),
        receive::Outputs {
            share,
            manifest,
            writer: writer_tx,
            recycled: recycle_rx,
            failed: failed_rx,
            reserved,
        },
        args.min_free,
        args.stats_interval,
        args.aggregate_interval,
    );
    rx.run(&full_rx, &free_tx, &queued, &stop, &dropped);
    let _ = net_thread.join();
    let _ = writer_thread.join();
    info!("stopped");
    Ok(())
}

/// Every object in progress holds its temporary file open: allow as many as the hard limit permits.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
