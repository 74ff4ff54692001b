//! The spool folders as a queue: which files are ready to send, and what happens to them once sent.
//!
//! A file stays in its spool until it has been sent whole; then its channel's policy applies. A
//! file is ready when it is complete: its modification time is older than the settle time (a file
//! written elsewhere and renamed in), or it has not changed for the settle time since first seen.
//! Filesystem events make the spool thread look at the paths they name at once; periodic full
//! scans make sure no file is missed. Ready files go into the [`Queue`], by channel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use crate::archive;
use crate::config::{AfterSend, Channel, glob};
use crate::kept::Kept;
use crate::queue::Queue;
use crate::walk::Entry;
use checkvalve_formats::sender::{ChannelStatus, Counters};

pub use crate::kept::Fingerprint;

/// A file handed to the producer.
#[derive(Debug, Clone)]
struct Queued {
    channel: Arc<Channel>,
    path: PathBuf,
    name: String,
    /// Which copy this is, from 1 (a channel may send each file several times).
    copy: u32,
    fingerprint: Fingerprint,
    /// When it was queued (for the "sent" line and the status).
    since: Instant,
}

/// A copy of a file sent whole (its last datagram gone out).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Its channel.
    pub channel: String,
    /// Where it was read from.
    pub source: PathBuf,
    /// Its path as sent.
    pub path: String,
    /// Content bytes.
    pub size: u64,
    /// Its object number in the session.
    pub object: u64,
    /// SHA-256 of its content.
    pub digest: [u8; 32],
    /// Which copy, from 1.
    pub copy: u32,
    /// Copies the channel sends.
    pub copies: u32,
    /// From queued to its last datagram, seconds.
    pub seconds: f64,
}

/// The spools of every channel.
pub struct Spools {
    channels: Vec<Arc<Channel>>,
    ignore: Vec<String>,
    settle: Duration,
    repeat_spacing: Duration,
    names: checkvalve_common::meta::NamePolicy,
    /// Files seen but not yet ready: their channel, fingerprint and since when it has not changed.
    seen: HashMap<PathBuf, (Arc<Channel>, Fingerprint, Instant)>,
    /// Files handed to the queue and not yet sent whole, by id.
    queued: BTreeMap<u64, Queued>,
    queued_paths: HashSet<PathBuf>,
    /// Ids encoded whole, with their SHA-256, by object number, waiting for their last datagram
    /// to be sent.
    encoded: BTreeMap<u64, (u64, [u8; 32])>,
    /// Files kept after sending (policy `keep`), not to be sent again while unchanged.
    kept: Kept,
    /// Further copies waiting for their time, soonest first.
    later: Vec<(Instant, Queued)>,
    queue: Arc<Queue>,
    counters: Counters,
    next_id: u64,
}

/// The settings of [`Spools`] a configuration reload may change.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The channels, highest priority first.
    pub channels: Vec<Channel>,
    /// Names never taken.
    pub ignore: Vec<String>,
    /// A file written in place is taken once unchanged for this long.
    pub settle: Duration,
    /// Time between copies of a repeated channel's file.
    pub repeat_spacing: Duration,
    /// Which names are sent.
    pub names: checkvalve_common::meta::NamePolicy,
}

impl Spools {
    /// Spools following `rules`, creating missing spool folders, feeding `queue`; `kept` is the
    /// record of files already sent and kept.
    pub fn new(rules: Rules, kept: Kept, queue: Arc<Queue>) -> Self {
        let mut s = Spools {
            channels: Vec::new(),
            ignore: Vec::new(),
            settle: Duration::ZERO,
            repeat_spacing: Duration::ZERO,
            names: checkvalve_common::meta::NamePolicy::default(),
            seen: HashMap::new(),
            queued: BTreeMap::new(),
            queued_paths: HashSet::new(),
            encoded: BTreeMap::new(),
            kept,
            later: Vec::new(),
            queue,
            counters: Counters::default(),
            next_id: 0,
        };
        s.reconfigure(rules);
        s
    }

    /// Applies new rules: files already queued finish under the channel they were queued for.
    pub fn reconfigure(&mut self, rules: Rules) {
        for c in &rules.channels {
            if let Err(e) = fs::create_dir_all(&c.spool) {
                warn!(channel = %c.name, spool = %c.spool.display(), "cannot create the spool: {e}");
            }
        }
        self.channels = rules.channels.into_iter().map(Arc::new).collect();
        self.ignore = rules.ignore;
        self.settle = rules.settle;
        self.repeat_spacing = rules.repeat_spacing;
        self.names = rules.names;
        self.seen.clear();
    }

    /// The spool folders.
    pub fn folders(&self) -> Vec<PathBuf> {
        self.channels.iter().map(|c| c.spool.clone()).collect()
    }

    /// True while some file seen is waiting to settle (worth looking at again soon).
    pub fn settling(&self) -> bool {
        !self.seen.is_empty()
    }

    /// Files not yet sent whole.
    pub fn backlog(&self) -> usize {
        self.queued.len()
    }

    /// What was sent, for the status file.
    pub fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Files queued and not yet sent whole per channel, the oldest by modification time.
    pub fn backlog_by_channel(&self, wall: SystemTime) -> Vec<ChannelStatus> {
        self.channels
            .iter()
            .map(|c| {
                let mut out = ChannelStatus {
                    name: c.name.clone(),
                    queued: 0,
                    queued_bytes: 0,
                    oldest: None,
                    oldest_age_s: None,
                };
                let mut oldest: Option<SystemTime> = None;
                let mine = self
                    .queued
                    .values()
                    .chain(self.later.iter().map(|(_, q)| q))
                    .filter(|q| q.channel.name == c.name);
                for q in mine {
                    out.queued += 1;
                    out.queued_bytes += q.fingerprint.0;
                    if oldest.is_none_or(|t| q.fingerprint.1 < t) {
                        oldest = Some(q.fingerprint.1);
                        out.oldest = Some(q.path.clone());
                        out.oldest_age_s = Some(
                            wall.duration_since(q.fingerprint.1)
                                .map_or(0, |d| d.as_secs()),
                        );
                    }
                }
                out
            })
            .collect()
    }

    /// Scans every spool whole, queueing what is ready; returns the files queued.
    pub fn scan(&mut self, now: Instant) -> usize {
        let wall = SystemTime::now();
        let mut present = HashSet::new();
        let mut queued = 0;
        for c in self.channels.clone() {
            let mut files = Vec::new();
            list(&c.spool, &c.spool, &self.ignore, &mut files);
            files.sort();
            for (path, rel) in files {
                present.insert(path.clone());
                queued += usize::from(self.consider(&c, path, rel, now, wall));
            }
            if let AfterSend::Move(sent) = &c.after_send {
                archive::retain(&c.name, sent, wall);
            }
        }
        self.seen.retain(|p, _| present.contains(p));
        self.kept.forget_missing(&present);
        queued
    }

    /// Looks at the paths filesystem events named (files, or folders renamed in); returns the
    /// files queued.
    pub fn look_at(&mut self, paths: &[PathBuf], now: Instant) -> usize {
        let wall = SystemTime::now();
        let mut queued = 0;
        for path in paths {
            let Some(c) = self
                .channels
                .iter()
                .find(|c| path.starts_with(&c.spool) && path != &c.spool)
                .cloned()
            else {
                continue;
            };
            let Ok(meta) = fs::symlink_metadata(path) else {
                continue;
            };
            let mut files = Vec::new();
            if meta.is_dir() {
                if ignored(&c.spool, path, &self.ignore) {
                    continue;
                }
                list(&c.spool, path, &self.ignore, &mut files);
            } else if meta.is_file()
                && !ignored(&c.spool, path, &self.ignore)
                && let Some(rel) = relative(&c.spool, path)
            {
                files.push((path.clone(), rel));
            }
            for (path, rel) in files {
                queued += usize::from(self.consider(&c, path, rel, now, wall));
            }
        }
        queued
    }

    /// Looks again at the files waiting to settle; returns the files queued.
    pub fn recheck(&mut self, now: Instant) -> usize {
        let wall = SystemTime::now();
        let waiting: Vec<(PathBuf, Arc<Channel>)> = self
            .seen
            .iter()
            .map(|(p, (c, _, _))| (p.clone(), Arc::clone(c)))
            .collect();
        let mut queued = 0;
        for (path, c) in waiting {
            match relative(&c.spool, &path) {
                Some(rel) if path.is_file() => {
                    queued += usize::from(self.consider(&c, path, rel, now, wall));
                }
                _ => {
                    self.seen.remove(&path);
                }
            }
        }
        queued
    }

    /// Queues `path` if it is ready and not queued or kept already.
    fn consider(
        &mut self,
        c: &Arc<Channel>,
        path: PathBuf,
        rel: String,
        now: Instant,
        wall: SystemTime,
    ) -> bool {
        if self.queued_paths.contains(&path) {
            return false;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            self.seen.remove(&path);
            return false;
        };
        let Ok(mtime) = meta.modified() else {
            return false;
        };
        let fp = (meta.len(), mtime);
        if self.kept.contains(&path, fp) {
            return false;
        }
        let old_enough = wall
            .duration_since(mtime)
            .is_ok_and(|age| age >= self.settle);
        let stable_since = match self.seen.get(&path) {
            Some((_, seen_fp, since)) if *seen_fp == fp => *since,
            _ => {
                self.seen.insert(path.clone(), (Arc::clone(c), fp, now));
                now
            }
        };
        if !old_enough && now.saturating_duration_since(stable_since) < self.settle {
            return false;
        }
        self.seen.remove(&path);
        let name = if c.name.is_empty() {
            rel
        } else {
            format!("{}/{rel}", c.name)
        };
        if let Err(e) = checkvalve_common::meta::check_path_as(&name, self.names) {
            warn!(channel = %c.name, path = %path.display(), "not sent: {e}");
            return false;
        }
        self.queued_paths.insert(path.clone());
        self.enqueue(
            Queued {
                channel: Arc::clone(c),
                path,
                name,
                copy: 1,
                fingerprint: fp,
                since: now,
            },
            now,
        );
        true
    }

    fn enqueue(&mut self, q: Queued, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let entry = Entry {
            source: q.path.clone(),
            name: q.name.clone(),
        };
        self.queue
            .push(&q.channel.name, q.channel.priority, now, (id, entry));
        self.queued.insert(id, q);
    }

    /// Queues the further copies whose time has come.
    pub fn due(&mut self, now: Instant) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.later = waiting;
        for (_, q) in ready {
            self.enqueue(q, now);
        }
    }

    /// The producer encoded file `id` whole as `object`, its content hashing to `digest`.
    pub fn encoded(&mut self, object: u64, id: u64, digest: [u8; 32]) {
        self.encoded.insert(object, (id, digest));
    }

    /// Every object below `complete_end` has been sent whole: apply the channels' policies;
    /// returns what was sent, for the evidence (the caller logs and records it).
    pub fn sent(&mut self, complete_end: u64, now: Instant) -> Vec<Sent> {
        let done: Vec<u64> = self
            .encoded
            .range(..complete_end)
            .map(|(o, _)| *o)
            .collect();
        let mut out = Vec::new();
        for object in done {
            let Some((id, digest)) = self.encoded.remove(&object) else {
                continue;
            };
            let Some(q) = self.queued.remove(&id) else {
                continue;
            };
            let c = Arc::clone(&q.channel);
            out.push(Sent {
                channel: c.name.clone(),
                source: q.path.clone(),
                path: q.name.clone(),
                size: q.fingerprint.0,
                object,
                digest,
                copy: q.copy,
                copies: c.repeat,
                seconds: now.saturating_duration_since(q.since).as_secs_f64(),
            });
            if q.copy < c.repeat {
                let next = Queued {
                    copy: q.copy + 1,
                    ..q
                };
                self.later.push((now + self.repeat_spacing, next));
                continue;
            }
            self.counters
                .file_sent(&crate::archive::day(SystemTime::now()), q.fingerprint.0);
            self.queued_paths.remove(&q.path);
            let unchanged = fs::symlink_metadata(&q.path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
                == Some(q.fingerprint);
            if !unchanged {
                warn!(path = %q.path.display(), "changed after it was read: left in the spool, and sent again");
                continue;
            }
            match &c.after_send {
                AfterSend::Delete => {
                    if let Err(e) = fs::remove_file(&q.path) {
                        warn!(path = %q.path.display(), "sent but cannot be deleted: {e}");
                    } else {
                        remove_empty_parents(&q.path, &c.spool);
                    }
                }
                AfterSend::Move(sent) => {
                    let rel = relative(&c.spool, &q.path).unwrap_or_default();
                    match archive::put(sent, &q.path, &rel, SystemTime::now()) {
                        Ok(_) => remove_empty_parents(&q.path, &c.spool),
                        Err(e) => {
                            warn!(path = %q.path.display(), sent = %sent.dir.display(), "sent but cannot be moved (kept in the spool, not sent again until it changes): {e}");
                            self.kept.insert(q.path, q.fingerprint);
                        }
                    }
                }
                AfterSend::Keep => {
                    self.kept.insert(q.path, q.fingerprint);
                }
            }
        }
        out
    }

    /// Files given to the producer that it did not encode whole (refused, unreadable, changing):
    /// back to the scan, so that they are tried again once stable.
    pub fn release_unencoded(&mut self, idle_for: Duration, now: Instant) {
        let encoded: HashSet<u64> = self.encoded.values().map(|(id, _)| *id).collect();
        let stale: Vec<u64> = self
            .queued
            .iter()
            .filter(|(id, q)| {
                !encoded.contains(id) && now.saturating_duration_since(q.since) >= idle_for
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(q) = self.queued.remove(&id) {
                self.queued_paths.remove(&q.path);
            }
        }
    }
}

/// `path` relative to `root`, `/`-separated.
fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?.to_str()?;
    Some(rel.replace(std::path::MAIN_SEPARATOR, "/"))
}

/// True if a component of `path` below `root` matches an ignore pattern.
fn ignored(root: &Path, path: &Path, ignore: &[String]) -> bool {
    path.strip_prefix(root).is_ok_and(|rel| {
        rel.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_none_or(|n| ignore.iter().any(|p| glob(p, n)))
        })
    })
}

/// Regular files under `dir`, with their `/`-separated paths relative to `root`; names matching
/// an `ignore` pattern, symbolic links and special files are left out.
fn list(root: &Path, dir: &Path, ignore: &[String], out: &mut Vec<(PathBuf, String)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if ignore.iter().any(|p| glob(p, name)) {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            list(root, &path, ignore, out);
        } else if ft.is_file()
            && let Ok(rel) = path.strip_prefix(root)
            && let Some(rel) = rel.to_str()
        {
            out.push((path.clone(), rel.replace(std::path::MAIN_SEPARATOR, "/")));
        }
    }
}

/// Removes the folders left empty between `file` and the spool root.
fn remove_empty_parents(file: &Path, root: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Feed, Next};

    fn channel(dir: &Path, name: &str, after_send: AfterSend, repeat: u32) -> Channel {
        Channel {
            name: name.into(),
            spool: dir.join(name),
            priority: 0,
            repeat,
            after_send,
        }
    }

    fn spools(ch: Channel, ignore: &[&str], settle: u64, spacing: u64) -> (Spools, Arc<Queue>) {
        let queue = Arc::new(Queue::default());
        let rules = Rules {
            channels: vec![ch],
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            settle: Duration::from_secs(settle),
            repeat_spacing: Duration::from_secs(spacing),
            names: checkvalve_common::meta::NamePolicy::Portable,
        };
        (
            Spools::new(rules, Kept::default(), Arc::clone(&queue)),
            queue,
        )
    }

    fn taken(q: &Queue) -> Vec<(u64, Entry)> {
        let mut out = Vec::new();
        while let Next::Item(x) = q.next(Duration::ZERO) {
            out.push(x);
        }
        out
    }

    #[test]
    fn files_are_taken_when_settled_and_deleted_once_sent() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), "diag", AfterSend::Delete, 1);
        let spool = ch.spool.clone();
        let (mut s, q) = spools(ch, &[".*", "*.tmp"], 2, 0);
        fs::create_dir_all(spool.join("sub")).unwrap();
        fs::write(spool.join("sub/a.csv"), b"a").unwrap();
        fs::write(spool.join("b.tmp"), b"b").unwrap();
        let t0 = Instant::now();
        assert_eq!(s.scan(t0), 0, "a fresh file must settle first");
        assert!(s.settling());
        assert_eq!(s.recheck(t0 + Duration::from_secs(3)), 1);
        let ready = taken(&q);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.name, "diag/sub/a.csv");
        assert_eq!(s.scan(t0 + Duration::from_secs(4)), 0, "queued once");
        s.encoded(0, ready[0].0, [0; 32]);
        let _ = s.sent(0, t0);
        assert!(spool.join("sub/a.csv").exists(), "not sent whole yet");
        let _ = s.sent(1, t0);
        assert!(
            !spool.join("sub").exists(),
            "sent file and its empty folder removed"
        );
        assert!(spool.join("b.tmp").exists());
        assert_eq!(s.counters().files_total, 1);
    }

    #[test]
    fn events_name_files_and_folders_renamed_in() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), "d", AfterSend::Delete, 1);
        let spool = ch.spool.clone();
        let (mut s, q) = spools(ch, &[".*"], 0, 0);
        fs::create_dir_all(dir.path().join("staging/x/y")).unwrap();
        fs::write(dir.path().join("staging/x/y/f"), b"f").unwrap();
        fs::write(dir.path().join("staging/x/.hidden"), b"h").unwrap();
        fs::rename(dir.path().join("staging/x"), spool.join("x")).unwrap();
        let t0 = Instant::now();
        assert_eq!(s.look_at(&[spool.join("x")], t0), 1);
        assert_eq!(taken(&q)[0].1.name, "d/x/y/f");
        assert_eq!(
            s.look_at(&[spool.join("x/.hidden"), dir.path().join("elsewhere")], t0),
            0
        );
    }

    #[test]
    fn kept_files_are_not_sent_again_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), "logs", AfterSend::Keep, 1);
        let spool = ch.spool.clone();
        let (mut s, q) = spools(ch, &[], 0, 0);
        fs::write(spool.join("a.log"), b"one").unwrap();
        let t0 = Instant::now();
        assert_eq!(s.scan(t0), 1);
        let ready = taken(&q);
        s.encoded(0, ready[0].0, [0; 32]);
        let _ = s.sent(1, t0);
        assert!(spool.join("a.log").exists());
        assert_eq!(s.scan(t0), 0);
        fs::write(spool.join("a.log"), b"one two").unwrap();
        assert_eq!(s.scan(t0), 1, "changed: sent again");
    }

    #[test]
    fn moved_files_leave_the_spool_for_the_sent_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sent = crate::config::SentFolder {
            dir: dir.path().join("sent"),
            max_age: None,
            max_bytes: None,
        };
        let ch = channel(dir.path(), "m", AfterSend::Move(sent.clone()), 1);
        let spool = ch.spool.clone();
        let (mut s, q) = spools(ch, &[], 0, 0);
        fs::create_dir_all(spool.join("a")).unwrap();
        fs::write(spool.join("a/f"), b"f").unwrap();
        s.scan(Instant::now());
        s.encoded(0, taken(&q)[0].0, [0; 32]);
        let _ = s.sent(1, Instant::now());
        assert!(!spool.join("a").exists());
        let moved = sent
            .dir
            .join(crate::archive::day(SystemTime::now()))
            .join("a/f");
        assert_eq!(fs::read(moved).unwrap(), b"f");
    }

    #[test]
    fn a_repeated_channel_sends_each_file_n_times_spaced_then_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), "r", AfterSend::Delete, 3);
        let spool = ch.spool.clone();
        let (mut s, q) = spools(ch, &[], 0, 5);
        fs::write(spool.join("a"), b"a").unwrap();
        let t0 = Instant::now();
        let mut object = 0;
        let mut copies = 0;
        s.scan(t0);
        let mut ready = taken(&q);
        for round in 0..3u64 {
            assert_eq!(ready.len(), 1, "round {round}");
            copies += 1;
            s.encoded(object, ready[0].0, [0; 32]);
            object += 1;
            let t = t0 + Duration::from_secs(5 * round);
            let _ = s.sent(object, t);
            assert_eq!(s.scan(t), 0, "not taken again while copies remain");
            s.due(t + Duration::from_secs(4));
            assert!(taken(&q).is_empty(), "spaced");
            s.due(t + Duration::from_secs(5));
            ready = taken(&q);
        }
        assert_eq!(copies, 3);
        assert!(ready.is_empty());
        assert!(!spool.join("a").exists(), "deleted after the last copy");
    }
}
