//! The transmitter: paces batches onto the link and interleaves heartbeats. Send-only by design.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use checkvalve_common::announce::Announcer;
use checkvalve_common::auth::Sealer;
use checkvalve_common::interleave::{Batch, Spares};
use checkvalve_common::pacer::Pacer;
use checkvalve_common::wire::{Announced, Heartbeat, StreamTail, emit_tails};
use checkvalve_host::udp;
use tracing::{debug, info, warn};

use crate::follow::{Sent as SentPositions, StreamOut};
use crate::keys::Identity;

/// Most datagrams in one segmentation-offload send (the kernel's UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmentation-offload send (a UDP payload over IPv4).
const GSO_MAX_BYTES: usize = 65_000;

/// Longest a single send may block before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Sleeping is coarse; shorter waits are left to the pacer's slack.
const MIN_SLEEP: Duration = Duration::from_micros(200);

/// Counters of what went onto the link.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// Datagrams sent, heartbeats included.
    pub datagrams: u64,
    /// Bytes sent (UDP payload).
    pub bytes: u64,
    /// Datagrams the kernel refused to send.
    pub errors: u64,
}

/// What the transmitter has sent so far and the rate it keeps, shared with the service's other
/// threads (the status file reads the counters; a configuration reload sets the rate).
#[derive(Debug, Default)]
pub struct Shared {
    /// Datagrams sent, heartbeats included.
    pub datagrams: AtomicU64,
    /// Datagrams the kernel refused.
    pub errors: AtomicU64,
    /// The output rate, bits per second; read before every batch.
    pub rate_bps: AtomicU64,
}

/// Owns the link socket. It has no receive path: nothing is ever read from it.
pub struct Transmitter {
    socket: UdpSocket,
    to: SocketAddr,
    pacer: Pacer,
    session: u64,
    /// Seals heartbeats when a key is configured.
    sealer: Option<Sealer>,
    interval: Duration,
    next_heartbeat: Instant,
    heartbeat_seq: u64,
    objects_sent: u64,
    sent: Sent,
    warned: bool,
    rate_bps: u64,
    /// UDP segmentation offload in use (until the kernel refuses it once).
    gso: bool,
    /// Every object below this has been handed to the kernel whole.
    complete_end: u64,
    /// Told `complete_end` whenever it grows.
    done: Option<Sender<u64>>,
    shared: Arc<Shared>,
    /// Where sent batches go back for reuse.
    spares: Spares,
    /// Objects encoded, from the producer, to be announced.
    names: Option<Receiver<Announced>>,
    /// Of those, the ones not yet handed to the kernel whole (in object order): an announcement
    /// must not run ahead of its object, or the receiver would take the objects queued in
    /// between for lost.
    unsent: std::collections::VecDeque<Announced>,
    /// When each announcement is due.
    announcer: Announcer,
    /// The stream session, when the sender carries record streams.
    lane: Option<Lane>,
}

/// The stream session's share of the transmitter: its batches go before any file data, with
/// heartbeats and tails of their own.
struct Lane {
    session: u64,
    sealer: Option<Sealer>,
    rx: Receiver<StreamOut>,
    heartbeat_seq: u64,
    /// Datagrams of this session sent (its heartbeats count them, not the file session's).
    datagrams: u64,
    objects_sent: u64,
    /// Each channel's tail, sent with every heartbeat of the session.
    tails: std::collections::BTreeMap<String, StreamTail>,
    /// Told how far each channel has been sent, for the saved positions.
    sent: SentPositions,
    max_len: usize,
}

impl Transmitter {
    /// Opens a send socket toward `to`.
    pub fn new(to: SocketAddr, rate_bps: u64, who: &Identity, interval: Duration) -> Result<Self> {
        let session = who.session;
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = UdpSocket::bind(local).context("cannot open the link socket")?;
        // Bound, it could be sent to: nothing that arrives is ever queued for anyone to read.
        checkvalve_confine::deaf(&socket).context("cannot make the link socket deaf")?;
        // A send that blocks (a full interface queue) must not hold up SIGTERM for long.
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .context("cannot set the send timeout")?;
        Ok(Transmitter {
            socket,
            to,
            pacer: Pacer::new(rate_bps, Duration::from_millis(1)),
            session,
            sealer: who.sealer.clone(),
            interval,
            next_heartbeat: Instant::now(),
            heartbeat_seq: 0,
            objects_sent: 0,
            sent: Sent::default(),
            warned: false,
            rate_bps,
            gso: true,
            complete_end: 0,
            done: None,
            spares: Spares::default(),
            names: None,
            unsent: std::collections::VecDeque::new(),
            announcer: Announcer::new(session, 0),
            lane: None,
            shared: Arc::new(Shared {
                rate_bps: AtomicU64::new(rate_bps),
                ..Shared::default()
            }),
        })
    }

    /// Counters and rate shared with other threads.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn follow_rate(&mut self) {
        let rate = self.shared.rate_bps.load(Ordering::Relaxed);
        if rate != self.rate_bps {
            info!(from = self.rate_bps, to = rate, "output rate changed");
            self.rate_bps = rate;
            self.pacer = Pacer::new(rate, Duration::from_millis(1));
        }
    }

    fn count(&mut self, datagrams: u64, bytes: u64) {
        self.sent.datagrams += datagrams;
        self.sent.bytes += bytes;
        self.shared
            .datagrams
            .fetch_add(datagrams, Ordering::Relaxed);
    }

    /// Tells `done` how many objects have been sent whole, each time that grows.
    pub fn report_completion(&mut self, done: Sender<u64>) {
        self.done = Some(done);
    }

    /// Announces the objects named on `names` (as the producer finishes them) in announcement
    /// datagrams of at most `max_len` bytes before sealing (a shard datagram's length).
    pub fn announce(&mut self, names: Receiver<Announced>, max_len: usize) {
        self.names = Some(names);
        self.announcer = Announcer::new(self.session, max_len);
    }

    /// Sends the announcements due (taking in the objects finished since the last look).
    fn announce_due(&mut self) {
        let now = Instant::now();
        if let Some(names) = &self.names {
            self.unsent.extend(names.try_iter());
        }
        while let Some(entry) = self.unsent.pop_front() {
            if entry.object >= self.complete_end {
                self.unsent.push_front(entry);
                break;
            }
            self.announcer.push(entry, now);
        }
        if self.announcer.next_due().is_none_or(|due| due > now) {
            return;
        }
        for mut datagram in self.announcer.poll(now) {
            if let Some(s) = &self.sealer {
                s.seal_heartbeat(&mut datagram, 0);
            }
            self.raw_send(&datagram);
        }
    }

    /// The next instant something but a batch is due: a heartbeat or an announcement.
    fn next_chore(&self) -> Instant {
        self.announcer
            .next_due()
            .map_or(self.next_heartbeat, |a| a.min(self.next_heartbeat))
    }

    /// Sends the stream session `who`'s batches from `rx` ahead of any file data, with its own
    /// heartbeats and tails (datagrams of at most `max_len` bytes before sealing); tells `sent`
    /// how far each channel went out.
    pub fn carry_streams(
        &mut self,
        who: &Identity,
        rx: Receiver<StreamOut>,
        sent: SentPositions,
        max_len: usize,
    ) {
        self.lane = Some(Lane {
            session: who.session,
            sealer: who.sealer.clone(),
            rx,
            heartbeat_seq: 0,
            datagrams: 0,
            objects_sent: 0,
            tails: std::collections::BTreeMap::new(),
            sent,
            max_len,
        });
    }

    /// Sends every stream batch waiting, before anything else.
    fn send_streams(&mut self) {
        loop {
            let Some(out) = self.lane.as_ref().and_then(|l| l.rx.try_recv().ok()) else {
                return;
            };
            let per_ms = usize::try_from(self.rate_bps / 8 / 1000).unwrap_or(usize::MAX);
            let max_bytes = per_ms.clamp(1, GSO_MAX_BYTES);
            let before = self.sent.datagrams;
            for (bytes, seg, count) in out.batch.runs(GSO_MAX_SEGMENTS, max_bytes) {
                self.paced_send_run(bytes, seg, count);
            }
            let sent = self.sent.datagrams - before;
            if let Some(lane) = self.lane.as_mut() {
                lane.datagrams += sent;
                lane.objects_sent = lane.objects_sent.max(out.batch.objects_end);
                if let Ok(mut positions) = lane.sent.lock() {
                    for t in &out.tails {
                        positions.entry(t.channel.clone()).or_default().sent = t.end;
                    }
                }
                for t in out.tails {
                    lane.tails.insert(t.channel.clone(), t);
                }
            }
        }
    }

    /// The stream session's heartbeat and tails.
    fn lane_heartbeat(&mut self) {
        let Some(lane) = self.lane.as_mut() else {
            return;
        };
        let hb = Heartbeat {
            session: lane.session,
            seq: lane.heartbeat_seq,
            datagrams_sent: lane.datagrams,
            objects_sent: lane.objects_sent,
            interval_ms: self.interval.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        lane.heartbeat_seq += 1;
        let mut datagrams = vec![hb.to_bytes()];
        let tails: Vec<StreamTail> = lane.tails.values().cloned().collect();
        datagrams.extend(emit_tails(lane.session, &tails, lane.max_len));
        let sealer = lane.sealer.clone();
        // Counted as the kernel takes them, like every other datagram: one refused is not sent.
        let before = self.sent.datagrams;
        for mut d in datagrams {
            if let Some(s) = &sealer {
                s.seal_heartbeat(&mut d, 0);
            }
            self.raw_send(&d);
        }
        let sent = self.sent.datagrams - before;
        if let Some(lane) = self.lane.as_mut() {
            lane.datagrams += sent;
        }
    }

    /// Where batches go back once sent: give it to the producer's interleaver.
    pub fn spares(&self) -> Spares {
        self.spares.clone()
    }

    /// What was sent so far.
    pub fn sent(&self) -> Sent {
        self.sent
    }

    /// Sends batches from `rx` until it closes or `stop` is raised, with heartbeats throughout.
    pub fn run(&mut self, rx: &Receiver<Batch>, stop: &AtomicBool) {
        self.heartbeat();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            self.send_streams();
            let wait = self.next_chore().saturating_duration_since(Instant::now());
            // With streams, look at their queue often: a record waits at most this long.
            let most = if self.lane.is_some() {
                Duration::from_millis(2)
            } else {
                Duration::from_millis(100)
            };
            match rx.recv_timeout(wait.min(most)) {
                Ok(batch) => {
                    self.follow_rate();
                    // One segmentation-offload send carries at most a millisecond at the set
                    // rate, so that batching never turns into a burst above it.
                    let per_ms = usize::try_from(self.rate_bps / 8 / 1000).unwrap_or(usize::MAX);
                    let max_bytes = per_ms.clamp(1, GSO_MAX_BYTES);
                    for (bytes, seg, count) in batch.runs(GSO_MAX_SEGMENTS, max_bytes) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // Records go before the rest of a file's batch: they wait a run at most.
                        self.send_streams();
                        self.paced_send_run(bytes, seg, count);
                    }
                    self.objects_sent = self.objects_sent.max(batch.objects_end);
                    if batch.complete_end > self.complete_end {
                        self.complete_end = batch.complete_end;
                        if let Some(done) = &self.done {
                            let _ = done.send(self.complete_end);
                        }
                    }
                    self.spares.give(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= self.next_heartbeat {
                self.heartbeat();
            }
            self.announce_due();
        }
    }

    /// Sends `count` closing heartbeats 100 ms apart so the receiver learns the final object
    /// count, and the announcements still due, hurried (`announce::HURRIED` apart), between them.
    pub fn finish(&mut self, count: usize) {
        self.announce_due();
        self.announcer.hurry(Instant::now());
        let mut next = Instant::now();
        let mut left = count;
        while left > 0 || !self.announcer.is_empty() {
            let now = Instant::now();
            if left > 0 && now >= next {
                self.heartbeat();
                left -= 1;
                next = now + Duration::from_millis(100);
            }
            self.announce_due();
            let until = self.announcer.next_due().map_or(next, |a| a.min(next));
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
    }

    /// Sends `count` datagrams of `seg` bytes (the last may be shorter) held back to back in
    /// `bytes`: with UDP segmentation offload in one system call, else one by one.
    fn paced_send_run(&mut self, bytes: &[u8], seg: usize, count: usize) {
        self.wait_for_pacer();
        if count > 1 && self.gso {
            let now = Instant::now();
            match udp::gso::send_segments(&self.socket, self.to, bytes, seg) {
                Ok(()) => {
                    for d in bytes.chunks(seg) {
                        self.pacer.on_send(now, d.len());
                    }
                    self.count(count as u64, bytes.len() as u64);
                    return;
                }
                Err(e) if udp::gso::unsupported(e) => {
                    warn!(
                        "UDP segmentation offload unavailable ({e}): sending datagrams one by one"
                    );
                    self.gso = false;
                }
                Err(e) => {
                    self.on_send_error(std::io::Error::from(e), count as u64);
                    return;
                }
            }
        }
        for d in bytes.chunks(seg) {
            self.raw_send(d);
        }
    }

    fn wait_for_pacer(&mut self) {
        loop {
            let now = Instant::now();
            if now >= self.next_heartbeat {
                self.heartbeat();
                continue;
            }
            if self.announcer.next_due().is_some_and(|due| due <= now) {
                self.announce_due();
                continue;
            }
            let delay = self.pacer.delay(now);
            if delay < MIN_SLEEP {
                break;
            }
            std::thread::sleep(delay.min(self.next_chore().saturating_duration_since(now)));
        }
    }

    fn heartbeat(&mut self) {
        let hb = Heartbeat {
            session: self.session,
            seq: self.heartbeat_seq,
            datagrams_sent: self
                .sent
                .datagrams
                .saturating_sub(self.lane.as_ref().map_or(0, |l| l.datagrams)),
            objects_sent: self.objects_sent,
            interval_ms: self.interval.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        self.heartbeat_seq += 1;
        self.next_heartbeat = Instant::now() + self.interval;
        debug!(
            seq = hb.seq,
            datagrams = hb.datagrams_sent,
            objects = hb.objects_sent,
            "heartbeat"
        );
        let mut bytes = hb.to_bytes();
        if let Some(s) = &self.sealer {
            s.seal_heartbeat(&mut bytes, 0);
        }
        self.raw_send(&bytes);
        self.lane_heartbeat();
    }

    fn raw_send(&mut self, datagram: &[u8]) {
        self.pacer.on_send(Instant::now(), datagram.len());
        match self.socket.send_to(datagram, self.to) {
            Ok(_) => self.count(1, datagram.len() as u64),
            Err(e) => self.on_send_error(e, 1),
        }
    }

    fn on_send_error(&mut self, e: std::io::Error, datagrams: u64) {
        self.sent.errors += datagrams;
        self.shared.errors.fetch_add(datagrams, Ordering::Relaxed);
        if !self.warned {
            warn!(
                "send to {} failed: {e} (further failures are only counted)",
                self.to
            );
            self.warned = true;
        }
    }
}
