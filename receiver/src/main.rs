//! `checkvalve-receive`: rebuilds what crossed a one-way link, verifies it end to end, and
//! publishes it atomically into an output folder. It never sends anything.

mod manifest;
mod net;
mod receive;
mod share;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use checkvalve_common::assembler::{Assembler, AssemblerConfig};
use checkvalve_common::units::{parse_duration, parse_size};
use clap::Parser;
use tracing::{error, info};

/// Chunks of up to 64 datagrams queued between the socket thread and the assembler: 64K datagrams,
/// about 95 MiB at the most, a second or more of traffic to ride out a stall of the disk.
const QUEUED_CHUNKS: usize = 1024;

/// Receive files from a one-way link into an output folder.
#[derive(Debug, Parser)]
#[command(name = "checkvalve-receive", version, about)]
struct Args {
    /// Address to listen on, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    bind: String,
    /// Output folder (vendor-visible); state lives in its hidden `.checkvalve` folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Give up on an object after this long without a new datagram for it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    object_timeout: Duration,
    /// Largest file accepted.
    #[arg(long, default_value = "1T", value_parser = parse_size)]
    max_object_size: u64,
    /// Most memory held in partly received blocks.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    max_pending: u64,
    /// Free space always left on the output filesystem.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    min_free: u64,
    /// Kernel receive buffer to ask for.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    rcvbuf: u64,
    /// Manifest of outcomes, one JSON line per file [default: OUT/.checkvalve/manifest.jsonl].
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Interval between statistics lines.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stats_interval: Duration,
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
    s.to_socket_addrs()
        .with_context(|| format!("cannot resolve {s:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{s:?} resolves to no address"))
}

fn run(args: Args) -> Result<()> {
    let bind = resolve(&args.bind)?;
    let (share, stale) = share::Share::open(&args.out)
        .with_context(|| format!("cannot use output folder {}", args.out.display()))?;
    if stale > 0 {
        info!(
            count = stale,
            "removed unfinished temporary files from a previous run"
        );
    }
    let manifest_path = args.manifest.clone().unwrap_or_else(|| {
        share
            .root()
            .join(checkvalve_common::meta::STATE_DIR)
            .join("manifest.jsonl")
    });
    let manifest = Arc::new(
        manifest::Manifest::open(&manifest_path)
            .with_context(|| format!("cannot open manifest {}", manifest_path.display()))?,
    );
    raise_fd_limit();
    let socket = net::bind(bind, usize::try_from(args.rcvbuf).unwrap_or(usize::MAX))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install signal handler")?;
    }
    info!(%bind, out = %share.root().display(), manifest = %manifest_path.display(), "receiving");

    let dropped = Arc::new(AtomicU64::new(0));
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel(QUEUED_CHUNKS);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::sync_channel(QUEUED_CHUNKS);
    let net_thread = {
        let (stop, dropped) = (Arc::clone(&stop), Arc::clone(&dropped));
        std::thread::Builder::new()
            .name("net".into())
            .spawn(move || net::drain(socket, chunk_tx, recycle_rx, stop, dropped))?
    };
    // Unbounded on purpose: a job is a few hundred bytes naming a file already on disk, and the
    // receive loop must never wait for hashing or fsync.
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let finisher = {
        let (share, manifest) = (share.clone(), Arc::clone(&manifest));
        std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || receive::finisher(share, manifest, job_rx))?
    };
    let config = AssemblerConfig {
        object_timeout: args.object_timeout,
        max_pending_bytes: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
        max_content_len: args.max_object_size,
        ..AssemblerConfig::default()
    };
    let mut rx = receive::Receive::new(
        Assembler::new(config),
        share,
        manifest,
        job_tx,
        args.min_free,
        args.stats_interval,
    );
    rx.run(&chunk_rx, &recycle_tx, &stop, &dropped);
    drop(rx);
    let _ = net_thread.join();
    let _ = finisher.join();
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
