//! The sender as a service: watches the channels' spool folders and sends what appears in them,
//! until SIGTERM or SIGINT; SIGHUP reloads the configuration file.
//!
//! Three threads: the spool thread (looks at what filesystem events name, rescans periodically,
//! queues ready files by channel, applies the after-send policy once a file's last datagram has
//! gone out, writes the status file), the producer (takes files from the queue by priority, reads,
//! hashes and encodes them, sealing a group whenever it runs out of files), and the transmitter
//! (paced output, heartbeats and announcements, on this thread).
//!
//! ```text
//! spool ──Queue (by channel)──▶ produce ──batches (QUEUED_BATCHES = 2 groups)──▶ transmit ──▶ link
//!   ▲                               └──names (QUEUED_NAMES = 4,096; full: a name not announced)──┘
//!   └─ announce (object ids, SHA-256) / done (objects sent whole), unbounded, one per file ──┘
//!
//! with record streams (`[[stream]]`, `--stream`), also:
//! [inputs' process] ─STATE/streams/*.seg─▶ follow ──StreamOut (QUEUED_STREAM_BATCHES = 16)──▶ transmit
//!                                            ▲                  (sent before any file data)     │
//!                                            └────────── Sent (positions sent, shared) ─────────┘
//! inputs-watch: stops the sender (exit 1) when the inputs' process ends
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use checkvalve_common::interleave::InterleaveParams;
use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::kept::Kept;
use crate::queue::Queue;
use crate::spool::{Rules, Spools};
use crate::transmit::Shared;
use crate::{QUEUED_BATCHES, QUEUED_NAMES, produce, resolve, transmit};
use checkvalve_formats::sender::Status;

/// How often the spool thread looks again at files settling, and checks for news.
const TICK: Duration = Duration::from_millis(250);
/// A file handed to the producer but not encoded whole within this long is scanned again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often the status file is written.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Runs the service until a stop signal; exits 0 after finishing the batch in flight. `file` is
/// the configuration file SIGHUP reloads, if any, with the flags that override it.
pub fn run(
    cfg: Config,
    file: Option<(PathBuf, crate::config::Overrides)>,
    interleave: InterleaveParams,
    no_seccomp: bool,
) -> Result<ExitCode> {
    let to = resolve(&cfg.to)?;
    let key = cfg.key.as_deref().map(crate::keys::load).transpose()?;
    if key.is_none() {
        if !cfg.allow_unauthenticated {
            anyhow::bail!(crate::keys::NO_KEY);
        }
        tracing::warn!("{}", crate::keys::UNAUTHENTICATED);
    }
    if let Some(state) = &cfg.state {
        std::fs::create_dir_all(state)
            .with_context(|| format!("cannot create the state folder {}", state.display()))?;
    }
    let who = crate::keys::identity(cfg.state.as_deref(), key.as_ref(), cfg.encrypt);
    let session = who.session;
    let stop = checkvalve_host::signals::stop_flag().context("cannot install signal handler")?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("cannot install the SIGHUP handler")?;
    if let Some(state) = &cfg.state {
        std::fs::create_dir_all(state)
            .with_context(|| format!("cannot create the state folder {}", state.display()))?;
    } else {
        warn!(
            "no state folder: kept files are sent again after a restart, and `status` has no counters"
        );
    }
    info!(
        session = format_args!("{session:016x}"),
        %to,
        rate = cfg.rate,
        fec = format_args!("{}:{}", cfg.fec.data_shards, cfg.fec.parity_shards),
        channels = cfg.channels.len(),
        key = key.as_ref().map_or_else(|| "none (datagrams not authenticated)".to_string(), |k| format!("id {}", k.id)),
        encrypt = cfg.encrypt,
        "watching"
    );
    log_channels(&cfg);
    // The inputs' process first: it must hold nothing of this one (no link socket yet) and be
    // started while starting a program is still allowed.
    let inputs = start_inputs(&cfg)?;
    let mut tx = transmit::Transmitter::new(to, cfg.rate, &who, cfg.heartbeat)?;
    crate::one_direction(no_seccomp);
    // Before any thread starts, so that all of them are confined: exactly the spools (read, and
    // deleted or moved from), the sent folders and the state folder, never a folder above them;
    // and the configuration's folder, read only, so that SIGHUP can read a configuration replaced
    // atomically (a new file, which a rule for the old one would not cover).
    let confined = Confined::of(&cfg);
    let readable: Vec<PathBuf> = file
        .iter()
        .filter_map(|(f, _)| std::path::absolute(f).ok()?.parent().map(PathBuf::from))
        .collect();
    crate::confine_files(&confined.0, &readable);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    tx.report_completion(done_tx);
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES);
    let (names_tx, names_rx) = std::sync::mpsc::sync_channel(QUEUED_NAMES);
    tx.announce(
        names_rx,
        checkvalve_common::wire::SHARD_OVERHEAD + usize::from(cfg.fec.shard_len),
    );
    let positions = crate::follow::Sent::default();
    let streams = match (&cfg.state, cfg.streams.is_empty()) {
        (Some(state), false) => {
            let stream_session = checkvalve_common::stream::stream_session(session);
            let stream_who = crate::keys::Identity {
                session: stream_session,
                sealer: key
                    .as_ref()
                    .map(|k| checkvalve_common::auth::Sealer::new(k, stream_session, cfg.encrypt)),
            };
            info!(
                session = format_args!("{:016x}", stream_who.session),
                streams = cfg.streams.len(),
                "record streams: a session of their own"
            );
            let (stream_tx, stream_rx) = std::sync::mpsc::sync_channel(QUEUED_STREAM_BATCHES);
            let sent = Arc::clone(&positions);
            tx.carry_streams(
                &stream_who,
                stream_rx,
                Arc::clone(&sent),
                checkvalve_common::wire::SHARD_OVERHEAD + usize::from(cfg.fec.shard_len),
            );
            let (state, names, fec, stop) = (
                state.clone(),
                cfg.streams.iter().map(|s| s.name.clone()).collect(),
                cfg.fec,
                Arc::clone(&stop),
            );
            let limits = checkvalve_common::stream::batcher::BatchLimits {
                flush: cfg.stream_flush,
                ..Default::default()
            };
            Some(
                std::thread::Builder::new()
                    .name("follow".into())
                    .spawn(move || {
                        crate::follow::run(
                            &state, names, stream_who, fec, limits, stream_tx, sent, stop,
                        )
                    })
                    .context("cannot start the stream follower thread")?,
            )
        }
        _ => None,
    };
    let inputs_ended = Arc::new(AtomicBool::new(false));
    if let Some(child) = inputs {
        let (stop, ended) = (Arc::clone(&stop), Arc::clone(&inputs_ended));
        std::thread::Builder::new()
            .name("inputs-watch".into())
            .spawn(move || watch_inputs(child, &stop, &ended))
            .context("cannot start the inputs' watcher")?;
    }
    let queue = Arc::new(Queue::default());
    let (announce_tx, announce_rx) = std::sync::mpsc::channel();
    let producer = {
        let stop = Arc::clone(&stop);
        let fec = cfg.fec;
        let queue = Arc::clone(&queue);
        let spares = tx.spares();
        std::thread::Builder::new()
            .name("produce".into())
            .spawn(move || {
                produce::produce_stream(
                    who,
                    queue.as_ref(),
                    &announce_tx,
                    fec,
                    interleave,
                    produce::Outlet {
                        tx: batch_tx,
                        spares,
                        names: names_tx,
                    },
                    stop,
                )
            })
            .context("cannot start the producer thread")?
    };
    let finished = Arc::new(AtomicBool::new(false));
    let spooler = {
        let thread = SpoolThread {
            spools: Spools::new(
                rules(&cfg),
                Kept::open(cfg.state.as_deref()),
                Arc::clone(&queue),
            ),
            status: Status {
                pid: std::process::id(),
                session: format!("{session:016x}"),
                started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                updated: String::new(),
                updated_unix: 0,
                stopped: false,
                sent: Default::default(),
                datagrams: 0,
                send_errors: 0,
                channels: Vec::new(),
                streams: Vec::new(),
                last_problem: None,
            },
            evidence: crate::evidence::Evidence::new(cfg.state.as_deref(), session),
            cfg,
            file,
            confined,
            shared: tx.shared(),
            positions,
            announce: announce_rx,
            done: done_rx,
            status_failing: false,
        };
        let finished = Arc::clone(&finished);
        std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || thread.run(&finished, &reload))
            .context("cannot start the spool thread")?
    };
    tx.run(&batch_rx, &stop);
    tx.finish(1);
    finished.store(true, Ordering::Release);
    queue.close();
    spooler
        .join()
        .map_err(|_| anyhow!("spool thread panicked"))?;
    drop(batch_rx);
    let _ = producer.join();
    if let Some(f) = streams {
        let _ = f.join();
    }
    let sent = tx.sent();
    info!(
        datagrams = sent.datagrams,
        send_errors = sent.errors,
        "stopped"
    );
    if inputs_ended.load(Ordering::Relaxed) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Batches of records queued for the transmitter at most (each at most a few hundred KiB): a
/// full queue holds up the follower, and the spool on disk absorbs the wait.
const QUEUED_STREAM_BATCHES: usize = 16;

/// Starts the stream inputs' process (this program's `inputs` command) when there are inputs.
fn start_inputs(cfg: &Config) -> Result<Option<std::process::Child>> {
    let Some(state) = &cfg.state else {
        return Ok(None);
    };
    if cfg.streams.is_empty() {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("cannot find this program to start its inputs")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("inputs").arg("--state").arg(state);
    cmd.arg("--log-format")
        .arg(checkvalve_host::logging::format().as_str());
    for s in &cfg.streams {
        cmd.arg("--stream").arg(format!("{}={}", s.name, s.input));
    }
    let child = cmd
        .spawn()
        .context("cannot start the stream inputs' process")?;
    info!(pid = child.id(), "stream inputs' process started");
    Ok(Some(child))
}

/// Stops the sender if its inputs' process ends: systemd (or the operator) restarts both.
fn watch_inputs(mut child: std::process::Child, stop: &AtomicBool, ended: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match child.try_wait() {
            Ok(Some(status)) => {
                error!(%status, "the stream inputs' process ended: stopping (a restart starts both again)");
                ended.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                warn!("cannot watch the stream inputs' process: {e}");
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The folders the service may write in (Landlock): fixed at start.
struct Confined(Vec<PathBuf>);

impl Confined {
    /// The state folder, every spool and every sent folder of `cfg` (created if missing).
    fn of(cfg: &Config) -> Confined {
        let mut dirs: Vec<PathBuf> = cfg.state.iter().cloned().collect();
        for c in &cfg.channels {
            let _ = std::fs::create_dir_all(&c.spool);
            dirs.push(c.spool.clone());
            if let crate::config::AfterSend::Move(sent) = &c.after_send {
                let _ = std::fs::create_dir_all(&sent.dir);
                dirs.push(sent.dir.clone());
            }
        }
        dirs.retain(|p| p.exists());
        Confined(dirs)
    }

    /// The first folder of `channel` this run may not use, if any.
    fn outside<'a>(&self, channel: &'a crate::config::Channel) -> Option<&'a Path> {
        let sent = match &channel.after_send {
            crate::config::AfterSend::Move(sent) => Some(sent.dir.as_path()),
            _ => None,
        };
        std::iter::once(channel.spool.as_path())
            .chain(sent)
            .find(|dir| !self.0.iter().any(|c| dir.starts_with(c)))
    }
}

fn rules(cfg: &Config) -> Rules {
    Rules {
        channels: cfg.channels.clone(),
        ignore: cfg.ignore.clone(),
        names: cfg.names,
        settle: cfg.settle,
        repeat_spacing: cfg.repeat_spacing,
    }
}

fn log_channels(cfg: &Config) {
    for c in &cfg.channels {
        info!(channel = %c.name, spool = %c.spool.display(), priority = c.priority, repeat = c.repeat, after_send = %c.after_send, "channel");
    }
}

/// The spool thread's state.
struct SpoolThread {
    spools: Spools,
    status: Status,
    cfg: Config,
    /// The record of what was sent, in the state folder.
    evidence: crate::evidence::Evidence,
    /// The configuration file SIGHUP reloads, and the flags that override it.
    file: Option<(PathBuf, crate::config::Overrides)>,
    /// The folders this run may write in.
    confined: Confined,
    shared: Arc<Shared>,
    /// The record streams' positions.
    positions: crate::follow::Sent,
    announce: Receiver<(u64, u64, [u8; 32])>,
    done: Receiver<u64>,
    status_failing: bool,
}

impl SpoolThread {
    fn run(mut self, finished: &AtomicBool, reload: &AtomicBool) {
        if let Some(state) = &self.cfg.state
            && let Some(previous) = Status::read(state)
        {
            // Counters continue across restarts; so does the last problem until a new one.
            *self.spools.counters() = previous.sent;
            self.status.last_problem = previous.last_problem;
        }
        let (ev_tx, ev_rx) = std::sync::mpsc::channel();
        let mut watcher = match notify::recommended_watcher(move |ev| {
            let _ = ev_tx.send(ev);
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("cannot watch the spools (periodic scans only): {e}");
                None
            }
        };
        let mut watched = HashSet::new();
        self.watch(watcher.as_mut(), &mut watched);
        let mut last_scan: Option<Instant> = None;
        let mut last_status: Option<Instant> = None;
        while !finished.load(Ordering::Acquire) {
            let (paths, overflow) = wait_for_events(&ev_rx);
            let now = Instant::now();
            if reload.swap(false, Ordering::AcqRel) && self.reload() {
                self.watch(watcher.as_mut(), &mut watched);
                last_scan = None;
            }
            if overflow
                || last_scan.is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.rescan)
            {
                last_scan = Some(now);
                self.spools.scan(now);
            } else {
                self.spools.look_at(&paths, now);
                if self.spools.settling() {
                    self.spools.recheck(now);
                }
            }
            self.apply(now);
            self.spools.due(now);
            self.spools.release_unencoded(RETRY_AFTER, now);
            if last_status.is_none_or(|t| now.saturating_duration_since(t) >= STATUS_EVERY) {
                last_status = Some(now);
                self.write_status(false);
            }
        }
        self.apply(Instant::now());
        if self.spools.backlog() > 0 {
            info!(
                files = self.spools.backlog(),
                "stopping: files not sent whole stay in their spools"
            );
        }
        self.write_status(true);
    }

    /// Watches every spool folder not yet watched, and stops watching folders no longer spools.
    fn watch(
        &self,
        watcher: Option<&mut notify::RecommendedWatcher>,
        watched: &mut HashSet<PathBuf>,
    ) {
        let Some(w) = watcher else { return };
        let folders: HashSet<PathBuf> = self.spools.folders().into_iter().collect();
        for gone in watched.difference(&folders) {
            let _ = w.unwatch(gone);
        }
        watched.retain(|d| folders.contains(d));
        for dir in folders {
            if watched.contains(&dir) {
                continue;
            }
            match w.watch(&dir, RecursiveMode::Recursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => {
                    warn!(spool = %dir.display(), "cannot watch (periodic scans only): {e}");
                }
            }
        }
    }

    /// Reloads the configuration file; true if the new one is in force.
    fn reload(&mut self) -> bool {
        let Some(file) = &self.file else {
            warn!("SIGHUP: nothing to reload (started without --config)");
            return false;
        };
        let (file, overrides) = file;
        let new = match Config::load(file) {
            Ok(mut c) => {
                overrides.apply(&mut c, false);
                c
            }
            Err(e) => {
                error!("SIGHUP: the configuration is refused, the running one stays in force: {e}");
                return false;
            }
        };
        let fixed = [
            ("to", new.to != self.cfg.to),
            ("fec or shard_size", new.fec != self.cfg.fec),
            ("heartbeat", new.heartbeat != self.cfg.heartbeat),
            ("state", new.state != self.cfg.state),
        ];
        for (what, changed) in fixed {
            if changed {
                warn!("SIGHUP: a change of {what} takes effect at the next restart only");
            }
        }
        let mut applied = new.clone();
        // A folder outside the confinement cannot be reached until the next start.
        applied.channels.retain(|c| match self.confined.outside(c) {
            None => true,
            Some(dir) => {
                warn!(channel = %c.name, folder = %dir.display(), "SIGHUP: this channel's folder is not one this run may use: the channel takes effect at the next restart only");
                false
            }
        });
        applied.to = self.cfg.to.clone();
        applied.fec = self.cfg.fec;
        applied.heartbeat = self.cfg.heartbeat;
        applied.state = self.cfg.state.clone();
        self.shared.rate_bps.store(applied.rate, Ordering::Relaxed);
        self.spools.reconfigure(rules(&applied));
        info!(file = %file.display(), channels = applied.channels.len(), rate = applied.rate, "configuration reloaded");
        log_channels(&applied);
        self.cfg = applied;
        true
    }

    /// Takes the producer's and the transmitter's news to the spools.
    fn apply(&mut self, now: Instant) {
        while let Ok((object, id, digest)) = self.announce.try_recv() {
            self.spools.encoded(object, id, digest);
        }
        if let Some(end) = self.done.try_iter().max() {
            for sent in self.spools.sent(end, now) {
                self.evidence.record(&sent);
            }
        }
    }

    /// Each stream input and where its records stand.
    fn stream_status(&self) -> Vec<checkvalve_formats::sender::StreamStatus> {
        let positions = self.positions.lock().map(|p| p.clone()).unwrap_or_default();
        self.cfg
            .streams
            .iter()
            .map(|s| {
                let p = positions.get(&s.name).copied().unwrap_or_default();
                checkvalve_formats::sender::StreamStatus {
                    name: s.name.clone(),
                    input: s.input.to_string(),
                    spooled: p.read,
                    sent: p.sent,
                    last_record: p.last_us.map(|us| {
                        humantime::format_rfc3339_micros(
                            std::time::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64),
                        )
                        .to_string()
                    }),
                }
            })
            .collect()
    }

    fn write_status(&mut self, stopped: bool) {
        let Some(state) = self.cfg.state.clone() else {
            return;
        };
        self.status.stopped = stopped;
        self.status.sent = self.spools.counters().clone();
        self.status.datagrams = self.shared.datagrams.load(Ordering::Relaxed);
        self.status.send_errors = self.shared.errors.load(Ordering::Relaxed);
        self.status.channels = self.spools.backlog_by_channel(SystemTime::now());
        self.status.streams = self.stream_status();
        match crate::status::write(&mut self.status, &state) {
            Ok(()) => self.status_failing = false,
            Err(e) if !self.status_failing => {
                self.status_failing = true;
                warn!(state = %state.display(), "cannot write the status file (said once until it works again): {e}");
            }
            Err(_) => {}
        }
        *self.spools.counters() = self.status.sent.clone();
    }
}

/// Waits up to a tick for filesystem events; returns the paths they name, and true if the
/// watcher lost events (a full rescan is due).
fn wait_for_events(rx: &Receiver<notify::Result<notify::Event>>) -> (Vec<PathBuf>, bool) {
    let mut paths = Vec::new();
    let mut overflow = false;
    let mut take = |ev: notify::Result<notify::Event>| match ev {
        Ok(ev) => {
            overflow |= ev.need_rescan();
            paths.extend(ev.paths);
        }
        Err(_) => overflow = true,
    };
    match rx.recv_timeout(TICK) {
        Ok(ev) => {
            take(ev);
            while let Ok(ev) = rx.try_recv() {
                take(ev);
            }
        }
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
    }
    paths.sort();
    paths.dedup();
    (paths, overflow)
}
