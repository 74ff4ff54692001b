//! Link state as the receiver sees it (up, down, sender restarts, measured loss), turned into log
//! lines and manifest records, and the live state file (`STATE/live.json`) written atomically
//! every second for `checkvalve-status` and `report`. Nothing here sends anything.
//!
//! The file is written, and the manifest synced, as chores ([`crate::chores`]): the receive loop
//! only hands over the state.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use checkvalve_common::assembler::SessionStats;
use checkvalve_formats::live::{FILE, Link, Sample, SessionView, State, Tally};
use checkvalve_formats::manifest::{Detail, Status};
use tracing::{error, info, warn};

use crate::chores::Queue;
use crate::manifest::Manifest;

/// How often the live state is written.
const EVERY: Duration = Duration::from_secs(1);
/// One history sample per this long.
const SAMPLE: Duration = Duration::from_secs(10);
/// History kept: one hour.
const SAMPLES: usize = 360;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Counters of the receive loop the live state shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Datagrams received.
    pub datagrams: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// Dropped for being behind.
    pub dropped_behind: u64,
    /// Dropped by the kernel (receive buffer full).
    pub kernel_overflows: u64,
    /// Refused by authentication.
    pub refused_auth: u64,
    /// Of new sessions, refused for want of a session slot.
    pub refused_sessions: u64,
}

/// Link and session tracking, and the live state file.
pub struct Live {
    manifest: Arc<Manifest>,
    /// The state as the receive loop knows it: the manifest's figures and the history are the
    /// writer's.
    state: State,
    loss_warn: f64,
    loss_every: Duration,
    last_loss: Instant,
    /// (received, sender_sent) per session at the last loss record.
    loss_base: HashMap<u64, (u64, u64)>,
    /// The session heard last.
    last_session: Option<u64>,
    /// Last heartbeat sequence number seen per session.
    heartbeats: HashMap<u64, u64>,
    down_since: Option<Instant>,
    last_write: Option<Instant>,
    last_sample: Option<Instant>,
    chores: Queue,
    writer: Arc<Mutex<StateWriter>>,
    /// The record channels, as their stage last said.
    streams: crate::streams::Views,
}

/// What the receive loop hands over each second.
struct Update {
    /// The state but for the manifest's figures and the history.
    state: State,
    /// Datagrams received, datagrams the sessions' senders said they sent, and received of those
    /// sessions, when a history sample is due.
    sample: Option<(u64, u64, u64)>,
}

/// Writes the state file, with the manifest's figures and the history it keeps, and syncs the
/// manifest.
struct StateWriter {
    dir: PathBuf,
    /// The share, whose filesystem's free space is shown.
    share: PathBuf,
    min_free: u64,
    manifest: Arc<Manifest>,
    history: VecDeque<Sample>,
    failing: bool,
}

impl StateWriter {
    fn update(&mut self, Update { mut state, sample }: Update) {
        if state.stopped {
            self.manifest.sync();
        } else {
            self.manifest.sync_written();
        }
        state.tally = self.manifest.tally();
        state.manifest_dropped = self.manifest.dropped();
        state.disk =
            nix::sys::statvfs::statvfs(&self.share)
                .ok()
                .map(|s| checkvalve_formats::live::Disk {
                    free_bytes: s.blocks_available().saturating_mul(s.fragment_size()),
                    min_free_bytes: self.min_free,
                });
        let end = self.manifest.end();
        state.manifest_seq = end.seq;
        state.manifest_hash = end.hash;
        if let Some((datagrams, sender_sent, received)) = sample {
            if self.history.len() == SAMPLES {
                self.history.pop_front();
            }
            self.history.push_back(Sample {
                t: state.updated_unix,
                datagrams,
                bytes: state.tally.delivered_bytes,
                files: state.tally.delivered,
                lost: state.tally.lost,
                sender_sent,
                received,
                refused_auth: state.refused_auth,
            });
        }
        std::mem::swap(&mut state.history, &mut self.history);
        let tmp = self.dir.join(format!("{FILE}.new"));
        let result = serde_json::to_vec(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(FILE)));
        std::mem::swap(&mut state.history, &mut self.history);
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warn!("cannot write the live state (said once until it works again): {e}");
            }
            Err(_) => {}
        }
    }
}

impl Live {
    /// Tracks the link for a receiver on `bind` whose state folder is `dir` and share `share`
    /// (which keeps `min_free` free).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: &Path,
        share: &Path,
        min_free: u64,
        bind: String,
        manifest: Arc<Manifest>,
        loss_warn: f64,
        loss_every: Duration,
        authenticated: bool,
        key_ids: Vec<u32>,
        chores: Queue,
    ) -> Live {
        let now = SystemTime::now();
        let writer = Arc::new(Mutex::new(StateWriter {
            dir: dir.to_owned(),
            share: share.to_owned(),
            min_free,
            manifest: Arc::clone(&manifest),
            history: State::read(dir).map(|s| s.history).unwrap_or_default(),
            failing: false,
        }));
        Live {
            manifest,
            state: State {
                pid: std::process::id(),
                version: checkvalve_host::VERSION.to_owned(),
                started: rfc3339(now),
                started_unix: unix(now),
                updated: String::new(),
                updated_unix: 0,
                stopped: false,
                bind,
                authenticated,
                key_ids,
                link: Link::Unknown,
                link_since: None,
                last_heartbeat: None,
                sessions: Vec::new(),
                sender_restarts: 0,
                link_downs: 0,
                datagrams: 0,
                malformed: 0,
                dropped_behind: 0,
                kernel_overflows: 0,
                refused_auth: 0,
                refused_sessions: 0,
                tally: Tally::default(),
                manifest_dropped: 0,
                disk: None,
                manifest_seq: 0,
                manifest_hash: String::new(),
                history: VecDeque::new(),
                streams: Vec::new(),
            },
            streams: crate::streams::Views::default(),
            loss_warn,
            loss_every,
            last_loss: Instant::now(),
            loss_base: HashMap::new(),
            last_session: None,
            heartbeats: HashMap::new(),
            down_since: None,
            last_write: None,
            last_sample: None,
            chores,
            writer,
        }
    }

    /// Takes the record channels' figures from `views` (kept by their stage).
    pub fn show_streams(&mut self, views: crate::streams::Views) {
        self.streams = views;
    }

    /// Datagrams arrive again (or for the first time).
    pub fn link_up(&mut self, now: Instant) {
        let down_for = self
            .down_since
            .take()
            .map(|t| now.saturating_duration_since(t));
        self.state.link = Link::Up;
        self.state.link_since = Some(rfc3339(SystemTime::now()));
        match down_for {
            Some(d) => {
                info!(
                    down_for_s = d.as_secs(),
                    "link up: datagrams arriving again"
                );
                self.manifest.event(
                    Status::LinkUp,
                    None,
                    format!("datagrams arriving again after {} s down", d.as_secs()),
                    Some(Detail::Up {
                        down_for_s: d.as_secs_f64(),
                    }),
                );
            }
            None => {
                info!("link up: datagrams arriving");
                self.manifest
                    .event(Status::LinkUp, None, "datagrams arriving".into(), None);
            }
        }
    }

    /// Nothing arrived for `silent_for`.
    pub fn link_down(&mut self, now: Instant, silent_for: Duration) {
        self.down_since = Some(now);
        self.state.link = Link::Down;
        self.state.link_since = Some(rfc3339(SystemTime::now() - silent_for));
        self.state.link_downs += 1;
        error!(
            silent_for_s = silent_for.as_secs_f64(),
            "link down: no datagram, not even a heartbeat (the link, the diode or the sender is down)"
        );
        self.manifest.event(
            Status::LinkDown,
            None,
            format!(
                "no datagram, not even a heartbeat, for {:.1} s",
                silent_for.as_secs_f64()
            ),
            Some(Detail::Down {
                silent_for_s: silent_for.as_secs_f64(),
            }),
        );
    }

    /// A sender session was heard for the first time.
    pub fn session(&mut self, session: u64, after_us: bool) {
        let id = format!("{session:016x}");
        match self.last_session {
            Some(previous) if checkvalve_common::stream::same_sender(previous, session) => {
                info!(session = %id, files = format_args!("{previous:016x}"), "the sender's record streams and files: two sessions of one sender");
                return;
            }
            Some(previous) => {
                self.state.sender_restarts += 1;
                warn!(session = %id, previous = format_args!("{previous:016x}"), "sender restarted: new session");
                self.manifest.event(
                    Status::SenderRestart,
                    Some(&id),
                    format!("new sender session after session {previous:016x}"),
                    Some(Detail::Restart {
                        previous: format!("{previous:016x}"),
                        after_us,
                    }),
                );
            }
            None => {
                self.manifest.event(
                    Status::SessionStart,
                    Some(&id),
                    if after_us {
                        "sender session started after this receiver".into()
                    } else {
                        "sender session heard (it may have started before this receiver)".into()
                    },
                    Some(Detail::Start { after_us }),
                );
            }
        }
        self.last_session = Some(session);
    }

    /// Called every loop tick: loss records, history, and the live state file every second.
    pub fn tick(&mut self, now: Instant, sessions: &[SessionStats], counts: Counts) {
        if now.saturating_duration_since(self.last_loss) >= self.loss_every {
            self.last_loss = now;
            self.record_loss(sessions);
        }
        if self
            .last_write
            .is_some_and(|t| now.saturating_duration_since(t) < EVERY)
        {
            return;
        }
        self.last_write = Some(now);
        let wall = SystemTime::now();
        self.state.datagrams = counts.datagrams;
        self.state.malformed = counts.malformed;
        self.state.dropped_behind = counts.dropped_behind;
        self.state.refused_auth = counts.refused_auth;
        self.state.kernel_overflows = counts.kernel_overflows;
        self.state.refused_sessions = counts.refused_sessions;
        self.state.sessions = sessions
            .iter()
            .map(|s| {
                let sent = s.last_heartbeat.map(|h| h.datagrams_sent);
                SessionView {
                    session: format!("{:016x}", s.session),
                    received: s.received,
                    sender_sent: sent,
                    loss: sent
                        .filter(|n| *n > 0)
                        .map(|n| (1.0 - s.received as f64 / n as f64).max(0.0)),
                }
            })
            .collect();
        for s in sessions {
            if let Some(hb) = s.last_heartbeat
                && self.heartbeats.insert(s.session, hb.seq) != Some(hb.seq)
            {
                self.state.last_heartbeat = Some(rfc3339(wall));
            }
        }
        let sample = self
            .last_sample
            .is_none_or(|t| now.saturating_duration_since(t) >= SAMPLE)
            .then(|| {
                // Only sessions with a heartbeat: they say what they sent.
                let (sent, received) = sessions
                    .iter()
                    .filter_map(|s| Some((s.last_heartbeat?.datagrams_sent, s.received)))
                    .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
                (counts.datagrams, sent, received)
            });
        if self.write(wall, false, sample) && sample.is_some() {
            self.last_sample = Some(now);
        }
    }

    fn record_loss(&mut self, sessions: &[SessionStats]) {
        for s in sessions {
            let Some(hb) = s.last_heartbeat else { continue };
            let (r0, s0) = self
                .loss_base
                .insert(s.session, (s.received, hb.datagrams_sent))
                .unwrap_or((0, 0));
            let sent = hb.datagrams_sent.saturating_sub(s0);
            if sent == 0 {
                continue;
            }
            let received = s.received.saturating_sub(r0);
            let loss = (1.0 - received as f64 / sent as f64).max(0.0);
            let id = format!("{:016x}", s.session);
            if loss > self.loss_warn {
                warn!(session = %id, sent, received, loss_percent = checkvalve_host::logging::round(loss * 100.0, 2), "datagram loss above the warning threshold");
            } else {
                info!(session = %id, sent, received, loss_percent = checkvalve_host::logging::round(loss * 100.0, 3), "datagram loss");
            }
            self.manifest.event(
                Status::Loss,
                Some(&id),
                format!("{:.3}% of {sent} datagrams lost", loss * 100.0),
                Some(Detail::Loss {
                    sent,
                    received,
                    loss,
                }),
            );
        }
    }

    /// Records the loss measured since the last loss record (at shutdown).
    pub fn last_loss(&mut self, sessions: &[SessionStats]) {
        self.record_loss(sessions);
    }

    /// The last version, once everything in progress has been published or recorded, queued
    /// to be written after everything queued before it.
    pub fn finish(mut self) {
        self.write(SystemTime::now(), true, None);
    }

    /// Queues the state for writing (false: the chores' thread was still busy); `stopped` at
    /// the end, when it waits for room.
    fn write(&mut self, wall: SystemTime, stopped: bool, sample: Option<(u64, u64, u64)>) -> bool {
        self.state.stopped = stopped;
        self.state.streams = self.streams.lock().map(|v| v.clone()).unwrap_or_default();
        self.state.updated = rfc3339(wall);
        self.state.updated_unix = unix(wall);
        let update = Update {
            state: self.state.clone(),
            sample,
        };
        let writer = Arc::clone(&self.writer);
        let chore = move || {
            writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(update);
        };
        if stopped {
            self.chores.run(chore);
            true
        } else {
            self.chores.try_run(chore)
        }
    }
}
