//! The receive loop: feeds datagrams to the assembler and acts on its events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use checkvalve_common::assembler::{Assembler, Event, ObjectKey};
use checkvalve_common::auth::{Opener, Persisted, Refused};
use checkvalve_common::link_state::LinkChange;
use checkvalve_common::meta::ObjectKind;
use checkvalve_common::repair::{Repair, Rows};
use checkvalve_common::shed::{self, LossMeter};
use checkvalve_common::stream::batch::{BatchError, MAX_BATCH_LEN, check_channel};
use checkvalve_formats::manifest::{Detail, Status};
use tracing::{debug, error, info, warn};

use crate::live::{Counts, Live};
use crate::manifest::{Evidence, Manifest};
use crate::net::{Chunk, NetState};
use crate::outcome::{LossReason, Outcome, Recorder};
use crate::pipeline::messages::{Completed, ToWriter};
use crate::pipeline::reservation::{Reservation, Reserved};
use crate::ratelimit::Limiter;
use crate::share::Share;

/// How often the loop's own chores run while datagrams arrive (repairs held, loss measured,
/// statistics, the live state).
const TICK: Duration = Duration::from_millis(100);
/// How often they run on an idle link (the live state is written every second).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Sessions with unnamed losses aggregated separately per interval; the rest share one record.
const AGGREGATED_SESSIONS: usize = 64;

/// Unnamed losses of one session within the current interval.
#[derive(Debug, Default)]
struct Unnamed {
    objects: u64,
    /// A few of the ranges, for the record.
    ranges: Vec<(u64, u64)>,
    reason: String,
}

/// Says, at most every ten seconds while it lasts, that the receiver is behind: what it dropped
/// and the rate it sustains.
#[derive(Debug, Default)]
struct Overload {
    /// When the current window started, with the datagram and drop counts then.
    window: Option<(Instant, u64, u64)>,
    /// The last window ended with drops: the next line waits a full window.
    behind: bool,
}

impl Overload {
    const WINDOW: Duration = Duration::from_secs(10);

    /// Returns, when a line is due, the datagrams dropped and the rate sustained since the last.
    fn tick(&mut self, now: Instant, datagrams: u64, dropped: u64) -> Option<(u64, f64)> {
        let Some((start, d0, x0)) = self.window else {
            self.window = Some((now, datagrams, dropped));
            return None;
        };
        let elapsed = now.saturating_duration_since(start);
        // The first drops are reported after a second (to measure a rate), later ones every
        // window; a window without drops ends the episode.
        let due = if self.behind {
            elapsed >= Self::WINDOW
        } else {
            elapsed >= Duration::from_secs(1) && dropped > x0 || elapsed >= Self::WINDOW
        };
        if !due {
            return None;
        }
        self.behind = dropped > x0;
        self.window = Some((now, datagrams, dropped));
        self.behind.then(|| {
            (
                dropped - x0,
                datagrams.saturating_sub(d0) as f64 / elapsed.as_secs_f64(),
            )
        })
    }
}

/// Rate limits of the loop's repeated log lines.
struct Limits {
    sessions: Limiter,
    unnamed: Limiter,
}

/// What the loop is connected to besides the assembler: the stages it feeds, what comes back
/// from them, and the state it keeps.
pub struct Wiring {
    /// The share (for its free space).
    pub share: Arc<Share>,
    /// The manifest (aggregate records, and its counters for the statistics).
    pub manifest: Arc<Manifest>,
    /// Where outcomes are logged and recorded.
    pub recorder: Arc<Recorder>,
    /// The writer's queue.
    pub writer: SyncSender<ToWriter>,
    /// Block buffers coming back from the writer and the hasher.
    pub recycled: Receiver<Vec<u8>>,
    /// Objects whose temporary file could not be written, with why.
    pub failed: Receiver<(ObjectKey, LossReason)>,
    /// Bytes of objects in progress or queued for publication (their announced sizes).
    pub reserved: Reserved,
    /// Into the record channels' stage, for the senders' tails.
    pub streams: SyncSender<crate::pipeline::messages::ToStreams>,
    /// Link state, its records, and the live state file.
    pub live: Live,
    /// Authentication of datagrams, when keys are configured, and where its state is kept.
    pub auth: Option<Opener>,
    /// The file the authentication state is kept in.
    pub auth_state: std::path::PathBuf,
    /// Where its saving is queued.
    pub chores: crate::chores::Queue,
    /// Parity bytes of repairs held back to be sorted into batches of neighbouring blocks.
    pub repair_hold: usize,
    /// Set by SIGHUP.
    pub hangup: Arc<AtomicBool>,
}

/// State of the receive loop.
pub struct Receive {
    asm: Assembler,
    out: Wiring,
    /// Path, size and disk reservation of objects whose head arrived (the name for a loss, the
    /// reservation for the object's way on).
    names: HashMap<ObjectKey, (String, u64, Reservation)>,
    /// Record batch objects in progress (their heads said so).
    batches: std::collections::HashSet<ObjectKey>,
    /// Free space kept on the output filesystem beyond everything in progress.
    min_free: u64,
    stats_every: Duration,
    last_stats: Instant,
    aggregate_every: Duration,
    last_aggregate: Instant,
    unnamed: BTreeMap<u64, Unnamed>,
    limits: Limits,
    overload: Overload,
    /// The link's loss, which bounds the parity the net thread may shed.
    loss: LossMeter,
    /// Repairs held back, and the parity bytes they hold.
    repairs: Vec<(ObjectKey, Repair)>,
    repair_bytes: usize,
    reported_malformed: u64,
    /// What authentication refused, and how much of it was logged.
    refused: Refused,
    reported_refused: u64,
    /// `refused_sessions` when last reported.
    reported_refused_sessions: u64,
    last_auth_save: Instant,
    /// Replay state not yet queued for saving (the chores' thread was busy).
    unsaved_auth: Option<Persisted>,
    /// Datagrams received and refused at the last statistics line: an idle receiver does not
    /// repeat itself (refusals alone are news: nothing may be accepted at all).
    reported_datagrams: Option<(u64, u64)>,
}

impl Receive {
    /// Creates the loop state.
    pub fn new(
        asm: Assembler,
        out: Wiring,
        min_free: u64,
        stats_every: Duration,
        aggregate_every: Duration,
    ) -> Self {
        let window = Duration::from_secs(10);
        Receive {
            asm,
            out,
            names: HashMap::new(),
            batches: std::collections::HashSet::new(),
            min_free,
            stats_every,
            last_stats: Instant::now(),
            aggregate_every,
            last_aggregate: Instant::now(),
            unnamed: BTreeMap::new(),
            limits: Limits {
                sessions: Limiter::new(window, 10),
                unnamed: Limiter::new(window, 10),
            },
            overload: Overload::default(),
            loss: LossMeter::new(shed::WINDOW, shed::ASSUMED_LOSS),
            repairs: Vec::new(),
            repair_bytes: 0,
            reported_malformed: 0,
            refused: Refused::default(),
            reported_refused: 0,
            reported_refused_sessions: 0,
            last_auth_save: Instant::now(),
            unsaved_auth: None,
            reported_datagrams: None,
        }
    }

    /// Runs until `stop`, taking chunks from `rx` and returning them through `free`; then reports
    /// everything still in progress and lets the publishers finish.
    pub fn run(
        mut self,
        rx: &Receiver<Chunk>,
        free: &Sender<Chunk>,
        queued: &AtomicUsize,
        stop: &AtomicBool,
        signals: &NetState,
    ) -> Live {
        let net_dropped = &signals.dropped;
        let mut last_tick = Instant::now();
        let mut busy = false;
        while !stop.load(Ordering::Relaxed) {
            // Wait for a datagram, the assembler's next timer, or the loop's own chores: every
            // 100 ms while datagrams arrive or repairs are held, every second when idle.
            let now = Instant::now();
            let chores = last_tick
                + if busy || !self.repairs.is_empty() {
                    TICK
                } else {
                    IDLE_TICK
                };
            // One look at the assembler's timers per turn (it walks the objects in progress): the
            // datagrams handled meanwhile only push its timers later, and a call a little early
            // finds nothing to do.
            let timer = self.asm.poll_timeout();
            let due = timer.map_or(chores, |t| t.min(chores));
            let wait = due.saturating_duration_since(now).min(IDLE_TICK);
            match rx.recv_timeout(wait) {
                Ok(mut chunk) => {
                    busy = true;
                    queued.fetch_sub(1, Ordering::AcqRel);
                    let now = Instant::now();
                    for d in chunk.iter_mut() {
                        // Authentication comes before anything that could create state.
                        let n = match self.out.auth.as_mut().map(|a| a.open(d)) {
                            None => d.len(),
                            Some(Ok(n)) => n,
                            Some(Err(e)) => {
                                self.refused.count(e);
                                continue;
                            }
                        };
                        if let Err(e) = self.asm.handle_datagram(now, &d[..n]) {
                            debug!("datagram rejected: {e}");
                        }
                        self.drain_events();
                    }
                    let _ = free.send(chunk);
                    self.take_back();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.take_back();
            let now = Instant::now();
            if timer.is_some_and(|t| t <= now) {
                self.asm.handle_timeout(now);
                self.drain_events();
            }
            if now - last_tick >= TICK
                && (busy || !self.repairs.is_empty() || now - last_tick >= IDLE_TICK)
            {
                last_tick = now;
                busy = false;
                if self.out.hangup.swap(false, Ordering::Relaxed) {
                    info!(
                        "SIGHUP: nothing is reloaded while the receiver runs (restart it to apply a new configuration); going on"
                    );
                }
                self.flush_repairs();
                let c = self.asm.counters();
                self.loss
                    .record(now, c.data_shards_due, c.data_shards_rebuilt);
                signals.set_link_loss(self.loss.loss());
                if now - self.last_aggregate >= self.aggregate_every {
                    self.last_aggregate = now;
                    self.flush_unnamed();
                    self.report_refused_sessions();
                }
                if now - self.last_stats >= self.stats_every {
                    self.last_stats = now;
                    self.log_stats(signals, false);
                }
                let (datagrams, dropped) = (
                    self.asm.counters().datagrams,
                    net_dropped.load(Ordering::Relaxed),
                );
                let counts = Counts {
                    datagrams,
                    malformed: self.asm.counters().malformed,
                    dropped_behind: dropped,
                    kernel_overflows: signals.kernel_overflows.load(Ordering::Relaxed),
                    refused_auth: self.refused.total(),
                    refused_sessions: c.refused_sessions,
                };
                if now - self.last_auth_save >= Duration::from_secs(1) {
                    self.last_auth_save = now;
                    self.save_auth(false);
                }
                let sessions = self.asm.session_stats();
                self.out.live.tick(now, &sessions, counts);
                if let Some((n, rate)) = self.overload.tick(now, datagrams, dropped) {
                    warn!(
                        dropped = n,
                        sustained_datagrams_per_s = rate.round(),
                        link_loss_percent =
                            checkvalve_host::logging::round(self.loss.loss() * 100.0, 2),
                        kernel_overflows_total = signals.kernel_overflows.load(Ordering::Relaxed),
                        "receiver behind the sender: lower the sender's --rate below what this receiver sustains"
                    );
                }
            }
        }
        let open = self.asm.objects_in_progress();
        if open > 0 {
            warn!(
                objects = open,
                "stopping with objects in progress: they are recorded as lost"
            );
        }
        self.asm.shutdown();
        self.drain_events();
        self.flush_repairs();
        self.take_back();
        self.flush_unnamed();
        self.log_stats(signals, true);
        let sessions = self.asm.session_stats();
        self.out.live.last_loss(&sessions);
        self.save_auth(true);
        // Dropping the channel lets the writer publish what is complete and stop; the live
        // state's last version is written after that.
        self.out.live
    }

    /// Keeps the replay state (newest epoch, highest counters) for the next start: queued as a
    /// chore, since the saving syncs; `last` waits for room to queue it, at a stop.
    fn save_auth(&mut self, last: bool) {
        // A state taken later holds everything an unsaved earlier one did.
        let newer = self.out.auth.as_mut().and_then(Opener::take_persisted);
        let unsaved = self.unsaved_auth.take();
        let Some(p) = newer.or(unsaved) else {
            return;
        };
        let file = self.out.auth_state.clone();
        let kept = (!last).then(|| p.clone());
        let chore = move || {
            if let Err(e) = crate::keys::save_state(&file, &p) {
                warn!(
                    "cannot save the authentication state (a restart may accept replays of the last second): {e}"
                );
            }
        };
        if last {
            self.out.chores.run(chore);
        } else if !self.out.chores.try_run(chore) {
            self.unsaved_auth = kept;
        }
    }

    /// Buffers the writer is done with, and objects it could not write.
    fn take_back(&mut self) {
        while let Ok(buf) = self.out.recycled.try_recv() {
            self.asm.recycle(buf);
        }
        while let Ok((key, reason)) = self.out.failed.try_recv() {
            self.fail(key, reason);
        }
    }

    /// Hands `msg` to the writer; anything but content goes after the repairs held, so that
    /// the writer settles an object's repairs before it completes or discards it.
    fn hand_to_writer(&mut self, msg: ToWriter) {
        if !matches!(msg, ToWriter::Data { .. }) {
            self.flush_repairs();
        }
        self.send_to_writer(msg);
    }

    fn send_to_writer(&mut self, msg: ToWriter) {
        if self.out.writer.send(msg).is_err() {
            error!("writer thread stopped");
        }
    }

    /// Holds a repair back. Blocks become repairable in waves (one per parity row of their stripe
    /// group, each wave a fifth of the blocks at 5 % loss, in block order); read back as they
    /// come, the rows of neighbouring blocks were read once per wave. Held across waves and
    /// sorted, neighbours are read together. Held at most `repair_hold` bytes of parity, or one
    /// tick (100 ms); content may overtake them, since what a repair reads was handed over
    /// before it.
    fn queue_repair(&mut self, key: ObjectKey, repair: Repair) {
        self.repair_bytes += repair.parity.capacity();
        self.repairs.push((key, repair));
        if self.repair_bytes > self.out.repair_hold {
            self.flush_repairs();
        }
    }

    /// Hands the repairs held to the writer.
    fn flush_repairs(&mut self) {
        self.repair_bytes = 0;
        for (key, repairs) in repair_batches(std::mem::take(&mut self.repairs)) {
            self.send_to_writer(ToWriter::Repair { key, repairs });
        }
    }

    fn log_stats(&mut self, signals: &NetState, always: bool) {
        let net_dropped = signals.dropped.load(Ordering::Relaxed);
        let c = self.asm.counters();
        let seen = (c.datagrams, self.refused.total());
        if !always && self.reported_datagrams == Some(seen) {
            return;
        }
        self.reported_datagrams = Some(seen);
        if self.out.auth.is_none() {
            warn!("{}", crate::pipeline::UNAUTHENTICATED);
        }
        if self.refused.total() > self.reported_refused {
            let r = self.refused;
            warn!(
                count = r.total() - self.reported_refused,
                "datagrams refused by authentication (forged, replayed, or a sender without the key): {r}"
            );
            self.reported_refused = r.total();
        }
        if c.malformed > self.reported_malformed {
            warn!(
                count = c.malformed - self.reported_malformed,
                "malformed datagrams rejected (CRC, magic, version or length)"
            );
            self.reported_malformed = c.malformed;
        }
        for s in self.asm.session_stats() {
            if let Some(hb) = s.last_heartbeat {
                info!(
                    session = format_args!("{:016x}", s.session),
                    received = s.received,
                    sender_sent = hb.datagrams_sent,
                    objects_announced = hb.objects_sent,
                    "link"
                );
            }
        }
        info!(
            datagrams = c.datagrams,
            blocks = c.blocks_decoded,
            complete = c.objects_complete,
            lost = c.objects_lost,
            malformed = c.malformed,
            inconsistent = c.inconsistent,
            over_budget = c.over_budget,
            refused_sessions = c.refused_sessions,
            evicted_sessions = c.evicted_sessions,
            preempted_blocks = c.preempted_blocks,
            held_bytes = self.asm.held_bytes(),
            dropped_behind = net_dropped,
            kernel_overflows = signals.kernel_overflows.load(Ordering::Relaxed),
            manifest_dropped = self.out.manifest.dropped(),
            "stats"
        );
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.asm.poll_event() {
            self.on_event(ev);
        }
    }

    /// Forgets an object's name; its space reservation is released.
    fn unname(&mut self, key: ObjectKey) -> Option<(String, u64)> {
        self.names.remove(&key).map(|(path, size, _)| (path, size))
    }

    /// Gives up an object for a local reason (disk), and records it.
    fn fail(&mut self, key: ObjectKey, reason: LossReason) {
        let named = self.unname(key).map(|(p, s)| (p, Some(s)));
        self.asm.abandon(key);
        self.hand_to_writer(ToWriter::Discard { key });
        self.record_loss(key, named, reason);
    }

    fn record_loss(
        &mut self,
        key: ObjectKey,
        named: Option<(String, Option<u64>)>,
        reason: LossReason,
    ) {
        match named {
            Some((path, size)) => self.out.recorder.record(Outcome::Lost {
                key,
                path: &path,
                size,
                reason: &reason,
            }),
            None => self.add_unnamed(key.session, key.object, key.object, reason.to_string()),
        }
    }

    /// Objects lost without a name are recorded per session and interval, not one by one: a
    /// flood of forged objects must not become a flood of records.
    fn add_unnamed(&mut self, session: u64, first: u64, last: u64, reason: String) {
        let slot =
            if self.unnamed.len() < AGGREGATED_SESSIONS || self.unnamed.contains_key(&session) {
                session
            } else {
                0
            };
        let u = self.unnamed.entry(slot).or_default();
        u.objects = u.objects.saturating_add(last - first).saturating_add(1);
        if u.ranges.len() < 8 {
            u.ranges.push((first, last));
        }
        if u.reason.is_empty() {
            u.reason = reason;
        }
    }

    /// Says (a WARN and a record, once per aggregate interval at most) how many datagrams of new
    /// sessions were refused since the last time: every slot held a sender that may not give way.
    fn report_refused_sessions(&mut self) {
        let refused = self.asm.counters().refused_sessions;
        let new = refused.saturating_sub(self.reported_refused_sessions);
        if new == 0 {
            return;
        }
        self.reported_refused_sessions = refused;
        let held = self.asm.sessions() as u64;
        let reason = if self.out.auth.is_none() {
            format!(
                "{new} datagrams of new sessions refused: all {held} session slots hold active senders (without a key, forged sessions can hold them)"
            )
        } else {
            format!(
                "{new} datagrams of new sessions refused: all {held} session slots hold active senders"
            )
        };
        warn!(refused = new, sessions = held, "{reason}");
        self.out.manifest.event(
            Status::SessionsRefused,
            None,
            reason,
            Some(Detail::Refused {
                refused_datagrams: new,
                sessions_held: held,
            }),
        );
    }

    fn flush_unnamed(&mut self) {
        for (session, u) in std::mem::take(&mut self.unnamed) {
            let ranges: Vec<String> = u
                .ranges
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}..={b}")
                    }
                })
                .collect();
            let more = if u.objects > u.ranges.len() as u64 {
                ", ..."
            } else {
                ""
            };
            let reason = format!(
                "name unknown: {} (objects {}{more})",
                u.reason,
                ranges.join(", ")
            );
            if let Some(suppressed) = self.limits.unnamed.allow() {
                warn!(
                    session = format_args!("{session:016x}"),
                    objects = u.objects,
                    suppressed,
                    "lost: {reason}"
                );
            }
            self.out
                .manifest
                .lost(&format!("{session:016x}"), u.objects, None, None, reason);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::SessionStarted {
                session,
                first_object,
                after_us,
            } => {
                if let Some(suppressed) = self.limits.sessions.allow() {
                    info!(
                        session = format_args!("{session:016x}"),
                        first_object, after_us, suppressed, "new sender session"
                    );
                    self.out.live.session(session, after_us);
                }
            }
            Event::Link(LinkChange::Up) => self.out.live.link_up(Instant::now()),
            Event::Link(LinkChange::Silent(d)) => self.out.live.link_down(Instant::now(), d),
            Event::Tails { tails, .. } => {
                // Dropped when the stage is behind: the tails repeat every heartbeat.
                let _ = self
                    .out
                    .streams
                    .try_send(crate::pipeline::messages::ToStreams::Tails(tails));
            }
            Event::Head { key, head } => {
                debug!(path = %head.path, size = head.size, object = %key, "incoming");
                if head.kind == ObjectKind::Records {
                    if let Err(e) = check_channel(&head.path) {
                        self.fail(key, LossReason::NotRecords(e));
                        return;
                    }
                    if head.size > MAX_BATCH_LEN as u64 {
                        self.fail(
                            key,
                            LossReason::NotRecords(BatchError::Size(head.size as usize)),
                        );
                        return;
                    }
                    self.batches.insert(key);
                }
                let (reservation, reserved) = self.out.reserved.take(head.size);
                self.names
                    .insert(key, (head.path.clone(), head.size, reservation));
                if let Some(free) = self.out.share.free_bytes() {
                    let needed = reserved
                        .saturating_add(head.size)
                        .saturating_add(self.min_free);
                    if free < needed {
                        let reason = LossReason::DiskSpace {
                            free,
                            size: head.size,
                            reserved,
                            min_free: self.min_free,
                        };
                        self.fail(key, reason);
                    }
                }
            }
            Event::Content { key, offset, data } => {
                self.hand_to_writer(ToWriter::Data { key, offset, data });
            }
            Event::Repair { key, repair } => self.queue_repair(key, repair),
            Event::Complete {
                key,
                head,
                digest,
                precedence,
                crossing,
            } => {
                self.batches.remove(&key);
                // The reservation goes on with the object, to its outcome.
                let reservation = self.names.remove(&key).map(|(_, _, r)| r);
                let (now, wall) = (Instant::now(), SystemTime::now());
                let at = |t: Instant| wall - now.saturating_duration_since(t);
                self.hand_to_writer(ToWriter::Complete(Completed {
                    key,
                    head,
                    digest,
                    precedence,
                    evidence: Evidence {
                        first_datagram: at(crossing.first_datagram),
                        last_datagram: at(crossing.last_datagram),
                        repaired: crossing.repaired,
                    },
                    reservation,
                }));
            }
            Event::Abandoned {
                key,
                path,
                size,
                reason,
                sender_heard,
            } => {
                let named = self.unname(key);
                self.hand_to_writer(ToWriter::Discard { key });
                if self.batches.remove(&key) {
                    // A lost record batch is marked where its records would have been, from
                    // the sequence numbers around it: not a file lost.
                    debug!(object = %key, ?reason, "record batch lost");
                    return;
                }
                let named = match (named, path) {
                    (Some((p, s)), _) => Some((p, Some(s))),
                    (None, p) => p.map(|p| (p, size)),
                };
                match named {
                    Some(named) if sender_heard => {
                        self.record_loss(key, Some(named), LossReason::Abandoned(reason));
                    }
                    // Never a heartbeat from this session: anyone can forge shards in numbers,
                    // so its losses are counted in aggregate, name or not.
                    Some((first_name, _)) => {
                        let reason = LossReason::NeverHeard { reason, first_name };
                        self.add_unnamed(key.session, key.object, key.object, reason.to_string())
                    }
                    None => self.record_loss(key, None, LossReason::Abandoned(reason)),
                }
            }
            Event::Missing {
                session,
                first,
                last,
            } => self.add_unnamed(session, first, last, LossReason::NothingArrived.to_string()),
        }
    }
}

/// Repairs sorted by object and place, in batches of at most [`Rows::MAX_BLOCKS`] blocks and a
/// write unit of parity, like any message in the writer's queue (whose length is counted in
/// write units).
fn repair_batches(mut held: Vec<(ObjectKey, Repair)>) -> Vec<(ObjectKey, Vec<Repair>)> {
    held.sort_by_key(|(key, r)| (key.session, key.object, r.offset));
    let mut batches: Vec<(ObjectKey, Vec<Repair>)> = Vec::new();
    let mut bytes = 0;
    for (key, repair) in held {
        let n = repair.parity.capacity();
        match batches.last_mut() {
            Some((k, b))
                if *k == key
                    && b.len() < Rows::MAX_BLOCKS
                    && bytes + n <= crate::pipeline::WRITE_UNIT =>
            {
                b.push(repair);
                bytes += n;
            }
            _ => {
                batches.push((key, vec![repair]));
                bytes = n;
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_held_go_out_sorted_by_object_and_place_in_bounded_batches() {
        let repair = |offset: u64, parity: usize| Repair {
            offset,
            step: 1 << 20,
            content_len: 1 << 30,
            shard_len: 1400,
            data_shards: 64,
            parity_shards: 22,
            present: [0; 4],
            parity: vec![0; parity * 1400],
            held: vec![64; parity],
        };
        let (a, b) = (
            ObjectKey {
                session: 1,
                object: 7,
            },
            ObjectKey {
                session: 1,
                object: 3,
            },
        );
        // Two waves of one object, out of order, and one repair of an earlier object.
        let mut held: Vec<(ObjectKey, Repair)> =
            (0..40u64).rev().map(|i| (a, repair(i * 1400, 1))).collect();
        held.push((b, repair(0, 1)));
        // A block that lost many shards fills a write unit with another.
        held.push((a, repair(100 * 1400, 90)));
        let batches = repair_batches(held);
        let shape: Vec<(u64, Vec<u64>)> = batches
            .iter()
            .map(|(k, r)| (k.object, r.iter().map(|r| r.offset / 1400).collect()))
            .collect();
        assert_eq!(
            shape,
            [
                (3, vec![0]),
                (7, (0..32).collect()),
                (7, (32..40).collect()),
                (7, vec![100]),
            ]
        );
        for (_, r) in &batches {
            assert!(
                r.iter().map(|r| r.parity.capacity()).sum::<usize>() <= crate::pipeline::WRITE_UNIT
            );
        }
    }

    #[test]
    fn overload_is_said_after_a_second_then_every_ten() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_millis(s * 100);
        let mut o = Overload::default();
        assert_eq!(o.tick(at(0), 0, 0), None);
        assert_eq!(o.tick(at(5), 500, 10), None, "too early to measure a rate");
        let (n, rate) = o.tick(at(10), 1000, 20).expect("first line after a second");
        assert_eq!(n, 20);
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
        for i in 11..110 {
            assert_eq!(
                o.tick(at(i), 1000 + i, 20 + i),
                None,
                "repeated within ten seconds"
            );
        }
        assert!(o.tick(at(110), 2000, 200).is_some());
        // Ten quiet seconds end the episode; the next drop is said after a second again.
        assert_eq!(o.tick(at(210), 3000, 200), None);
        assert!(o.tick(at(220), 3100, 201).is_some());
    }
}
