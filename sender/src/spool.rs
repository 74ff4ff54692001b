//! The spool folders as a queue: which files are ready to send, and what happens to them once sent.
//!
//! A file stays in its spool until it has been sent whole; then its channel's policy applies. A
//! file is ready when it is complete: its modification time is older than the settle time (a file
//! written elsewhere and renamed in), or it has not changed for the settle time since first seen.
//! Watching (notify) only triggers scans early; periodic full scans make sure no file is missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::config::{AfterSend, Channel, glob};
use crate::walk::Entry;

/// Size and modification time: a file whose pair changed is a different file.
pub type Fingerprint = (u64, SystemTime);

/// A file handed to the producer.
#[derive(Debug, Clone)]
struct Queued {
    channel: usize,
    path: PathBuf,
    name: String,
    /// Which copy this is, from 1 (a channel may send each file several times).
    copy: u32,
    fingerprint: Fingerprint,
    size: u64,
    since: Instant,
}

/// The spools of every channel.
pub struct Spools {
    channels: Vec<Channel>,
    ignore: Vec<String>,
    settle: Duration,
    /// Files seen but not yet ready: their fingerprint and since when it has not changed.
    seen: HashMap<PathBuf, (Fingerprint, Instant)>,
    /// Files handed to the producer and not yet sent whole, by id.
    queued: BTreeMap<u64, Queued>,
    queued_paths: HashSet<PathBuf>,
    /// Ids encoded whole, by object number, waiting for their last datagram to be sent.
    encoded: BTreeMap<u64, u64>,
    /// Files kept after sending (policy `keep`), not to be sent again while unchanged.
    kept: HashSet<(PathBuf, Fingerprint)>,
    /// Further copies waiting for their time, soonest first.
    later: Vec<(Instant, Queued)>,
    repeat_spacing: Duration,
    next_id: u64,
}

impl Spools {
    /// Spools of `channels`, creating missing spool folders; further copies of a file (a channel's
    /// `repeat`) go `repeat_spacing` apart, so that one outage does not take them all.
    pub fn new(
        channels: Vec<Channel>,
        ignore: Vec<String>,
        settle: Duration,
        repeat_spacing: Duration,
    ) -> Self {
        for c in &channels {
            if let Err(e) = fs::create_dir_all(&c.spool) {
                warn!(channel = %c.name, spool = %c.spool.display(), "cannot create the spool: {e}");
            }
        }
        Spools {
            channels,
            ignore,
            settle,
            seen: HashMap::new(),
            queued: BTreeMap::new(),
            queued_paths: HashSet::new(),
            encoded: BTreeMap::new(),
            kept: HashSet::new(),
            later: Vec::new(),
            repeat_spacing,
            next_id: 0,
        }
    }

    /// The spool folders.
    pub fn folders(&self) -> impl Iterator<Item = &Path> {
        self.channels.iter().map(|c| c.spool.as_path())
    }

    /// True while some file seen is waiting to settle (worth scanning again soon).
    pub fn settling(&self) -> bool {
        !self.seen.is_empty()
    }

    /// Files not yet sent whole.
    pub fn backlog(&self) -> usize {
        self.queued.len()
    }

    /// Scans every spool (higher priority first) and returns the files now ready, with their ids.
    pub fn scan(&mut self, now: Instant) -> Vec<(u64, Entry)> {
        let wall = SystemTime::now();
        let mut ready = Vec::new();
        let mut present = HashSet::new();
        for (ci, c) in self.channels.iter().enumerate() {
            let mut files = Vec::new();
            list(&c.spool, &c.spool, &self.ignore, &mut files);
            files.sort();
            for (path, rel) in files {
                present.insert(path.clone());
                if self.queued_paths.contains(&path) {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                let Ok(mtime) = meta.modified() else { continue };
                let fp = (meta.len(), mtime);
                if self.kept.contains(&(path.clone(), fp)) {
                    continue;
                }
                let old_enough = wall
                    .duration_since(mtime)
                    .is_ok_and(|age| age >= self.settle);
                let stable_since = match self.seen.get(&path) {
                    Some(&(seen_fp, since)) if seen_fp == fp => since,
                    _ => {
                        self.seen.insert(path.clone(), (fp, now));
                        now
                    }
                };
                if !old_enough && now.saturating_duration_since(stable_since) < self.settle {
                    continue;
                }
                self.seen.remove(&path);
                let name = if c.name.is_empty() {
                    rel
                } else {
                    format!("{}/{rel}", c.name)
                };
                if let Err(e) = checkvalve_common::meta::check_path(&name) {
                    warn!(channel = %c.name, path = %path.display(), "not sent: {e}");
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.queued_paths.insert(path.clone());
                self.queued.insert(
                    id,
                    Queued {
                        channel: ci,
                        path: path.clone(),
                        name: name.clone(),
                        copy: 1,
                        fingerprint: fp,
                        size: fp.0,
                        since: now,
                    },
                );
                ready.push((id, Entry { source: path, name }));
            }
        }
        self.seen.retain(|p, _| present.contains(p));
        ready
    }

    /// Further copies whose time has come, with their new ids.
    pub fn due(&mut self, now: Instant) -> Vec<(u64, Entry)> {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.later = waiting;
        ready
            .into_iter()
            .map(|(_, mut q)| {
                let id = self.next_id;
                self.next_id += 1;
                q.since = now;
                let entry = Entry {
                    source: q.path.clone(),
                    name: q.name.clone(),
                };
                self.queued.insert(id, q);
                (id, entry)
            })
            .collect()
    }

    /// The producer encoded file `id` whole as `object`.
    pub fn encoded(&mut self, object: u64, id: u64) {
        self.encoded.insert(object, id);
    }

    /// Every object below `complete_end` has been sent whole: apply the channels' policies.
    pub fn sent(&mut self, complete_end: u64, now: Instant) {
        let done: Vec<u64> = self
            .encoded
            .range(..complete_end)
            .map(|(o, _)| *o)
            .collect();
        for object in done {
            let Some(id) = self.encoded.remove(&object) else {
                continue;
            };
            let Some(q) = self.queued.remove(&id) else {
                continue;
            };
            let c = &self.channels[q.channel];
            info!(
                channel = %c.name,
                path = %q.path.display(),
                bytes = q.size,
                copy = q.copy,
                copies = c.repeat,
                seconds = format_args!("{:.2}", now.saturating_duration_since(q.since).as_secs_f64()),
                "sent"
            );
            if q.copy < c.repeat {
                let next = Queued {
                    copy: q.copy + 1,
                    ..q
                };
                self.later.push((now + self.repeat_spacing, next));
                continue;
            }
            self.queued_paths.remove(&q.path);
            let unchanged = fs::symlink_metadata(&q.path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
                == Some(q.fingerprint);
            match c.after_send {
                AfterSend::Delete if unchanged => {
                    if let Err(e) = fs::remove_file(&q.path) {
                        warn!(path = %q.path.display(), "sent but cannot be deleted: {e}");
                    } else {
                        remove_empty_parents(&q.path, &c.spool);
                    }
                }
                AfterSend::Delete => {
                    warn!(path = %q.path.display(), "changed after it was read: kept, and sent again");
                }
                AfterSend::Keep => {
                    self.kept.insert((q.path, q.fingerprint));
                }
            }
        }
    }

    /// Files given to the producer that it did not encode whole (refused, unreadable, changing):
    /// back to the scan, so that they are tried again once stable.
    pub fn release_unencoded(&mut self, idle_for: Duration, now: Instant) {
        let encoded: HashSet<u64> = self.encoded.values().copied().collect();
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

    fn channel(dir: &Path, name: &str, after_send: AfterSend) -> Channel {
        Channel {
            name: name.into(),
            spool: dir.join(name),
            priority: 0,
            repeat: 1,
            after_send,
        }
    }

    #[test]
    fn files_are_taken_when_settled_and_deleted_once_sent() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), "diag", AfterSend::Delete);
        let spool = ch.spool.clone();
        let mut s = Spools::new(
            vec![ch],
            vec![".*".into(), "*.tmp".into()],
            Duration::from_secs(2),
            Duration::ZERO,
        );
        fs::create_dir_all(spool.join("sub")).unwrap();
        fs::write(spool.join("sub/a.csv"), b"a").unwrap();
        fs::write(spool.join("b.tmp"), b"b").unwrap();
        let t0 = Instant::now();
        assert!(s.scan(t0).is_empty(), "a fresh file must settle first");
        let ready = s.scan(t0 + Duration::from_secs(3));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.name, "diag/sub/a.csv");
        assert!(
            s.scan(t0 + Duration::from_secs(4)).is_empty(),
            "queued once"
        );
        s.encoded(0, ready[0].0);
        s.sent(0, t0);
        assert!(spool.join("sub/a.csv").exists(), "not sent whole yet");
        s.sent(1, t0);
        assert!(
            !spool.join("sub").exists(),
            "sent file and its empty folder removed"
        );
        assert!(spool.join("b.tmp").exists());
    }

    #[test]
    fn kept_files_are_not_sent_again_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), "logs", AfterSend::Keep);
        let spool = ch.spool.clone();
        let mut s = Spools::new(vec![ch], vec![], Duration::ZERO, Duration::ZERO);
        fs::write(spool.join("a.log"), b"one").unwrap();
        let t0 = Instant::now();
        let ready = s.scan(t0);
        assert_eq!(ready.len(), 1);
        s.encoded(0, ready[0].0);
        s.sent(1, t0);
        assert!(spool.join("a.log").exists());
        assert!(s.scan(t0).is_empty());
        fs::write(spool.join("a.log"), b"one two").unwrap();
        assert_eq!(s.scan(t0).len(), 1, "changed: sent again");
    }
}

#[cfg(test)]
mod repeat_tests {
    use super::*;

    #[test]
    fn a_repeated_channel_sends_each_file_n_times_spaced_then_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let ch = Channel {
            name: "r".into(),
            spool: dir.path().join("r"),
            priority: 0,
            repeat: 3,
            after_send: AfterSend::Delete,
        };
        let spool = ch.spool.clone();
        let mut s = Spools::new(vec![ch], vec![], Duration::ZERO, Duration::from_secs(5));
        fs::write(spool.join("a"), b"a").unwrap();
        let t0 = Instant::now();
        let mut object = 0;
        let mut copies = 0;
        let mut ready = s.scan(t0);
        for round in 0..3u64 {
            assert_eq!(ready.len(), 1, "round {round}");
            copies += 1;
            s.encoded(object, ready[0].0);
            object += 1;
            let t = t0 + Duration::from_secs(5 * round);
            s.sent(object, t);
            assert!(s.scan(t).is_empty(), "not taken again while copies remain");
            assert!(s.due(t + Duration::from_secs(4)).is_empty(), "spaced");
            ready = s.due(t + Duration::from_secs(5));
        }
        assert_eq!(copies, 3);
        assert!(ready.is_empty());
        assert!(!spool.join("a").exists(), "deleted after the last copy");
    }
}
