//! `checkvalve-send`: pushes files and folder trees over a one-way UDP link with forward error
//! correction. It never reads from the link: no acks, no retransmission requests, no handshake.

mod archive;
mod config;
mod evidence;
mod follow;
mod inputs;
mod kept;
mod keys;
mod produce;
mod queue;
mod service;
mod spool;
mod status;
mod transmit;
mod walk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use checkvalve_common::interleave::InterleaveParams;
use checkvalve_common::object::FecParams;
use checkvalve_common::units::{parse_duration, parse_rate};
use checkvalve_host::logging::LogFormat;
use clap::Parser;
use tracing::{error, info, warn};

/// Datagram bytes an interleaving group holds by default.
const GROUP_BYTES: usize = 8 << 20;

/// Bounded hand-off between producer and transmitter: two groups (about 16 MiB at the defaults).
pub(crate) const QUEUED_BATCHES: usize = 2;
/// Objects sent whole waiting to be announced (the transmitter takes them in every turn).
pub(crate) const QUEUED_NAMES: usize = 4096;

/// Examples, units and exit codes, after the options in `--help`.
const SENDER_HELP: &str = "\
Examples:
  checkvalve-send keygen --id 1 --out link-1.key
  checkvalve-send --to 192.0.2.10:5000 --key link-1.key /data/exports /data/diag/pump7.log
  checkvalve-send --to 192.0.2.10:5000 --key link-1.key --watch /var/spool/checkvalve \\
      --state /var/lib/checkvalve-send --stream syslog=tcp://127.0.0.1:6514
  checkvalve-send --config /etc/checkvalve/send.toml            # the service (its unit)
  checkvalve-send status --config /etc/checkvalve/send.toml

Flags given beside --config override the file's value for this run and its reloads (the log
says so), but for the datagrams' shape and authentication, which the file alone sets.

Exit status: 0 everything sent (or a service stopped by SIGTERM); 1 a file could not be sent
whole, or the stream inputs' process ended; 2 bad arguments, a configuration that is refused,
or a failed start; 3 `status`: the sender is not running or logged an error lately; 130
interrupted by SIGINT.

Guides: docs/operator.md and docs/streams.md (/usr/share/doc/checkvalve-sender/).";

/// Push files and folder trees across a one-way link: once (PATH...), or as a service watching
/// spool folders (--watch DIR, or --config FILE with channels).
#[derive(Debug, Parser)]
#[command(
    version = checkvalve_host::VERSION,
    about,
    args_conflicts_with_subcommands = true,
    after_help = format!("{SENDER_HELP}\n\n{}", checkvalve_host::cli::UNITS)
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Receiver (or simulator) address, HOST:PORT (required unless --config gives it).
    #[arg(long, value_name = "HOST:PORT", help_heading = "Link")]
    to: Option<String>,
    /// Service configuration (TOML): destination, rate, FEC, channels. See docs/operator.md.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["paths", "watch"], help_heading = "Service")]
    config: Option<PathBuf>,
    /// Check the configuration and exit (0 if it is usable).
    #[arg(long, requires = "config", help_heading = "Service")]
    check: bool,
    /// Watch this spool folder and send every file that appears in it, as a service; a file lands
    /// under its path relative to the folder, and is deleted from it once sent.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "paths",
        help_heading = "Service"
    )]
    watch: Option<PathBuf>,
    /// With --watch: a file written in place is taken once unchanged for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = "Service", value_name = "DURATION")]
    settle: Duration,
    /// Log lines as text (human) or one flat JSON object per line (json; fields in
    /// docs/operator.md).
    #[arg(
        long,
        value_enum,
        default_value = "human",
        global = true,
        help_heading = "Process",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    /// With --watch or --stream: state folder (status file, record of kept files, the streams'
    /// spool); see `checkvalve-send status`.
    #[arg(long, value_name = "DIR", help_heading = "Service")]
    state: Option<PathBuf>,
    /// A record stream input, as a service (repeatable): NAME=udp://HOST:PORT, tcp://HOST:PORT,
    /// file:///PATH (followed like `tail -F`) or - (standard input); its records land in
    /// OUT/NAME/YYYY-MM-DD.log. Needs --state.
    #[arg(long = "stream", value_name = "NAME=URL", conflicts_with_all = ["paths", "config"], requires = "state", help_heading = "Service")]
    streams: Vec<inputs::StreamSpec>,
    /// With --stream: a batch of records goes out when its first record has waited this long.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, help_heading = "Service", value_name = "DURATION")]
    stream_flush: Duration,
    /// With --watch: full rescan interval.
    #[arg(long, default_value = "30s", value_parser = parse_duration, help_heading = "Service", value_name = "DURATION")]
    rescan: Duration,
    /// Output rate in bits per second (50k, 800M, 1G, or max for no limit); counts IP and UDP
    /// headers. The default is what a 2-core receiver takes without loss (docs/performance.md).
    #[arg(long, default_value = "1G", value_parser = parse_rate, help_heading = "Link", value_name = "RATE")]
    rate: u64,
    /// Reed-Solomon shape: K data shards and M parity shards per block (K + M <= 256).
    #[arg(
        long,
        default_value = "64:22",
        value_name = "K:M",
        help_heading = "Link"
    )]
    fec: FecSpec,
    /// The link's MTU: shards are sized so that every datagram fits it, IPv4 or IPv6, with the
    /// authentication trailer (1,376-byte shards at 1,500 with a key, 1,400 without).
    #[arg(long, default_value_t = checkvalve_common::wire::DEFAULT_MTU, value_name = "BYTES", help_heading = "Link")]
    mtu: u16,
    /// Shard payload in bytes [default: the longest that fits --mtu]; datagrams that would not fit
    /// the MTU are refused at start.
    #[arg(long, value_name = "BYTES", help_heading = "Link")]
    shard_size: Option<u16>,
    /// Blocks per interleaving group: bursts are spread over this many blocks [default: as many
    /// as fill about 8 MiB of datagrams, at most 64: 64 at 1,400-byte shards, 10 at 8,900].
    #[arg(long, help_heading = "Link", value_name = "BLOCKS")]
    interleave: Option<usize>,
    /// Content a stripe group of a large file spans: a file of more than one interleaving group
    /// is striped, surviving about `M/K` of this in consecutive lost datagrams; the sender holds
    /// `M/K` of it in parity. `0` sends large files in interleaving groups too.
    #[arg(long, default_value = "96MiB", value_name = "SIZE", value_parser = parse_span, help_heading = "Link")]
    stripe_span: u64,
    /// Interval between heartbeats.
    #[arg(long, default_value = "1s", value_parser = parse_duration, help_heading = "Link", value_name = "DURATION")]
    heartbeat: Duration,
    /// Scheduling niceness of the sender's threads (0 to 19): a background transfer yields the
    /// CPU to the host's own processes (and, on a shared test host, to the receiver).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19), help_heading = "Process", value_name = "NICENESS")]
    nice: i32,
    /// Do not install the seccomp filter that forbids every receiving system call (debugging only).
    #[arg(long, help_heading = "Process")]
    no_seccomp: bool,
    /// Names sent: portable (Windows can open them too) or posix (only what POSIX and safety
    /// require; the receiver must say `--names posix` too).
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "portable",
        help_heading = "Link"
    )]
    names: checkvalve_common::meta::NamePolicy,
    /// Pre-shared key file (from `checkvalve-send keygen`): every datagram is authenticated.
    #[arg(long, value_name = "FILE", help_heading = "Authentication")]
    key: Option<PathBuf>,
    /// With --key: also encrypt payloads.
    #[arg(long, requires = "key", help_heading = "Authentication")]
    encrypt: bool,
    /// Run without a key: datagrams are sent unauthenticated (the receiver must allow it too).
    #[arg(long, conflicts_with = "key", help_heading = "Authentication")]
    allow_unauthenticated: bool,
    /// Files or folders to send once; each lands under its name relative to its parent folder.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// Commands other than sending.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the service's queue per channel, what it sent today and its last error, from its
    /// spools and state folder (no running sender needed).
    #[command(after_help = "\
Examples:
  checkvalve-send status --config /etc/checkvalve/send.toml
  checkvalve-send status --state /var/lib/checkvalve-send --json

Exit status: 0 the sender runs with no ERROR in the last five minutes; 3 it is not running, never
ran, or logged an ERROR recently (a health check); 2 a configuration that is refused.")]
    Status {
        /// The service's configuration (the queue is counted live in its spools).
        #[arg(long, value_name = "FILE", required_unless_present = "state")]
        config: Option<PathBuf>,
        /// Or only its state folder (the queue as the sender last wrote it).
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        state: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The stream inputs' process, started by the sender itself (not for operators).
    #[command(hide = true)]
    Inputs {
        /// The sender's state folder (the streams' spool is in it).
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// The inputs.
        #[arg(long = "stream", value_name = "NAME=URL")]
        streams: Vec<inputs::StreamSpec>,
    },
    /// Write a new random pre-shared key (mode 0600) for `--key` / `key =` on both ends.
    #[command(after_help = "\
Examples:
  checkvalve-send keygen --id 1 --out /etc/checkvalve/keys/link-1.key
  checkvalve-send keygen --id 2 --out link-2.key      # the next key, for a rotation

Copy the file to the receiver by hand (never across the link). Exit status: 0 written; 2 bad
arguments or the file cannot be written (an existing file is never replaced).")]
    Keygen {
        /// Key id carried in every datagram (give a new key a new id to rotate without a gap).
        #[arg(long)]
        id: u32,
        /// File to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy)]
struct FecSpec(u8, u8);

impl FromStr for FecSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, m) = config::parse_fec(s)?;
        Ok(FecSpec(k, m))
    }
}

fn main() -> ExitCode {
    checkvalve_host::manual::write_if_asked(<Args as clap::CommandFactory>::command());
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    checkvalve_host::logging::init_with(args.log_format, status::LastProblem);
    let given = |id: &str| checkvalve_host::cli::given(&matches, id).is_some();
    let overrides = match overrides(&args, &given) {
        Ok(o) => o,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args, overrides) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

/// Paths for a log field: comma-separated.
fn joined(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Forbids every receiving system call from here on (all threads), unless disabled.
pub(crate) fn one_direction(disabled: bool) {
    if disabled {
        warn!("--no-seccomp: receiving system calls are NOT forbidden (debugging only)");
        return;
    }
    match checkvalve_confine::one_direction(checkvalve_confine::Role::Sender) {
        Ok(()) => info!(
            "seccomp: only the system calls a sender needs are allowed: no receiving, no new socket (socket, bind, connect, listen, accept), no socket option changed, no program started"
        ),
        Err(e) => warn!("cannot install the seccomp filter (the code still never receives): {e}"),
    }
}

/// Confines the filesystem access of this thread and the threads it starts afterwards (Landlock):
/// reading beneath `readable`, reading and writing beneath `writable`, nothing else.
pub(crate) fn confine_files(writable: &[PathBuf], readable: &[PathBuf]) {
    let others = checkvalve_confine::other_threads();
    if others > 0 {
        warn!(
            threads = others,
            "landlock: threads started before the confinement (by a library?) are not confined by it"
        );
    }
    match checkvalve_confine::filesystem(writable, Some(readable)) {
        Ok(checkvalve_confine::Enforced::Not) => {
            warn!("landlock: not supported by this kernel: file access is not confined")
        }
        Ok(level) => info!(
            enforced = %level,
            writable = %joined(writable),
            readable = %joined(readable),
            "landlock: file access confined"
        ),
        Err(e) => warn!("landlock: cannot confine file access: {e}"),
    }
}

/// The preflight of `--check` (the unit's `ExecStartPre`): the key file there, private and well
/// formed; the receiver's address resolved; the state folder, every spool and every sent folder
/// usable.
fn preflight(cfg: &config::Config) -> Result<()> {
    use checkvalve_host::preflight::folder;
    if let Some(k) = &cfg.key {
        keys::load(k)?;
    }
    resolve(&cfg.to)?;
    if let Some(state) = &cfg.state {
        folder("state folder", state)?;
    }
    for c in &cfg.channels {
        folder(&format!("spool of channel {:?}", c.name), &c.spool)?;
        if let config::AfterSend::Move(sent) = &c.after_send {
            folder(&format!("sent folder of channel {:?}", c.name), &sent.dir)?;
        }
    }
    Ok(())
}

/// Resolves `--to` once, at start.
pub(crate) fn resolve(to: &str) -> Result<SocketAddr> {
    Ok(checkvalve_host::resolve(to)?)
}

fn parse_span(s: &str) -> Result<u64, String> {
    checkvalve_common::units::parse_size(s).map_err(|e| e.to_string())
}

/// Interleaving groups hold about [`GROUP_BYTES`] of datagrams unless `depth` is given; stripe
/// groups span `stripe_span` bytes of content.
fn interleave_for(fec: FecParams, depth: Option<usize>, stripe_span: u64) -> InterleaveParams {
    // A group is held whole in memory (and a few queued): size it in bytes, not blocks.
    let block_bytes = (usize::from(fec.data_shards) + usize::from(fec.parity_shards))
        * (usize::from(fec.shard_len) + checkvalve_common::wire::SHARD_OVERHEAD);
    let depth = depth.unwrap_or((GROUP_BYTES / block_bytes).clamp(1, 64));
    InterleaveParams {
        depth: depth.max(1),
        stripe_bytes: stripe_span,
        ..InterleaveParams::default()
    }
}

/// The flags given beside `--config` (each overrides the file's value, at start and at every
/// reload); an error for those the file alone may set.
fn overrides(args: &Args, given: &dyn Fn(&str) -> bool) -> Result<config::Overrides, String> {
    let mut o = config::Overrides::default();
    if args.config.is_none() {
        return Ok(o);
    }
    // What the datagrams look like and how they are authenticated: the reviewed file only.
    let file_only: Vec<&str> = [
        "fec",
        "mtu",
        "shard_size",
        "interleave",
        "stripe_span",
        "key",
        "encrypt",
        "allow_unauthenticated",
    ]
    .into_iter()
    .filter(|id| given(id))
    .collect();
    if !file_only.is_empty() {
        return Err(format!(
            "{} beside --config: the datagrams' shape and authentication are set in the configuration file only (fec, mtu, shard_size, key, encrypt, allow_unauthenticated)",
            file_only
                .iter()
                .map(|id| format!("--{}", id.replace('_', "-")))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let pick = |id: &str| given(id);
    o.to = args.to.clone().filter(|_| pick("to"));
    o.rate = pick("rate").then_some(args.rate);
    o.heartbeat = pick("heartbeat").then_some(args.heartbeat);
    o.settle = pick("settle").then_some(args.settle);
    o.rescan = pick("rescan").then_some(args.rescan);
    o.stream_flush = pick("stream_flush").then_some(args.stream_flush);
    o.names = pick("names").then_some(args.names);
    o.state = args.state.clone().filter(|_| pick("state"));
    Ok(o)
}

fn run(args: Args, overrides: config::Overrides) -> Result<ExitCode> {
    if let Some(Command::Inputs { state, streams }) = &args.command {
        return inputs::run(state, streams.clone());
    }
    if let Some(Command::Keygen { id, out }) = &args.command {
        keys::keygen(*id, out)?;
        info!(id, file = %out.display(), "key written: copy it to the receiver over a trusted channel");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Command::Status {
        config,
        state,
        json,
    }) = &args.command
    {
        let cfg = match config {
            Some(file) => match config::Config::load(file) {
                Ok(c) => Some(c),
                Err(e) => {
                    error!("{e}");
                    return Ok(ExitCode::from(2));
                }
            },
            None => None,
        };
        // A health check: 0 when the sender runs with no recent ERROR, 3 otherwise.
        let healthy = status::print(cfg.as_ref(), state.as_deref(), *json)?;
        return Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        });
    }
    // Before any thread starts: threads take their creator's niceness.
    if args.nice > 0
        && let Err(e) = rustix::process::setpriority_process(None, args.nice)
    {
        tracing::warn!(nice = args.nice, "cannot lower the sender's priority: {e}");
    }
    if let Some(file) = &args.config {
        let mut cfg = match config::Config::load(file) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return Ok(ExitCode::from(2));
            }
        };
        overrides.apply(&mut cfg, true);
        if args.check {
            preflight(&cfg)?;
            info!(channels = cfg.channels.len(), "configuration is usable");
            return Ok(ExitCode::SUCCESS);
        }
        let interleave = interleave_for(cfg.fec, None, InterleaveParams::default().stripe_bytes);
        return service::run(
            cfg,
            Some((file.clone(), overrides)),
            interleave,
            args.no_seccomp,
        );
    }
    let Some(to) = args.to.clone() else {
        bail!("--to is required (or --config FILE)");
    };
    if args.key.is_none() && !args.allow_unauthenticated {
        bail!(keys::NO_KEY);
    }
    let fec = FecParams {
        data_shards: args.fec.0,
        parity_shards: args.fec.1,
        shard_len: config::shard_len(
            Some(args.mtu),
            args.shard_size,
            if args.key.is_some() {
                checkvalve_common::auth::TRAILER_LEN
            } else {
                0
            },
        )
        .map_err(|e| anyhow!("{e}"))?,
    };
    fec.validate().map_err(|e| anyhow!("{e}"))?;
    if args.heartbeat.is_zero() {
        bail!("--heartbeat must be positive");
    }
    let interleave = interleave_for(fec, args.interleave, args.stripe_span);
    if args.watch.is_some() || !args.streams.is_empty() {
        let channels = match &args.watch {
            Some(dir) => vec![config::Channel {
                name: String::new(),
                spool: std::path::absolute(dir)
                    .with_context(|| format!("cannot use {}", dir.display()))?,
                priority: 0,
                repeat: 1,
                after_send: config::AfterSend::Delete,
            }],
            None => Vec::new(),
        };
        let cfg = config::Config {
            to,
            rate: args.rate,
            fec,
            heartbeat: args.heartbeat,
            settle: args.settle,
            rescan: args.rescan,
            repeat_spacing: Duration::from_secs(5),
            ignore: config::DEFAULT_IGNORE
                .iter()
                .map(|s| s.to_string())
                .collect(),
            names: args.names,
            channels,
            streams: args.streams.clone(),
            stream_flush: args.stream_flush,
            key: args.key.clone(),
            encrypt: args.encrypt,
            allow_unauthenticated: args.allow_unauthenticated,
            state: match &args.state {
                Some(s) => Some(
                    std::path::absolute(s)
                        .with_context(|| format!("cannot use {}", s.display()))?,
                ),
                None => None,
            },
        };
        return service::run(cfg, None, interleave, args.no_seccomp);
    }
    if args.paths.is_empty() {
        bail!("nothing to send: give PATHs, --watch DIR or --config FILE");
    }
    let to = resolve(&to)?;
    let walked = walk::walk(&args.paths, args.names)?;
    let key = args.key.as_deref().map(keys::load).transpose()?;
    if key.is_none() {
        warn!("{}", keys::UNAUTHENTICATED);
    }
    let who = keys::identity(None, key.as_ref(), args.encrypt);
    // Keys read: from here on only the paths to send can be read.
    let readable: Vec<PathBuf> = args.paths.iter().filter(|p| p.exists()).cloned().collect();
    confine_files(&[], &readable);
    let session = who.session;
    let stop = checkvalve_host::signals::stop_flag().context("cannot install signal handler")?;
    info!(
        session = format_args!("{session:016x}"),
        %to,
        files = walked.entries.len(),
        rate = args.rate,
        fec = format_args!("{}:{}", fec.data_shards, fec.parity_shards),
        "sending"
    );
    let started = Instant::now();
    let mut tx = transmit::Transmitter::new(to, args.rate, &who, args.heartbeat)?;
    one_direction(args.no_seccomp);
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES);
    let (names_tx, names_rx) = std::sync::mpsc::sync_channel(QUEUED_NAMES);
    tx.announce(
        names_rx,
        checkvalve_common::wire::SHARD_OVERHEAD + usize::from(fec.shard_len),
    );
    let producer = {
        let stop = Arc::clone(&stop);
        let entries = walked.entries;
        let spares = tx.spares();
        std::thread::Builder::new()
            .name("produce".into())
            .spawn(move || {
                let out = produce::Outlet {
                    tx: batch_tx,
                    spares,
                    names: names_tx,
                };
                produce::produce(who, entries, fec, interleave, out, stop)
            })
            .context("cannot start the producer thread")?
    };
    tx.run(&batch_rx, &stop);
    drop(batch_rx);
    let produced = producer
        .join()
        .map_err(|_| anyhow!("producer thread panicked"))?;
    let interrupted = stop.load(Ordering::Relaxed);
    tx.finish(if interrupted { 1 } else { 3 });
    let sent = tx.sent();
    let secs = started.elapsed().as_secs_f64();
    let failed = produced.failed + walked.failed as u64;
    info!(
        files = produced.files,
        bytes = produced.bytes,
        failed,
        datagrams = sent.datagrams,
        send_errors = sent.errors,
        seconds = checkvalve_host::logging::round(secs, 2),
        goodput_mbps =
            checkvalve_host::logging::round(produced.bytes as f64 * 8.0 / secs.max(1e-9) / 1e6, 1),
        "done"
    );
    if interrupted {
        warn!("interrupted: not every file was sent");
        return Ok(ExitCode::from(130));
    }
    if failed > 0 || sent.errors > 0 {
        error!(
            files_failed = failed,
            datagrams_not_sent = sent.errors,
            "{failed} file(s) could not be sent and {} datagram(s) were refused by the kernel; see the errors above",
            sent.errors
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
