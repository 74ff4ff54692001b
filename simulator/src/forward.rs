//! The forwarding loop: the only I/O around the link model. The listening socket only receives;
//! the forwarding socket only sends.

use checkvalve_host::udp;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::socket::MsgFlags;
use tracing::{info, warn};

use crate::link::{Counters, Link, Schedule};
use crate::pcap::Capture;
use crate::report::Report;

/// Datagrams taken from the socket before the link is polled again.
const BATCH: usize = 64;
/// Forwarded datagram buffers kept for reuse, so steady forwarding does not allocate.
const POOL: usize = 4096;

/// How to run the forwarder.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the sender sends.
    pub bind: SocketAddr,
    /// Where to forward.
    pub to: SocketAddr,
    /// The link's timeline.
    pub schedule: Schedule,
    /// Seed of every decision.
    pub seed: u64,
    /// Capture of the forwarded datagrams.
    pub pcap: Option<PathBuf>,
    /// Interval of the live statistics line (`None`: no live line).
    pub stats_every: Option<Duration>,
    /// Live statistics as JSON lines instead of text.
    pub stats_json: bool,
    /// Stop after this long (`--duration`), if not before.
    pub run_for: Option<Duration>,
}

/// A bound forwarder, ready to run.
pub struct Forwarder {
    inbound: UdpSocket,
    outbound: UdpSocket,
    options: Options,
}

impl Forwarder {
    /// Binds both sockets (so the caller knows the port is open before traffic starts).
    pub fn bind(options: Options) -> Result<Forwarder> {
        let inbound = UdpSocket::bind(options.bind)
            .with_context(|| format!("cannot bind {}", options.bind))?;
        // A large buffer, so the simulator adds no loss that the model did not decide.
        udp::buffers::grow_receive_buffer(&inbound, 64 << 20);
        udp::gro::enable_receive_offload(&inbound);
        let local: SocketAddr = if options.to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let outbound = UdpSocket::bind(local).context("cannot open the forwarding socket")?;
        Ok(Forwarder {
            inbound,
            outbound,
            options,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inbound.local_addr()?)
    }

    /// Forwards until `stop` is raised, then returns the report.
    pub fn run(self, stop: &AtomicBool) -> Result<Report> {
        let o = &self.options;
        let start = Instant::now();
        let mut link = Link::new(o.schedule.clone(), o.seed, start);
        let mut capture = match &o.pcap {
            Some(path) => {
                let mut from = self.outbound.local_addr()?;
                if from.ip().is_unspecified() {
                    from.set_ip(if o.to.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                Some(
                    Capture::create(path, from, o.to)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )
            }
            None => None,
        };
        let fd = self.inbound.as_raw_fd();
        let mut buf = vec![0u8; 65_535];
        let mut cmsg = udp::gro::control_buffer();
        let mut out = udp::gso::Run::default();
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut timeout = Duration::ZERO;
        let mut send_errors = 0u64;
        let mut last_stats = (start, Counters::default());
        // The run ends at --duration, or with a timeline whose last phase has a duration.
        let end = [o.run_for, o.schedule.end()]
            .into_iter()
            .flatten()
            .min()
            .map(|d| start + d);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) {
                info!(
                    seconds =
                        checkvalve_host::logging::round(now.duration_since(start).as_secs_f64(), 1),
                    "run over: the duration or the scenario's last phase ended"
                );
                break;
            }
            let wait = link
                .next_due()
                .map_or(Duration::from_millis(100), |due| {
                    due.saturating_duration_since(now)
                })
                .clamp(Duration::from_micros(50), Duration::from_millis(100));
            if wait != timeout {
                self.inbound.set_read_timeout(Some(wait))?;
                timeout = wait;
            }
            // The first read waits; the rest take only what is already queued.
            let mut flags = MsgFlags::empty();
            for _ in 0..BATCH {
                match udp::gro::receive(fd, &mut buf, flags, &mut cmsg) {
                    Ok(got) => {
                        // The link model sees each datagram of a coalesced run on its own.
                        let now = Instant::now();
                        for (start, end) in got.datagrams() {
                            let mut d = pool.pop().unwrap_or_default();
                            d.clear();
                            d.extend_from_slice(&buf[start..end]);
                            link.push(now, d);
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
                flags = MsgFlags::MSG_DONTWAIT;
            }
            let now = Instant::now();
            while let Some(d) = link.poll(now) {
                if !out.fits(&d) {
                    send_errors += out.flush(&self.outbound, o.to);
                }
                out.push(&d);
                if let Some(c) = capture.as_mut() {
                    c.record(&d).context("cannot write the capture")?;
                }
                if pool.len() < POOL {
                    pool.push(d);
                }
            }
            send_errors += out.flush(&self.outbound, o.to);
            if let Some(every) = o.stats_every
                && now - last_stats.0 >= every
            {
                live_stats(&link, now, start, &mut last_stats, o.stats_json);
            }
        }
        if let Some(c) = capture {
            c.finish().context("cannot finish the capture")?;
        }
        if send_errors > 0 {
            warn!(
                send_errors,
                "some forwarded datagrams could not be sent (receiver not listening?)"
            );
        }
        Ok(Report::new(&link, o.seed, start.elapsed()))
    }
}

fn live_stats(
    link: &Link,
    now: Instant,
    start: Instant,
    last: &mut (Instant, Counters),
    json: bool,
) {
    let c = link.counters();
    let dt = (now - last.0).as_secs_f64();
    let fwd_bytes = c.bytes_out - last.1.bytes_out + (c.forwarded - last.1.forwarded) * 28;
    let mbps = fwd_bytes as f64 * 8.0 / dt / 1e6;
    let phase = &link.schedule().phases[link.phase_at(now)].name;
    let t = (now - start).as_secs_f64();
    if json {
        eprintln!(
            "{}",
            serde_json::json!({"t": t, "phase": phase, "counters": c, "mbps": mbps})
        );
    } else {
        info!(
            t = checkvalve_host::logging::round(t, 1),
            phase = %phase,
            mbps = checkvalve_host::logging::round(mbps, 1),
            "stats received={} forwarded={} dropped={} loss={} outage={} queue={}",
            c.received,
            c.forwarded,
            c.dropped,
            c.dropped_loss,
            c.dropped_outage,
            c.dropped_queue
        );
    }
    *last = (now, c);
}
