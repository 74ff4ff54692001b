//! `checkvalve-sim`: forwards datagrams one way through a seeded model of a lossy link, and runs
//! sweeps of the real sender and receiver through it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use checkvalve_sim::forward::{Forwarder, Options};
use checkvalve_sim::link::{LinkConfig, Loss, Schedule};
use checkvalve_sim::sweep::{self, SweepOptions};
use checkvalve_sim::{scenario, units};
use clap::{Args as ClapArgs, Parser, Subcommand};
use tracing::{error, info};

/// Examples and exit codes, after the options in `--help`.
const SIM_HELP: &str = "\
Examples:
  checkvalve-sim --bind 127.0.0.1:6000 --to 127.0.0.1:5000 --loss 2% --burst 10
  checkvalve-sim --bind 127.0.0.1:6000 --to 127.0.0.1:5000 --rate 100M --queue 2M --duration 60s
  checkvalve-sim --bind 127.0.0.1:6000 --to 127.0.0.1:5000 --scenario docs/scenarios/qualification.toml
  checkvalve-sim sweep --loss 0%,10%,20%,30% --burst 1,10 --out sweep-out
  checkvalve-sim qualify --scenario docs/scenarios/qualification.toml --rate 100M,400M \
      --shard-size 1376,8900 --repeats 3 --out qualification
  checkvalve-sim historian --tags 500 --rate 1000/s --to tcp://127.0.0.1:6514 --duration 60s

The link runs until SIGTERM or SIGINT, --duration, or the end of a scenario's last phase (if it
has a duration); then it prints its report (JSON) on standard output.

Exit status: 0 done; 2 bad arguments, a scenario that is refused, or a failed start. SIGHUP
never stops it.

Guide: docs/tester.md (/usr/share/doc/checkvalve-sim/).";

/// Examples and what the sweep writes, after its options in `--help`.
const SWEEP_HELP: &str = "\
Examples:
  checkvalve-sim sweep --loss 0%,5%,10%,20% --burst 1,10 --out sweep-out
  checkvalve-sim qualify --scenario docs/scenarios/qualification.toml --loss 0%,5% \\
      --rate 100M,400M --shard-size 1376,8900 --repeats 3 --out qualification

Every link (each loss rate with each burst length, then each scenario) runs with every rate and
shard size, --repeats times, each run with seed SEED+N. A scenario's point sends the tree again
until the scenario's timeline has ended. Written into --out: sweep.csv (a row per point),
sweep.svg (delivery and goodput against loss), qualification.json (versions of the three
programs, host, the whole configuration with each scenario's text, every point) and point-NNN/
(the logs of each point).

Exit status: 0 every point ran (whatever it delivered: read the artifact); 2 bad arguments, a
scenario that is refused, or a point that could not run.";

/// Forward datagrams one way through a lossy link model.
#[derive(Debug, Parser)]
#[command(
    name = "checkvalve-sim",
    version = checkvalve_host::VERSION,
    about,
    after_help = format!("{SIM_HELP}\n\n{}", checkvalve_host::cli::UNITS),
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    link: LinkArgs,
    /// Log lines as text (human) or one flat JSON object per line (json; fields in
    /// docs/operator.md).
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: checkvalve_host::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the real sender and receiver over loss rates, scenarios, rates and shard sizes,
    /// repeated; write CSV, SVG and one qualification artifact (JSON).
    #[command(visible_alias = "qualify", after_help = SWEEP_HELP)]
    Sweep(SweepArgs),
    /// Feed historian point records (time, tag, value, quality, number) to a stream input.
    #[command(after_help = "\
Examples:
  checkvalve-sim historian --tags 500 --rate 1000/s --to tcp://127.0.0.1:6514
  checkvalve-sim historian --rate 50k/s --count 1000000 --to udp://127.0.0.1:5514
  checkvalve-sim historian --to mqtt://127.0.0.1:1883/historian --duration 60s

Exit status: 0 the feed ended (--count, --duration, SIGTERM or SIGINT); 2 bad arguments or the
input cannot be reached.")]
    Historian(HistorianArgs),
}

/// `checkvalve-sim historian`.
#[derive(Debug, ClapArgs)]
struct HistorianArgs {
    /// Tags (each a seeded random walk), taking turns.
    #[arg(long, default_value_t = 500, value_name = "N")]
    tags: usize,
    /// Records per second (`1000`, `1000/s`, `50k/s`).
    #[arg(long, default_value = "1000/s", value_parser = records_per_second, value_name = "RECORDS/s")]
    rate: f64,
    /// Where: tcp://HOST:PORT (a line per record), udp://HOST:PORT (a datagram per record) or
    /// mqtt://HOST:PORT[/PREFIX] (a message per record on PREFIX/TAG, QoS 1; prefix `historian`).
    #[arg(long, value_name = "URL")]
    to: checkvalve_sim::feed::Target,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Seed of the values.
    #[arg(long, default_value_t = 1, value_name = "SEED")]
    seed: u64,
}

/// Parses a record rate: `1000`, `1000/s`, `50k/s`.
fn records_per_second(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    let (digits, mult) = match n.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1e3),
        None => (n, 1.0),
    };
    let v: f64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected records per second, e.g. 1000/s or 50k/s"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(v * mult)
}

#[derive(Debug, ClapArgs)]
struct LinkArgs {
    /// Address to listen on (the sender's --to), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", help_heading = "Link")]
    bind: Option<String>,
    /// Where to forward (the receiver's --bind), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", help_heading = "Link")]
    to: Option<String>,
    /// Play a TOML scenario (a timeline of phases) instead of the link options below.
    #[arg(long, value_name = "FILE", help_heading = "Link")]
    scenario: Option<PathBuf>,
    /// Long-run loss rate, `5%` or `0.05`.
    #[arg(long, value_parser = percent, help_heading = "Impairments", value_name = "PERCENT")]
    loss: Option<f64>,
    /// Mean loss-burst length in datagrams (Gilbert model); without it losses are independent.
    #[arg(long, help_heading = "Impairments", value_name = "DATAGRAMS")]
    burst: Option<f64>,
    /// Gilbert-Elliott P(good -> bad) per datagram (with --ge-r; replaces --loss/--burst).
    #[arg(long, requires = "ge_r", conflicts_with_all = ["loss", "burst"], help_heading = "Impairments", value_name = "P")]
    ge_p: Option<f64>,
    /// Gilbert-Elliott P(bad -> good) per datagram.
    #[arg(
        long,
        requires = "ge_p",
        help_heading = "Impairments",
        value_name = "P"
    )]
    ge_r: Option<f64>,
    /// Gilbert-Elliott loss probability in the good state.
    #[arg(
        long,
        default_value_t = 0.0,
        requires = "ge_p",
        help_heading = "Impairments",
        value_name = "P"
    )]
    ge_loss_good: f64,
    /// Gilbert-Elliott loss probability in the bad state.
    #[arg(
        long,
        default_value_t = 1.0,
        requires = "ge_p",
        help_heading = "Impairments",
        value_name = "P"
    )]
    ge_loss_bad: f64,
    /// Share of datagrams reordered.
    #[arg(long, default_value = "0", value_parser = percent, help_heading = "Impairments", value_name = "PERCENT")]
    reorder: f64,
    /// Most later datagrams that may overtake a reordered one.
    #[arg(
        long,
        default_value_t = 8,
        help_heading = "Impairments",
        value_name = "DATAGRAMS"
    )]
    reorder_max: usize,
    /// Share of datagrams duplicated.
    #[arg(long, default_value = "0", value_parser = percent, help_heading = "Impairments", value_name = "PERCENT")]
    duplicate: f64,
    /// Share of datagrams with one bit flipped.
    #[arg(long, default_value = "0", value_parser = percent, help_heading = "Impairments", value_name = "PERCENT")]
    corrupt: f64,
    /// Share of datagrams cut short at a random length.
    #[arg(long, default_value = "0", value_parser = percent, help_heading = "Impairments", value_name = "PERCENT")]
    truncate: f64,
    /// Drop datagrams larger than this (IP packet size, payload + 28).
    #[arg(long, help_heading = "Impairments", value_name = "BYTES")]
    mtu: Option<usize>,
    /// Link rate in bits per second (50k, 800M, 1G); unlimited if absent.
    #[arg(long, value_parser = rate, help_heading = "Impairments", value_name = "RATE")]
    rate: Option<u64>,
    /// Link buffer in bytes when rate-limited; overflow is tail-dropped.
    #[arg(long, default_value = "1M", value_parser = size, help_heading = "Impairments", value_name = "SIZE")]
    queue: u64,
    /// Fixed one-way delay (250ms, 1s).
    #[arg(long, default_value = "0s", value_parser = duration, help_heading = "Impairments", value_name = "DURATION")]
    delay: Duration,
    /// Extra random delay, uniform in [0, JITTER) per datagram (reorders when above the spacing).
    #[arg(long, default_value = "0s", value_parser = duration, help_heading = "Impairments", value_name = "DURATION")]
    jitter: Duration,
    /// Cut the link: AT+LENGTH from start, e.g. `30s+5s`; may be repeated.
    #[arg(long, value_name = "AT+LENGTH", value_parser = outage, help_heading = "Impairments")]
    outage: Vec<(Duration, Duration)>,
    /// Seed of every random decision (overrides a scenario's seed).
    #[arg(long, help_heading = "Link", value_name = "SEED")]
    seed: Option<u64>,
    /// Write every forwarded datagram to this pcap file.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pcap: Option<PathBuf>,
    /// Interval of the live statistics line on stderr; 0 turns it off.
    #[arg(long, default_value = "1s", value_parser = duration, help_heading = "Output", value_name = "DURATION")]
    stats_interval: Duration,
    /// Stop after this long and print the report (as SIGTERM does); a scenario whose last phase
    /// has a duration ends with it too.
    #[arg(long, value_parser = duration, value_name = "DURATION", help_heading = "Link")]
    duration: Option<Duration>,
    /// Live statistics as JSON lines.
    #[arg(long, help_heading = "Output")]
    stats_json: bool,
}

#[derive(Debug, ClapArgs)]
struct SweepArgs {
    /// Loss rates to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0%,2%,5%,10%,15%,20%,25%,30%", value_parser = percent, value_name = "PERCENT,...")]
    loss: Vec<f64>,
    /// Mean burst lengths to try; 1 means independent loss.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10",
        value_name = "DATAGRAMS,..."
    )]
    burst: Vec<f64>,
    /// Sender FEC setting.
    #[arg(long, default_value = "64:22", value_name = "K:M")]
    fec: String,
    /// Scenario files, each a link of its own (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "FILE")]
    scenario: Vec<PathBuf>,
    /// Sender rates to try, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "200M",
        value_name = "RATE,..."
    )]
    rate: Vec<String>,
    /// Sender shard sizes to try, comma-separated [default: the sender's for a 1,500-byte MTU].
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...")]
    shard_size: Vec<u16>,
    /// Runs of every combination, each with a seed of its own.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeats: u32,
    /// Files in the test tree.
    #[arg(long, default_value_t = 24, value_name = "N")]
    files: usize,
    /// Largest file; sizes spread log-uniformly from 1 byte up to it.
    #[arg(long, default_value = "4M", value_parser = size, value_name = "SIZE")]
    max_file: u64,
    /// Output folder for sweep.csv, sweep.svg, qualification.json and per-point logs.
    #[arg(long, default_value = "sweep-out", value_name = "DIR")]
    out: PathBuf,
    /// Seed of the link decisions and of the test tree.
    #[arg(long, default_value_t = 1, value_name = "SEED")]
    seed: u64,
    /// Receiver object timeout (how long a point waits for lost files to be declared).
    #[arg(long, default_value = "2s", value_parser = duration, value_name = "DURATION")]
    object_timeout: Duration,
    /// Folder with checkvalve-send and checkvalve-receive (default: next to this program).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

fn percent(s: &str) -> Result<f64, String> {
    units::parse_percent(s).map_err(|e| e.to_string())
}
fn rate(s: &str) -> Result<u64, String> {
    units::parse_rate(s).map_err(|e| e.to_string())
}
fn size(s: &str) -> Result<u64, String> {
    units::parse_size(s).map_err(|e| e.to_string())
}
fn duration(s: &str) -> Result<Duration, String> {
    units::parse_duration(s).map_err(|e| e.to_string())
}
fn outage(s: &str) -> Result<(Duration, Duration), String> {
    let (at, len) = s.split_once('+').ok_or("expected AT+LENGTH, e.g. 30s+5s")?;
    Ok((duration(at)?, duration(len)?))
}

fn main() -> ExitCode {
    checkvalve_host::manual::write_if_asked(<Cli as clap::CommandFactory>::command());
    let cli = Cli::parse();
    checkvalve_host::logging::init(cli.log_format);
    let result = match cli.command {
        Some(Command::Sweep(args)) => run_sweep(args),
        Some(Command::Historian(a)) => checkvalve_sim::feed::run(
            checkvalve_sim::historian::Points::new(a.tags, a.seed),
            &a.to,
            checkvalve_sim::feed::Pace {
                rate: a.rate,
                count: a.count,
                duration: a.duration,
            },
        )
        .map(|n| info!(records = n, "historian feed done")),
        None => run_link(cli.link),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn resolve(s: &str) -> Result<SocketAddr> {
    Ok(checkvalve_host::resolve(s)?)
}

fn schedule(a: &LinkArgs) -> Result<(Schedule, Option<u64>)> {
    if let Some(path) = &a.scenario {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut s = scenario::parse(&text).with_context(|| format!("in {}", path.display()))?;
        s.schedule.outages.extend(a.outage.iter().copied());
        return Ok((s.schedule, s.seed));
    }
    let loss = match (a.ge_p, a.ge_r) {
        (Some(p), Some(r)) => Loss::GilbertElliott {
            p,
            r,
            loss_good: a.ge_loss_good,
            loss_bad: a.ge_loss_bad,
        },
        _ => match a.burst {
            Some(b) if b < 1.0 => bail!("--burst must be at least 1"),
            Some(b) => Loss::bursty(a.loss.unwrap_or(0.0), b),
            None => Loss::Independent(a.loss.unwrap_or(0.0)),
        },
    };
    let mut s = Schedule::constant(LinkConfig {
        loss,
        reorder: a.reorder,
        reorder_max: a.reorder_max.max(1),
        duplicate: a.duplicate,
        corrupt: a.corrupt,
        truncate: a.truncate,
        mtu: a.mtu,
        rate_bps: a.rate,
        queue_bytes: usize::try_from(a.queue).unwrap_or(usize::MAX),
        delay: a.delay,
        jitter: a.jitter,
        down: false,
    });
    s.outages = a.outage.clone();
    Ok((s, None))
}

fn run_link(a: LinkArgs) -> Result<()> {
    let (Some(bind), Some(to)) = (&a.bind, &a.to) else {
        bail!("--bind and --to are required (or use the sweep subcommand)");
    };
    let (schedule, scenario_seed) = schedule(&a)?;
    let seed = a.seed.or(scenario_seed).unwrap_or(1);
    let options = Options {
        bind: resolve(bind)?,
        to: resolve(to)?,
        schedule,
        seed,
        pcap: a.pcap.clone(),
        stats_every: (!a.stats_interval.is_zero()).then_some(a.stats_interval),
        stats_json: a.stats_json,
        run_for: a.duration,
    };
    let stop = checkvalve_host::signals::stop_flag().context("cannot install signal handler")?;
    // A hang-up never ends a link under test: the scenario runs on.
    let _hangup =
        checkvalve_host::signals::hangup_flag().context("cannot install signal handler")?;
    let phases: Vec<String> = options
        .schedule
        .phases
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let forwarder = Forwarder::bind(options.clone())?;
    info!(bind = %forwarder.local_addr()?, to = %options.to, seed, phases = %phases.join(","), "forwarding");
    let report = forwarder.run(&stop)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("cannot locate the program folder"))?,
    };
    for b in ["checkvalve-send", "checkvalve-receive"] {
        if !bin_dir.join(b).exists() {
            bail!(
                "{b} not found in {} (build with cargo build --release, or pass --bin-dir)",
                bin_dir.display()
            );
        }
    }
    let o = SweepOptions {
        losses: a.loss,
        bursts: a.burst,
        scenarios: a.scenario,
        rates: a.rate,
        shard_sizes: a.shard_size,
        repeats: a.repeats.max(1),
        fec: a.fec,
        files: a.files.max(1),
        max_file: a.max_file,
        out: a.out,
        seed: a.seed,
        object_timeout: a.object_timeout,
        bin_dir,
    };
    let done = sweep::run(&o)?;
    let first_loss = done
        .points
        .iter()
        .filter(|p| p.delivery_ratio() < 1.0 && !p.is_scenario())
        .min_by(|a, b| a.loss.total_cmp(&b.loss));
    info!(
        csv = %o.out.join("sweep.csv").display(),
        svg = %o.out.join("sweep.svg").display(),
        artifact = %o.out.join(checkvalve_formats::qualification::FILE).display(),
        points = done.points.len(),
        points_with_loss = done.points_with_loss,
        first_below_100 = first_loss.map(|p| format!("{:.1}% loss, {}", p.loss * 100.0, p.burst_label())).unwrap_or_else(|| "none".into()),
        "sweep done"
    );
    Ok(())
}
