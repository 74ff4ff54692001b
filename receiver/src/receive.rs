//! The receive loop: feeds datagrams to the assembler and acts on its events.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use checkvalve_common::assembler::{Assembler, Event, ObjectKey};
use checkvalve_common::link::LinkChange;
use checkvalve_common::meta::{DIGEST_LEN, Head};
use tracing::{debug, error, info, warn};

use crate::manifest::Manifest;
use crate::net::Chunk;
use crate::share::Share;

/// A complete object on its way to verification and publication.
pub struct Job {
    key: ObjectKey,
    head: Head,
    digest: [u8; DIGEST_LEN],
}

/// Verifies and publishes jobs until the channel closes. Runs on its own thread so hashing and
/// fsync never hold up reception.
pub fn finisher(share: Share, manifest: Arc<Manifest>, jobs: Receiver<Job>) {
    for job in jobs {
        let object = job.key.to_string();
        match share.publish(job.key, &job.head, &job.digest) {
            Ok(_) => {
                info!(path = %job.head.path, size = job.head.size, "delivered");
                manifest.delivered(&object, &job.head, &job.digest);
            }
            Err(e) => {
                error!(path = %job.head.path, object, "lost: not published: {e}");
                manifest.lost(
                    &object,
                    Some(&job.head.path),
                    Some(job.head.size),
                    format!("not published: {e}"),
                );
            }
        }
    }
}

/// State of the receive loop.
pub struct Receive {
    asm: Assembler,
    share: Share,
    manifest: Arc<Manifest>,
    jobs: Sender<Job>,
    files: HashMap<ObjectKey, File>,
    /// Path and size of objects whose head arrived, for naming them if they fail.
    names: HashMap<ObjectKey, (String, u64)>,
    /// Free space kept on the output filesystem; an object that would eat into it is refused.
    min_free: u64,
    stats_every: Duration,
    last_stats: Instant,
    reported_malformed: u64,
    /// Datagram count at the last statistics line: an idle receiver does not repeat itself.
    reported_datagrams: Option<u64>,
}

impl Receive {
    /// Creates the loop state.
    pub fn new(
        asm: Assembler,
        share: Share,
        manifest: Arc<Manifest>,
        jobs: Sender<Job>,
        min_free: u64,
        stats_every: Duration,
    ) -> Self {
        Receive {
            asm,
            share,
            manifest,
            jobs,
            files: HashMap::new(),
            names: HashMap::new(),
            min_free,
            stats_every,
            last_stats: Instant::now(),
            reported_malformed: 0,
            reported_datagrams: None,
        }
    }

    /// Runs until `stop`, taking chunks from `rx` and returning them through `recycle`.
    pub fn run(
        &mut self,
        rx: &Receiver<Chunk>,
        recycle: &SyncSender<Chunk>,
        stop: &AtomicBool,
        net_dropped: &AtomicU64,
    ) {
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(chunk) => {
                    let now = Instant::now();
                    for d in chunk.iter() {
                        if let Err(e) = self.asm.handle_datagram(now, d) {
                            debug!("datagram rejected: {e}");
                        }
                        self.drain_events();
                    }
                    let _ = recycle.try_send(chunk);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now - last_tick >= Duration::from_millis(100) {
                last_tick = now;
                self.asm.handle_timeout(now);
                self.drain_events();
                if now - self.last_stats >= self.stats_every {
                    self.last_stats = now;
                    self.log_stats(net_dropped.load(Ordering::Relaxed), false);
                }
            }
        }
        let open = self.asm.objects_in_progress();
        if open > 0 {
            warn!(
                objects = open,
                "stopping with objects in progress: they are not published"
            );
        }
        for key in self.files.keys() {
            self.share.discard(*key);
        }
        self.log_stats(net_dropped.load(Ordering::Relaxed), true);
    }

    fn log_stats(&mut self, net_dropped: u64, always: bool) {
        let c = self.asm.counters();
        if !always && self.reported_datagrams == Some(c.datagrams) {
            return;
        }
        self.reported_datagrams = Some(c.datagrams);
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
            dropped_behind = net_dropped,
            "stats"
        );
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.asm.poll_event() {
            self.on_event(ev);
        }
    }

    fn fail(&mut self, key: ObjectKey, what: std::fmt::Arguments<'_>) {
        let named = self.names.remove(&key);
        let path = named.as_ref().map(|(p, _)| p.as_str());
        error!(path = %path.unwrap_or("(unknown)"), object = %key, "lost: {what}");
        self.manifest.lost(
            &key.to_string(),
            path,
            named.as_ref().map(|(_, s)| *s),
            what.to_string(),
        );
        self.asm.abandon(key);
        self.files.remove(&key);
        self.share.discard(key);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::SessionStarted {
                session,
                first_object,
            } => {
                info!(
                    session = format_args!("{session:016x}"),
                    first_object, "new sender session"
                );
            }
            Event::Link(LinkChange::Up) => info!("link up: datagrams arriving"),
            Event::Link(LinkChange::Silent(d)) => {
                warn!(silent_for = ?d, "link silent: no datagram, not even a heartbeat");
            }
            Event::Head { key, head } => {
                debug!(path = %head.path, size = head.size, object = %key, "incoming");
                self.names.insert(key, (head.path.clone(), head.size));
                if let Some(free) = self.share.free_bytes()
                    && free < head.size.saturating_add(self.min_free)
                {
                    self.fail(
                        key,
                        format_args!(
                            "not enough disk space ({free} bytes free, {} needed)",
                            head.size
                        ),
                    );
                }
            }
            Event::Content { key, offset, data } => {
                let file = match self.files.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        self.share.create_temp(key).map(|f| v.insert(f))
                    }
                };
                let result = file.and_then(|f| f.write_all_at(&data, offset));
                if let Err(e) = result {
                    self.fail(key, format_args!("cannot write temporary file: {e}"));
                }
            }
            Event::Complete { key, head, digest } => {
                self.names.remove(&key);
                // Closing our handle first: the publisher reopens the file by its temporary path.
                self.files.remove(&key);
                let job = Job { key, head, digest };
                if self.jobs.send(job).is_err() {
                    error!(object = %key, "publisher stopped");
                }
            }
            Event::Abandoned { key, path, reason } => {
                let size = self.names.remove(&key).map(|(_, s)| s);
                self.files.remove(&key);
                self.share.discard(key);
                match &path {
                    Some(p) => warn!(path = %p, object = %key, "lost: {reason}"),
                    None => {
                        warn!(object = %key, "lost (name unknown, metadata not recovered): {reason}")
                    }
                }
                self.manifest
                    .lost(&key.to_string(), path.as_deref(), size, reason.to_string());
            }
            Event::Missing {
                session,
                first,
                last,
            } => {
                warn!(
                    session = format_args!("{session:016x}"),
                    first,
                    last,
                    "lost: objects {first}..={last} (names unknown): not one datagram arrived"
                );
                self.manifest.lost(
                    &format!("{session:016x}-{first}..={last}"),
                    None,
                    None,
                    "not one datagram arrived".into(),
                );
            }
        }
    }
}
