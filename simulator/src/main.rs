//! `checkvalve-sim`: forwards datagrams one way through a seeded model of a lossy link.
//! The listening socket never sends; the forwarding socket never reads.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use checkvalve_sim::link::{Link, LinkConfig};
use clap::Parser;
use tracing::{error, info, warn};

/// Forward datagrams one way through a lossy link model.
#[derive(Debug, Parser)]
#[command(name = "checkvalve-sim", version, about)]
struct Args {
    /// Address to listen on (the sender's --to), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    bind: String,
    /// Where to forward (the receiver's --bind), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Long-run loss rate, `5%` or `0.05`.
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    loss: f64,
    /// Mean loss-burst length in datagrams (Gilbert-Elliott); without it losses are independent.
    #[arg(long)]
    burst: Option<f64>,
    /// Share of datagrams reordered.
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    reorder: f64,
    /// Most later datagrams that may overtake a reordered one.
    #[arg(long, default_value_t = 8)]
    reorder_max: usize,
    /// Share of datagrams duplicated.
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    duplicate: f64,
    /// Share of datagrams with one bit flipped.
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    corrupt: f64,
    /// Link rate in bits per second (50k, 800M, 1G); unlimited if absent.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// Link buffer in bytes when rate-limited; overflow is tail-dropped.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    queue: u64,
    /// Fixed one-way delay (250ms, 1s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    delay: Duration,
    /// Seed of every random decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    checkvalve_sim::units::parse_percent(s).map_err(|e| e.to_string())
}
fn parse_rate(s: &str) -> Result<u64, String> {
    checkvalve_sim::units::parse_rate(s).map_err(|e| e.to_string())
}
fn parse_size(s: &str) -> Result<u64, String> {
    checkvalve_sim::units::parse_size(s).map_err(|e| e.to_string())
}
fn parse_duration(s: &str) -> Result<Duration, String> {
    checkvalve_sim::units::parse_duration(s).map_err(|e| e.to_string())
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
    let to = resolve(&args.to)?;
    let config = LinkConfig {
        loss: args.loss,
        burst: args.burst,
        reorder: args.reorder,
        reorder_max: args.reorder_max,
        duplicate: args.duplicate,
        corrupt: args.corrupt,
        rate_bps: args.rate,
        queue_bytes: usize::try_from(args.queue).unwrap_or(usize::MAX),
        delay: args.delay,
    };
    let inbound = UdpSocket::bind(bind).with_context(|| format!("cannot bind {bind}"))?;
    checkvalve_sim::socket::grow_receive_buffer(&inbound, 64 << 20);
    let outbound = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .context("cannot open the forwarding socket")?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install signal handler")?;
    }
    info!(%bind, %to, ?config, seed = args.seed, "forwarding");
    let mut link = Link::new(config, args.seed);
    let mut buf = vec![0u8; 65_535];
    let mut timeout = Duration::ZERO;
    let mut send_errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = link
            .next_due()
            .map_or(Duration::from_millis(100), |due| {
                due.saturating_duration_since(now)
            })
            .clamp(Duration::from_micros(50), Duration::from_millis(100));
        if wait != timeout {
            inbound.set_read_timeout(Some(wait))?;
            timeout = wait;
        }
        match inbound.recv(&mut buf) {
            Ok(n) => link.push(Instant::now(), buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => warn!("receive error: {e}"),
        }
        let now = Instant::now();
        while let Some(d) = link.poll(now) {
            if outbound.send_to(&d, to).is_err() {
                send_errors += 1;
            }
        }
    }
    let c = link.counters();
    if send_errors > 0 {
        warn!(send_errors, "some forwarded datagrams could not be sent");
    }
    println!("{}", serde_json::to_string(&c)?);
    Ok(())
}
