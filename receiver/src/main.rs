//! `checkvalve-receive`: rebuilds what crossed a one-way link, verifies it end to end, and
//! publishes it atomically into an output folder. It never sends anything.

mod audit;
mod chores;
mod config;
mod folded;
mod keys;
mod live;
mod loss;
mod manifest;
mod net;
mod outcome;
mod pipeline;
mod publish;
mod ratelimit;
mod rebuild;
mod receive;
mod report;
mod retention;
mod share;
mod streams;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use checkvalve_common::units::{parse_duration, parse_percent, parse_size};
use clap::Parser;
use tracing::{error, info};

use crate::config::{Settings, defaults};

/// Examples and exit codes, after the options in `--help`.
const RECEIVER_HELP: &str = "\
Examples:
  checkvalve-receive --bind 0.0.0.0:5000 --out /srv/vendor-share --key link-1.key
  checkvalve-receive --config /etc/checkvalve/receive.toml           # the service (its unit)
  checkvalve-receive --config /etc/checkvalve/receive.toml --check   # preflight, then exit
  checkvalve-receive report --config /etc/checkvalve/receive.toml --since 2026-11-01
  checkvalve-receive verify-manifest --config /etc/checkvalve/receive.toml --files

Flags given beside --config override the file's value for this run (the log says so), but for
authentication (keys, allow_unauthenticated), which the file alone sets.

Exit status: 0 stopped by SIGTERM or SIGINT (or the command's check passed); 1 verify-manifest:
the chain or the share does not verify; 2 bad arguments, a configuration that is refused, or a
failed start. SIGHUP reloads nothing and never stops it.

Guides: docs/operator.md, docs/vendor.md (/usr/share/doc/checkvalve-receiver/).";

/// Receive files from a one-way link into an output folder (the share), with a hash-chained
/// manifest of everything that crossed or did not.
#[derive(Debug, Parser)]
#[command(
    version = checkvalve_host::VERSION,
    about,
    args_conflicts_with_subcommands = true,
    after_help = format!("{RECEIVER_HELP}\n\n{}", checkvalve_host::cli::UNITS)
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); see docs/checkvalve-receive.example.toml. Flags given beside it
    /// override its values (but for authentication).
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    config: Option<PathBuf>,
    /// Check the configuration and exit (0 if it is usable).
    #[arg(long, requires = "config", help_heading = "Configuration")]
    check: bool,
    /// Address to listen on, HOST:PORT (port 0 picks a free one; the log says which).
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "config",
        help_heading = "Link"
    )]
    bind: Option<String>,
    /// Output folder (the share vendors read).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "config",
        help_heading = "Share"
    )]
    out: Option<PathBuf>,
    /// State folder: lock, temporary files, manifest, live state [default: OUT/.checkvalve].
    #[arg(long, value_name = "DIR", help_heading = "Share")]
    state: Option<PathBuf>,
    /// Give up on an object after this long without a new datagram for it.
    #[arg(long, default_value = defaults::OBJECT_TIMEOUT, value_parser = parse_duration, help_heading = "Link", value_name = "DURATION")]
    object_timeout: Duration,
    /// How long a record channel waits for a late batch before marking its records lost.
    #[arg(long, default_value = defaults::REORDER_WINDOW, value_parser = parse_duration, help_heading = "Record channels", value_name = "DURATION")]
    reorder_window: Duration,
    /// How records are written in channel files: lines (escaped, YYYY-MM-DD.log) or json (one
    /// object per record with its number, sender time and topic, YYYY-MM-DD.jsonl).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "lines",
        help_heading = "Record channels"
    )]
    stream_format: crate::streams::StreamFormat,
    /// A channel's file of the day is continued in YYYY-MM-DD.1.log, .2.log… past this size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Record channels")]
    stream_max_file: Option<u64>,
    /// Largest file accepted.
    #[arg(long, default_value = defaults::MAX_OBJECT_SIZE, value_parser = parse_size, help_heading = "Limits", value_name = "SIZE")]
    max_object_size: u64,
    /// Memory for datagrams queued (a quarter), content on its way to disk (an eighth), blocks
    /// held back to be rebuilt with their neighbours (a sixteenth) and blocks in progress (the
    /// rest); the receiver's resident memory stays below this plus about 16 MiB.
    #[arg(long, default_value = defaults::MAX_PENDING, value_parser = parse_size, help_heading = "Limits", value_name = "SIZE")]
    max_pending: u64,
    /// Free space always left on the output filesystem (half of it is kept for the manifest).
    #[arg(long, default_value = defaults::MIN_FREE, value_parser = parse_size, help_heading = "Limits", value_name = "SIZE")]
    min_free: u64,
    /// Kernel receive buffer to ask for.
    #[arg(long, default_value = defaults::RCVBUF, value_parser = parse_size, help_heading = "Limits", value_name = "SIZE")]
    rcvbuf: u64,
    /// Interval between statistics lines.
    #[arg(long, default_value = defaults::STATS_INTERVAL, value_parser = parse_duration, help_heading = "Monitoring", value_name = "DURATION")]
    stats_interval: Duration,
    /// Objects lost without a name are recorded as one manifest record per session per interval.
    #[arg(long, default_value = defaults::AGGREGATE_INTERVAL, value_parser = parse_duration, help_heading = "Monitoring", value_name = "DURATION")]
    aggregate_interval: Duration,
    /// Link down after this long without a datagram [default: three heartbeat periods, at least 3 s].
    #[arg(long, value_parser = parse_duration, help_heading = "Monitoring", value_name = "DURATION")]
    link_down_after: Option<Duration>,
    /// Measured datagram loss above this is a WARN.
    #[arg(long, default_value = defaults::LOSS_WARN, value_parser = parse_percent, help_heading = "Monitoring", value_name = "PERCENT")]
    loss_warn: f64,
    /// Interval of the measured-loss manifest records.
    #[arg(long, default_value = defaults::LOSS_INTERVAL, value_parser = parse_duration, help_heading = "Monitoring", value_name = "DURATION")]
    loss_interval: Duration,
    /// Remove published files older than this (oldest first; each removal recorded).
    #[arg(long, value_parser = parse_duration, help_heading = "Share", value_name = "DURATION")]
    retention_max_age: Option<Duration>,
    /// Remove the oldest published files while the share holds more than this.
    #[arg(long, value_parser = parse_size, help_heading = "Share", value_name = "SIZE")]
    retention_max_bytes: Option<u64>,
    /// Permissions of published files, octal (group-readable by default: docs/vendor.md says how
    /// vendors' accounts get access).
    #[arg(long, value_name = "MODE", default_value = defaults::FILE_MODE, value_parser = config::parse_mode, help_heading = "Share")]
    file_mode: u32,
    /// Group of published files and folders (name or id), for vendors' accounts in it; the
    /// receiver's own group if not given.
    #[arg(long, value_name = "GROUP", help_heading = "Share")]
    group: Option<String>,
    /// Names the share accepts: portable (Windows can open them too) or posix (only what POSIX
    /// and safety require, for shares never read from Windows).
    #[arg(long, value_name = "POLICY", default_value = defaults::NAMES, help_heading = "Share")]
    names: checkvalve_common::meta::NamePolicy,
    /// Pre-shared key file (repeat for a rotation): only datagrams authenticated by one are accepted.
    #[arg(long = "key", value_name = "FILE", help_heading = "Authentication")]
    keys: Vec<PathBuf>,
    /// Do not install the seccomp filter that forbids sending and connecting (debugging only).
    #[arg(long, help_heading = "Process")]
    no_seccomp: bool,
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
    log_format: checkvalve_host::logging::LogFormat,
    /// Accept unauthenticated datagrams: without --key, run unauthenticated (said at start and in
    /// every statistics line); with --key, accept both (during a migration only).
    #[arg(long, help_heading = "Authentication")]
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
    #[command(after_help = "\
Examples:
  checkvalve-receive verify-manifest --config /etc/checkvalve/receive.toml
  checkvalve-receive verify-manifest --out /srv/vendor-share --files

Exit status: 0 the chain (and with --files, the share) verifies; 1 it does not (the first broken
record, or every problem in the share, is printed); 2 bad arguments.")]
    VerifyManifest {
        #[command(flatten)]
        at: Where,
        /// Also check every published file still in the share against its SHA-256.
        #[arg(long)]
        files: bool,
    },
    /// The operator and vendor report: link, files, losses, repairs, restarts, chain status.
    #[command(after_help = "\
Examples:
  checkvalve-receive report --config /etc/checkvalve/receive.toml --since 2026-11-01 --until 2026-12-01
  checkvalve-receive report --out /srv/vendor-share --since 24h --files
  checkvalve-receive report --out /srv/vendor-share --format json > report.json

Exit status: 0 the report was printed (a manifest that does not verify is said in it); 2 bad
arguments.")]
    Report {
        #[command(flatten)]
        at: Where,
        /// From a date (2026-11-01, UTC), a time (RFC 3339) or a DURATION back from now (24h,
        /// 30d) [default: the first record].
        #[arg(long, value_name = "DATE|DURATION", value_parser = report::parse_bound)]
        since: Option<std::time::SystemTime>,
        /// Up to a date (its start), a time or a DURATION back from now [default: now].
        #[arg(long, value_name = "DATE|DURATION", value_parser = report::parse_bound)]
        until: Option<std::time::SystemTime>,
        /// List every file delivered in the period, with its size and SHA-256.
        #[arg(long)]
        files: bool,
        /// Text for people, JSON for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: report::Format,
    },
}

fn main() -> ExitCode {
    checkvalve_host::manual::write_if_asked(<Args as clap::CommandFactory>::command());
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    checkvalve_host::logging::init(args.log_format);
    let given = |id: &str| checkvalve_host::cli::given(&matches, id);
    let result = match &args.command {
        Some(command) => run_command(command),
        None => settings(&args, &given).and_then(|s| match s {
            None => Ok(ExitCode::from(2)),
            Some(s) if args.check => {
                preflight(&s)?;
                info!("configuration is usable");
                Ok(ExitCode::SUCCESS)
            }
            Some(s) => pipeline::run(s, args.no_seccomp).map(|()| ExitCode::SUCCESS),
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

/// The preflight of `--check` (the units' `ExecStartPre`): the key files there, private and well
/// formed; the output and state folders usable; the group known; the address resolved and bound.
fn preflight(s: &Settings) -> Result<()> {
    for k in &s.keys {
        keys::load(k)?;
    }
    checkvalve_host::preflight::folder("output folder", &s.out)?;
    checkvalve_host::preflight::folder("state folder", &s.state_dir())?;
    if let Some(group) = &s.group {
        config::group_id(group).map_err(anyhow::Error::msg)?;
    }
    let bind = checkvalve_host::resolve(&s.bind)?;
    checkvalve_host::preflight::bind_udp(bind)?;
    Ok(())
}

/// The settings from `--config` with the flags given beside it, or from the flags alone; `None`
/// (logged) for a bad configuration file or flags the file alone may set.
fn settings(args: &Args, given: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>> {
    let mut s = match &args.config {
        Some(file) => match Settings::load(file) {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                return Ok(None);
            }
        },
        None => {
            let (Some(bind), Some(out)) = (&args.bind, &args.out) else {
                return Err(anyhow!("--bind and --out are required (or --config FILE)"));
            };
            Settings::defaults(bind.clone(), out.clone())
        }
    };
    let from_file = args.config.is_some();
    if from_file {
        // How datagrams are authenticated: the reviewed file only, as on the sender.
        let file_only: Vec<&str> = ["keys", "allow_unauthenticated"]
            .into_iter()
            .filter(|id| given(id).is_some())
            .collect();
        if !file_only.is_empty() {
            error!(
                "{} beside --config: authentication is set in the configuration file only (keys, allow_unauthenticated)",
                file_only
                    .iter()
                    .map(|id| if *id == "keys" {
                        "--key".to_owned()
                    } else {
                        format!("--{}", id.replace('_', "-"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(None);
        }
    }
    // Without a file every flag applies (its default is the file's); with one, the flags given.
    let take = |id: &str| match given(id) {
        Some(value) if from_file => {
            info!(flag = %format!("--{}", id.replace('_', "-")), value, "a flag beside --config overrides the configuration file");
            true
        }
        Some(_) => true,
        None => !from_file,
    };
    if let Some(v) = &args.bind
        && take("bind")
    {
        s.bind = v.clone();
    }
    if let Some(v) = &args.out
        && take("out")
    {
        s.out = v.clone();
    }
    if let Some(v) = &args.state
        && take("state")
    {
        s.state = Some(v.clone());
    }
    // A flag and the setting of its name: the setting takes the flag's value when `take` says
    // so (an optional flag only when given).
    macro_rules! flags {
        ($($field:ident),*) => {$(
            if take(stringify!($field)) {
                s.$field = args.$field;
            }
        )*};
    }
    macro_rules! optional_flags {
        ($($field:ident),*) => {$(
            if args.$field.is_some() && take(stringify!($field)) {
                s.$field = args.$field.clone();
            }
        )*};
    }
    flags!(
        object_timeout,
        reorder_window,
        stream_format,
        max_object_size,
        max_pending,
        min_free,
        rcvbuf,
        stats_interval,
        aggregate_interval,
        loss_warn,
        loss_interval,
        file_mode,
        names
    );
    optional_flags!(stream_max_file, link_down_after, group);
    if args.retention_max_age.is_some() && take("retention_max_age") {
        s.retention.max_age = args.retention_max_age;
    }
    if args.retention_max_bytes.is_some() && take("retention_max_bytes") {
        s.retention.max_bytes = args.retention_max_bytes;
    }
    if !from_file {
        s.keys = args.keys.clone();
        s.require_auth = args.allow_unauthenticated.then_some(false);
        s.allow_unauthenticated = args.allow_unauthenticated;
    }
    Ok(match s.check_auth() {
        Ok(()) => Some(s),
        Err(e) => {
            error!("{e}");
            None
        }
    })
}

/// The share and state folders a command reads.
fn folders(at: &Where) -> Result<(PathBuf, PathBuf)> {
    let s = match (&at.config, &at.out) {
        (Some(file), _) => Settings::load(file).map_err(|e| anyhow!("{e}"))?,
        (None, Some(out)) => Settings {
            state: at.state.clone(),
            ..Settings::defaults(String::new(), out.clone())
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
                Ok(v) if !v.share_problems.is_empty() => {
                    println!(
                        "THE SHARE DOES NOT MATCH THE MANIFEST ({} problems; the chain of {} records is intact):",
                        v.share_problems.len(),
                        v.records
                    );
                    for p in &v.share_problems {
                        println!("  {p}");
                    }
                    Ok(ExitCode::from(1))
                }
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
        Command::Report {
            at,
            since,
            until,
            files,
            format,
        } => {
            let (out, state) = folders(at)?;
            report::print(
                &out,
                &state,
                report::Period {
                    since: *since,
                    until: *until,
                    files: *files,
                },
                *format,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
