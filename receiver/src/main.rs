//! `checkvalve-receive`: rebuilds what crossed a one-way link, verifies it end to end, and
//! publishes it atomically into an output folder. It never sends anything.

mod audit;
mod chores;
mod config;
mod folded;
mod keys;
mod live;
mod manifest;
mod net;
mod publish;
mod ratelimit;
mod rebuild;
mod receive;
mod report;
mod retention;
mod share;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use checkvalve_common::assembler::{Assembler, AssemblerConfig};
use checkvalve_common::units::{parse_duration, parse_percent, parse_size};
use clap::Parser;
use tracing::{error, info};

use crate::config::{Retention, Settings, defaults};

/// A block of decoded content at the default shape (64 x 1,400 bytes, rounded up): the unit in
/// which the writer's queue is sized.
pub(crate) const WRITE_UNIT: usize = 128 << 10;

/// Receive files from a one-way link into an output folder (the share), with a hash-chained
/// manifest of everything that crossed or did not.
#[derive(Debug, Parser)]
#[command(
    name = "checkvalve-receive",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); see docs/checkvalve-receive.example.toml.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bind", "out"])]
    config: Option<PathBuf>,
    /// Check the configuration and exit (0 if it is usable).
    #[arg(long, requires = "config")]
    check: bool,
    /// Address to listen on, HOST:PORT (port 0 picks a free one; the log says which).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "config")]
    bind: Option<String>,
    /// Output folder (the share vendors read).
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    out: Option<PathBuf>,
    /// State folder: lock, temporary files, manifest, live state [default: OUT/.checkvalve].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Give up on an object after this long without a new datagram for it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    object_timeout: Duration,
    /// Largest file accepted.
    #[arg(long, default_value = "1T", value_parser = parse_size)]
    max_object_size: u64,
    /// Memory for datagrams queued (a quarter), content on its way to disk (an eighth), blocks
    /// held back to be rebuilt with their neighbours (a sixteenth) and blocks in progress (the
    /// rest); the receiver's resident memory stays below this plus about 16 MiB.
    #[arg(long, default_value = "48M", value_parser = parse_size)]
    max_pending: u64,
    /// Free space always left on the output filesystem (half of it is kept for the manifest).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    min_free: u64,
    /// Kernel receive buffer to ask for.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    rcvbuf: u64,
    /// Interval between statistics lines.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Objects lost without a name are recorded as one manifest record per session per interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    aggregate_interval: Duration,
    /// Link down after this long without a datagram [default: three heartbeat periods, at least 3 s].
    #[arg(long, value_parser = parse_duration)]
    link_down_after: Option<Duration>,
    /// Measured datagram loss above this is a WARN.
    #[arg(long, default_value = "1%", value_parser = parse_percent)]
    loss_warn: f64,
    /// Interval of the measured-loss manifest records.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    loss_interval: Duration,
    /// Remove published files older than this (oldest first; each removal recorded).
    #[arg(long, value_parser = parse_duration)]
    retention_max_age: Option<Duration>,
    /// Remove the oldest published files while the share holds more than this.
    #[arg(long, value_parser = parse_size)]
    retention_max_bytes: Option<u64>,
    /// Pre-shared key file (repeat for a rotation): only datagrams authenticated by one are accepted.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Do not install the seccomp filter that forbids sending and connecting (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// With --key: also accept unauthenticated datagrams (during a migration only).
    #[arg(long, requires = "keys")]
    allow_unauthenticated: bool,
}

/// Where a command finds the share and state: the receiver's configuration, or its folders.
#[derive(Debug, clap::Args)]
struct Where {
    /// The receiver's configuration file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["out", "state"], required_unless_present = "out")]
    config: Option<PathBuf>,
    /// The receiver's output folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Its state folder, if not OUT/.checkvalve.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

/// Commands that read what the receiver wrote (no running receiver needed).
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check the manifest's hash chain (and with --files, that the share holds what it says).
    VerifyManifest {
        #[command(flatten)]
        at: Where,
        /// Also check every published file still in the share against its SHA-256.
        #[arg(long)]
        files: bool,
    },
    /// The operator and vendor report: link, files, losses, repairs, restarts, chain status.
    Report {
        #[command(flatten)]
        at: Where,
        /// Only records of the last DURATION (e.g. 24h, 30d) [default: everything].
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Text for people, JSON for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: report::Format,
    },
}

fn main() -> ExitCode {
    checkvalve_host::logging::init(checkvalve_host::logging::LogFormat::Human);
    let args = Args::parse();
    let result = match &args.command {
        Some(command) => run_command(command),
        None => settings(&args).and_then(|s| match s {
            None => Ok(ExitCode::from(2)),
            Some(_) if args.check => {
                info!("configuration is usable");
                Ok(ExitCode::SUCCESS)
            }
            Some(s) => run(s, args.no_seccomp).map(|()| ExitCode::SUCCESS),
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

/// The settings from `--config` or the flags; `None` (logged) for a bad configuration file.
fn settings(args: &Args) -> Result<Option<Settings>> {
    if let Some(file) = &args.config {
        return Ok(match Settings::load(file) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("{e}");
                None
            }
        });
    }
    let (Some(bind), Some(out)) = (&args.bind, &args.out) else {
        return Err(anyhow!("--bind and --out are required (or --config FILE)"));
    };
    Ok(Some(Settings {
        bind: bind.clone(),
        out: out.clone(),
        state: args.state.clone(),
        object_timeout: args.object_timeout,
        max_object_size: args.max_object_size,
        max_pending: args.max_pending,
        min_free: args.min_free,
        rcvbuf: args.rcvbuf,
        stats_interval: args.stats_interval,
        aggregate_interval: args.aggregate_interval,
        link_down_after: args.link_down_after,
        loss_warn: args.loss_warn,
        loss_interval: args.loss_interval,
        retention: Retention {
            max_age: args.retention_max_age,
            max_bytes: args.retention_max_bytes,
        },
        keys: args.keys.clone(),
        require_auth: args.allow_unauthenticated.then_some(false),
    }))
}

/// The share and state folders a command reads.
fn folders(at: &Where) -> Result<(PathBuf, PathBuf)> {
    let s = match (&at.config, &at.out) {
        (Some(file), _) => Settings::load(file).map_err(|e| anyhow!("{e}"))?,
        (None, Some(out)) => Settings {
            bind: String::new(),
            out: out.clone(),
            state: at.state.clone(),
            object_timeout: defaults::OBJECT_TIMEOUT,
            max_object_size: defaults::MAX_OBJECT_SIZE,
            max_pending: defaults::MAX_PENDING,
            min_free: defaults::MIN_FREE,
            rcvbuf: defaults::RCVBUF,
            stats_interval: defaults::STATS_INTERVAL,
            aggregate_interval: defaults::AGGREGATE_INTERVAL,
            link_down_after: None,
            loss_warn: defaults::LOSS_WARN,
            loss_interval: defaults::LOSS_INTERVAL,
            retention: Retention::default(),
            keys: Vec::new(),
            require_auth: None,
        },
        (None, None) => return Err(anyhow!("give --config FILE or --out DIR")),
    };
    Ok((s.out.clone(), s.state_dir()))
}

fn run_command(command: &Command) -> Result<ExitCode> {
    match command {
        Command::VerifyManifest { at, files } => {
            let (out, state) = folders(at)?;
            let end = checkvalve_formats::live::State::read(&state).map(|s| s.chain_end());
            match audit::verify(
                &state.join("manifest"),
                files.then_some(out.as_path()),
                end.as_ref(),
            ) {
                Ok(v) => {
                    println!(
                        "manifest verified: {} records in {} files, chain intact{}",
                        v.records,
                        v.files,
                        if *files {
                            format!("; {} published files match their SHA-256", v.checked)
                        } else {
                            String::new()
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("MANIFEST DOES NOT VERIFY: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Report { at, since, format } => {
            let (out, state) = folders(at)?;
            report::print(&out, &state, *since, *format)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(args: Settings, no_seccomp: bool) -> Result<()> {
    let bind = checkvalve_host::resolve(&args.bind)?;
    let (share, stale) = share::Share::open(&args.out, args.state.as_deref())
        .with_context(|| format!("cannot use output folder {}", args.out.display()))?;
    let share = Arc::new(share);
    if stale > 0 {
        info!(
            count = stale,
            "removed unfinished temporary files from a previous run"
        );
    }
    let manifest_path = share.state().join("manifest");
    let manifest = Arc::new(
        manifest::Manifest::open(&manifest_path, args.min_free)
            .with_context(|| format!("cannot open manifest {}", manifest_path.display()))?,
    );
    raise_fd_limit();
    let writable = [share.root().to_path_buf(), share.state().to_path_buf()];
    match checkvalve_confine::filesystem(&writable, None) {
        Ok(checkvalve_confine::Enforced::Not) => {
            tracing::warn!(
                "landlock: not supported by this kernel: writes are not confined (systemd's ReadWritePaths still are)"
            )
        }
        Ok(level) => {
            info!(?level, share = %writable[0].display(), state = %writable[1].display(), "landlock: writing confined to the share and the state folder")
        }
        Err(e) => tracing::warn!("landlock: cannot confine writes: {e}"),
    }
    let budget = usize::try_from(args.max_pending).unwrap_or(usize::MAX);
    // A quarter queues datagrams (the kernel's buffer absorbs more), an eighth holds decoded
    // content on its way to disk, the rest blocks in progress.
    let queue_bytes = budget / 4;
    let writer_bytes = budget / 8;
    // Of the rest, a sixteenth of the whole holds blocks repairable but not yet handed to the
    // writer, to be read back with their neighbours (receive.rs, `queue_repair`).
    let repair_hold = budget / 16;
    let (socket, local) = net::bind(bind, usize::try_from(args.rcvbuf).unwrap_or(usize::MAX))?;
    if no_seccomp {
        tracing::warn!("--no-seccomp: sending and connecting are NOT forbidden (debugging only)");
    } else {
        match checkvalve_confine::one_direction(checkvalve_confine::Role::Receiver) {
            Ok(()) => info!(
                "seccomp: sending and connecting are forbidden (sendto, sendmsg, sendmmsg, connect, accept, listen, io_uring)"
            ),
            Err(e) => tracing::warn!(
                "cannot install the seccomp filter (the code still never sends): {e}"
            ),
        }
    }
    let stop = checkvalve_host::signals::stop_flag().context("cannot install signal handler")?;

    let signals = Arc::new(net::Signals::new(checkvalve_common::shed::ASSUMED_LOSS));
    let chunks = (queue_bytes / net::CHUNK_BYTES).max(2);
    let (free_tx, free_rx) = net::chunk_pool(chunks);
    let (full_tx, full_rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let net_thread = {
        let (stop, signals, queued) =
            (Arc::clone(&stop), Arc::clone(&signals), Arc::clone(&queued));
        std::thread::Builder::new()
            .name("net".into())
            .spawn(move || net::drain(socket, full_tx, free_rx, chunks, queued, stop, signals))?
    };
    let retention_thread = if args.retention.max_age.is_some() || args.retention.max_bytes.is_some()
    {
        let (share, manifest, limits, stop) = (
            Arc::clone(&share),
            Arc::clone(&manifest),
            args.retention.clone(),
            Arc::clone(&stop),
        );
        Some(
            std::thread::Builder::new()
                .name("retention".into())
                .spawn(move || retention::run(share, manifest, limits, stop))?,
        )
    } else {
        None
    };
    let reserved = Arc::new(AtomicU64::new(0));
    let publisher = publish::Publisher::start(
        Arc::clone(&share),
        Arc::clone(&manifest),
        Arc::clone(&reserved),
    )?;
    // Of the writer's share, a quarter queues blocks to write, a quarter blocks written and not yet
    // hashed, and half keeps blocks to hash in order.
    let queue = (writer_bytes / 4 / WRITE_UNIT).max(1);
    let (writer_tx, writer_rx) = std::sync::mpsc::sync_channel(queue);
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
        queue,
    );
    let writer_thread = std::thread::Builder::new()
        .name("write".into())
        .spawn(move || writer.run(writer_rx))?;
    let defaults = AssemblerConfig::default();
    let config = AssemblerConfig {
        object_timeout: args.object_timeout,
        max_pending_bytes: budget - queue_bytes - writer_bytes - repair_hold,
        max_content_len: args.max_object_size,
        silence: args.link_down_after.unwrap_or(defaults.silence),
        fixed_silence: args.link_down_after.is_some(),
        ..defaults
    };
    let psks = args
        .keys
        .iter()
        .map(|k| keys::load(k))
        .collect::<Result<Vec<_>>>()?;
    let auth_state = share.state().join(keys::STATE_FILE);
    let auth = if psks.is_empty() {
        tracing::warn!(
            "no key configured: datagrams are not authenticated (anything that reaches this port is trusted as far as its CRC)"
        );
        None
    } else {
        let require = args.require_auth.unwrap_or(true);
        info!(
            keys = ?psks.iter().map(|k| k.id).collect::<Vec<_>>(),
            require_auth = require,
            "datagrams are authenticated"
        );
        Some(checkvalve_common::auth::Opener::new(
            psks,
            require,
            &keys::load_state(&auth_state),
        ))
    };
    let chores = chores::Chores::start();
    let live = live::Live::new(
        share.state(),
        local.to_string(),
        Arc::clone(&manifest),
        args.loss_warn,
        args.loss_interval,
        chores.queue(),
    );
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
            live,
            auth,
            auth_state,
            chores: chores.queue(),
            repair_hold,
        },
        args.min_free,
        args.stats_interval,
        args.aggregate_interval,
    );
    let live = rx.run(&full_rx, &free_tx, &queued, &stop, &signals);
    if let Some(t) = retention_thread {
        let _ = t.join();
    }
    let _ = net_thread.join();
    let _ = writer_thread.join();
    live.finish();
    chores.finish();
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
