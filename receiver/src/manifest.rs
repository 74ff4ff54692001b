//! The manifest: one JSON line per outcome, for vendors and for monitoring.
//!
//! Each record is written with a single `write` on a file opened for appending, so lines from the
//! receive loop and the publishers never interleave and a reader never sees half a record. Records
//! are only written while the filesystem keeps half of `--min-free` free, so that a flood of
//! outcomes cannot fill the disk; what is not written is counted and logged.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use checkvalve_common::meta::{DIGEST_LEN, Head};
use checkvalve_formats::live::{RecentFile, RecentLoss, Tally};
pub use checkvalve_formats::manifest::{ChainEnd, line_hash};
use checkvalve_formats::manifest::{Detail, Record, Status, hex};
use tracing::{debug, error, warn};

use crate::ratelimit::Limiter;

/// The longest record read back at start (a record is far shorter: paths are at most 4 KiB).
const MAX_LINE: u64 = 64 << 10;

/// What became of a file that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Published.
    Delivered,
    /// The share already held this content under this path.
    Repeat,
    /// Newer content for the path was already published.
    Superseded,
}

/// How a published object crossed, for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// Arrival of its first datagram.
    pub first_datagram: SystemTime,
    /// Arrival of the datagram that completed it.
    pub last_datagram: SystemTime,
    /// Data shards rebuilt from parity.
    pub repaired: u64,
}

/// Object keys of recent records: a second outcome for one object (two threads deciding about it
/// at once) is refused here, whatever the race.
#[derive(Default)]
struct Recent {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

/// Objects remembered to refuse a second record.
const RECENT_KEYS: usize = 65_536;
/// Bytes of the newest manifest file read at start for the objects it already delivered.
const RECENT_TAIL: u64 = 16 << 20;

impl Recent {
    fn insert(&mut self, key: &str) -> bool {
        if !self.keys.insert(key.to_owned()) {
            return false;
        }
        self.order.push_back(key.to_owned());
        while self.order.len() > RECENT_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    /// The objects the newest records of `file` delivered (or found delivered already): a
    /// restarted receiver can rebuild such an object again from the shards that follow the ones
    /// its last run used, and must not record it twice. Losses are not remembered: an object a
    /// stop cut short and the next run completes is recorded delivered after its loss.
    fn from_tail(file: &mut File) -> io::Result<Recent> {
        let len = file.metadata()?.len();
        let from = len.saturating_sub(RECENT_TAIL);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        // From the first whole line on, unless the read started at the beginning.
        let start = if from == 0 {
            0
        } else {
            tail.iter()
                .position(|b| *b == b'\n')
                .map_or(tail.len(), |i| i + 1)
        };
        let mut recent = Recent::default();
        for line in tail[start..].split(|b| *b == b'\n') {
            if let Some(r) = Record::parse(line)
                && matches!(
                    r.status,
                    Status::Delivered | Status::Repeat | Status::Superseded
                )
                && let Some(key) = r.object.as_deref().filter(|o| o.contains('-'))
            {
                recent.insert(key);
            }
        }
        Ok(recent)
    }
}

/// Recent outcomes kept for the live state.
const RECENT_OUTCOMES: usize = 20;

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == RECENT_OUTCOMES {
        q.pop_front();
    }
    q.push_back(item);
}

/// Adds `record` to the tally.
fn count(t: &mut Tally, record: Record) {
    match record.status {
        Status::Delivered => {
            t.delivered += 1;
            t.delivered_bytes += record.size.unwrap_or(0);
            t.repaired += record.repaired.unwrap_or(0);
            push_bounded(
                &mut t.recent_files,
                RecentFile {
                    time: record.time,
                    path: record.path.unwrap_or_default(),
                    size: record.size.unwrap_or(0),
                },
            );
        }
        Status::Repeat => t.repeats += 1,
        Status::Removed => t.removed += 1,
        Status::Lost => {
            t.lost += record.objects;
            push_bounded(
                &mut t.recent_losses,
                RecentLoss {
                    time: record.time,
                    what: record.path.or(record.object).unwrap_or_default(),
                    objects: record.objects,
                    reason: record.reason.unwrap_or_default(),
                },
            );
        }
        _ => {}
    }
}

/// The tally of every record in the manifest files of `dir`, read line by line (memory stays
/// bounded whatever their size); lines that are not records are skipped (`verify-manifest`
/// reports them).
fn tally_of(dir: &Path) -> io::Result<Tally> {
    let mut t = Tally::default();
    for file in files(dir)? {
        let mut reader = io::BufReader::new(File::open(&file)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if io::BufRead::read_until(&mut reader, b'\n', &mut line)? == 0 {
                break;
            }
            if let Some(r) = Record::parse(line.strip_suffix(b"\n").unwrap_or(&line)) {
                count(&mut t, r);
            }
        }
    }
    Ok(t)
}

struct Inner {
    tally: Tally,
    dir: PathBuf,
    /// UTC day of the open file.
    day: String,
    file: File,
    end: ChainEnd,
    limiter: Limiter,
    recent: Recent,
    /// Records were written since the last sync.
    unsynced: bool,
}

/// Append-only, hash-chained record of outcomes and link events, one file per UTC day.
pub struct Manifest {
    inner: Mutex<Inner>,
    min_free: u64,
    dropped: AtomicU64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The manifest files of `dir`, oldest first.
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

/// The last whole line of `file` and the length up to its end; cuts off a torn tail (a record a
/// crash interrupted), returning its length.
fn last_line(file: &mut File) -> io::Result<(Option<Vec<u8>>, u64)> {
    let len = file.metadata()?.len();
    let from = len.saturating_sub(MAX_LINE);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let Some(end) = tail.iter().rposition(|b| *b == b'\n') else {
        if len > 0 && from == 0 {
            file.set_len(0)?;
        }
        return Ok((None, len));
    };
    let torn = tail.len() as u64 - end as u64 - 1;
    if torn > 0 {
        file.set_len(len - torn)?;
    }
    let start = tail[..end]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    Ok((Some(tail[start..end].to_vec()), torn))
}

impl Manifest {
    /// Opens the manifest folder `dir` (created if needed) and continues its chain; records stop
    /// while the filesystem has less than `min_free / 2` bytes free.
    pub fn open(dir: &Path, min_free: u64) -> io::Result<Manifest> {
        fs::create_dir_all(dir)?;
        let mut end = ChainEnd::genesis();
        let mut torn = 0;
        let mut recent = Recent::default();
        if let Some(last) = files(dir)?.pop() {
            let mut f = OpenOptions::new().read(true).write(true).open(&last)?;
            let (line, cut) = last_line(&mut f)?;
            torn = cut;
            recent = Recent::from_tail(&mut f)?;
            if let Some(line) = line {
                let seq = Record::parse(&line)
                    .map(|r| r.seq)
                    .ok_or_else(|| {
                        io::Error::other(format!(
                            "the last record of {} is not a manifest record: the chain cannot be continued (run verify-manifest)",
                            last.display()
                        ))
                    })?;
                end = ChainEnd {
                    seq,
                    hash: line_hash(&line),
                };
            }
        }
        let tally = tally_of(dir)?;
        let day = rfc3339(SystemTime::now())[..10].to_owned();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{day}.jsonl")))?;
        let m = Manifest {
            inner: Mutex::new(Inner {
                tally,
                dir: dir.to_owned(),
                day,
                file,
                end,
                limiter: Limiter::new(Duration::from_secs(60), 1),
                recent,
                unsynced: false,
            }),
            min_free,
            dropped: AtomicU64::new(0),
        };
        if torn > 0 {
            warn!(
                bytes = torn,
                "the manifest's last record was cut by a crash: removed, and recorded"
            );
            m.event(
                Status::Torn,
                None,
                format!("a record cut by a crash ({torn} bytes) was removed at start"),
                None,
            );
        }
        Ok(m)
    }

    /// Checks, at start, that the chain still reaches `expected` (the end the last run wrote in
    /// the live state); if its newest records were removed or changed, records a `chain_break`
    /// naming the gap (so that `verify-manifest` keeps failing) and returns true.
    pub fn check_end(&self, expected: &ChainEnd) -> bool {
        let found = self.end();
        let broken = expected.seq > found.seq
            || (expected.seq == found.seq && expected.seq > 0 && expected.hash != found.hash);
        if !broken {
            return false;
        }
        let what = if expected.seq == found.seq {
            format!("record {} was changed", found.seq)
        } else if found.seq + 1 == expected.seq {
            format!("record {} is missing", expected.seq)
        } else {
            format!("records {} to {} are missing", found.seq + 1, expected.seq)
        };
        error!(
            expected_seq = expected.seq,
            found_seq = found.seq,
            "the manifest's newest records were removed or changed since the last run: {what}"
        );
        self.event(
            Status::ChainBreak,
            None,
            format!(
                "the last run wrote up to record {} (hash {}); at start the manifest ends at record {}: {what}",
                expected.seq, expected.hash, found.seq
            ),
            Some(Detail::Break {
                expected_seq: expected.seq,
                found_seq: found.seq,
            }),
        );
        true
    }

    /// Records not written for lack of space or because of an error.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// What was recorded since start.
    pub fn tally(&self) -> Tally {
        self.lock().tally.clone()
    }

    /// The last record written: its number and hash.
    pub fn end(&self) -> ChainEnd {
        self.lock().end.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Syncs what was written to disk.
    pub fn sync(&self) {
        let mut inner = self.lock();
        if let Err(e) = inner.file.sync_data() {
            error!("cannot sync the manifest: {e}");
        }
        inner.unsynced = false;
    }

    /// Syncs what was written since the last sync, if anything, without holding the lock
    /// meanwhile: the receive loop and the publishers write on. Called with each update of the
    /// live state (a chore, about every second), so that no writer of a record waits on the disk.
    pub fn sync_written(&self) {
        let file = {
            let mut inner = self.lock();
            if !std::mem::replace(&mut inner.unsynced, false) {
                return;
            }
            inner.file.try_clone()
        };
        if let Err(e) = file.and_then(|f| f.sync_data()) {
            error!("cannot sync the manifest: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        status: Status,
        object: Option<&str>,
        objects: u64,
        file: (Option<&str>, Option<u64>, Option<String>),
        evidence: Option<&Evidence>,
        reason: Option<String>,
        detail: Option<Detail>,
    ) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Aggregate and event records name a session, not an object.
        if let Some(key) = object.filter(|o| o.contains('-'))
            && !inner.recent.insert(key)
        {
            debug!(object = key, "second outcome for one object not recorded");
            return;
        }
        let now = SystemTime::now();
        let time = rfc3339(now);
        if time[..10] != inner.day {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(inner.dir.join(format!("{}.jsonl", &time[..10])))
            {
                Ok(f) => {
                    let _ = inner.file.sync_data();
                    inner.file = f;
                    inner.day = time[..10].to_owned();
                }
                Err(e) => error!(
                    "cannot open the manifest file of a new day (records go on in the previous one): {e}"
                ),
            }
        }
        let record = Record {
            seq: inner.end.seq + 1,
            time,
            status,
            path: file.0.map(str::to_owned),
            size: file.1,
            sha256: file.2,
            object: object.map(str::to_owned),
            objects,
            first_datagram: evidence.map(|e| rfc3339(e.first_datagram)),
            last_datagram: evidence.map(|e| rfc3339(e.last_datagram)),
            repaired: evidence.map(|e| e.repaired),
            reason,
            detail,
            prev: inner.end.hash.clone(),
        };
        let mut line = match serde_json::to_vec(&record) {
            Ok(l) => l,
            Err(e) => return error!("cannot encode manifest record: {e}"),
        };
        let hash = line_hash(&line);
        line.push(b'\n');
        let free = nix::sys::statvfs::fstatvfs(inner.file.as_fd())
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(u64::MAX);
        let result = if free < (self.min_free / 2).saturating_add(line.len() as u64) {
            Err(io::Error::other(format!(
                "only {free} bytes free, below half of --min-free"
            )))
        } else {
            inner.file.write_all(&line)
        };
        match result {
            Ok(()) => {
                inner.end = ChainEnd {
                    seq: record.seq,
                    hash,
                };
                count(&mut inner.tally, record);
                inner.unsynced = true;
            }
            Err(e) => {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = inner.limiter.allow() {
                    error!(
                        dropped_total = total,
                        suppressed, "manifest record not written: {e}"
                    );
                }
            }
        }
    }

    /// Records a link or session event (`status` names it), with its figures.
    pub fn event(
        &self,
        status: Status,
        session: Option<&str>,
        reason: String,
        detail: Option<Detail>,
    ) {
        self.write(
            status,
            session,
            0,
            (None, None, None),
            None,
            Some(reason),
            detail,
        );
    }

    /// Records a published file removed from the share by retention.
    pub fn removed(&self, path: &str, size: u64, reason: String) {
        self.write(
            Status::Removed,
            None,
            0,
            (Some(path), Some(size), None),
            None,
            Some(reason),
            None,
        );
    }

    /// Records a verified file: published, a repeat of what the share holds, or superseded.
    pub fn verified(
        &self,
        outcome: Verified,
        object: &str,
        head: &Head,
        digest: &[u8; DIGEST_LEN],
        evidence: &Evidence,
    ) {
        let (status, reason) = match outcome {
            Verified::Delivered => (Status::Delivered, None),
            Verified::Repeat => (
                Status::Repeat,
                Some("the share already holds this content under this path"),
            ),
            Verified::Superseded => (
                Status::Superseded,
                Some("newer content for this path was already published"),
            ),
        };
        self.write(
            status,
            Some(object),
            1,
            (Some(&head.path), Some(head.size), Some(hex(digest))),
            Some(evidence),
            reason.map(str::to_owned),
            None,
        );
    }

    /// Records `objects` objects (one, or an aggregate) that will not be delivered.
    pub fn lost(
        &self,
        object: &str,
        objects: u64,
        path: Option<&str>,
        size: Option<u64>,
        reason: String,
    ) {
        self.write(
            Status::Lost,
            Some(object),
            objects,
            (path, size, None),
            None,
            Some(reason),
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stop_below_half_of_min_free_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Manifest::open(dir.path(), 0).unwrap();
        ok.lost("1-1", 1, Some("a"), None, "x".into());
        assert_eq!(ok.dropped(), 0);
        drop(ok);
        // No filesystem has an exabyte free: every record is refused and counted.
        let full = Manifest::open(dir.path(), u64::MAX).unwrap();
        for i in 0..3 {
            full.lost(&format!("1-{}", i + 2), 1, Some("b"), None, "x".into());
        }
        full.lost("1-2", 1, Some("b"), None, "again".into());
        assert_eq!(full.dropped(), 3);
        assert_eq!(full.end().seq, 1);
        let text = std::fs::read_to_string(files(dir.path()).unwrap().pop().unwrap()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn a_restarted_manifest_counts_what_earlier_runs_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::open(dir.path(), 0).unwrap();
        m.lost("1-1", 1, Some("a.csv"), Some(10), "x".into());
        m.lost("1-2", 1, Some("b.csv"), None, "y".into());
        drop(m);
        let again = Manifest::open(dir.path(), 0).unwrap();
        let t = again.tally();
        assert_eq!(t.lost, 2);
        assert_eq!(t.recent_losses.len(), 2);
        assert_eq!(t.recent_losses[1].what, "b.csv");
    }

    #[test]
    fn a_restarted_manifest_records_no_second_delivery_of_an_object_but_a_delivery_after_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let head = Head {
            path: "a.txt".into(),
            size: 1,
            mtime_secs: 0,
            mtime_nanos: 0,
            kind: checkvalve_common::meta::ObjectKind::File,
        };
        let evidence = Evidence {
            first_datagram: SystemTime::now(),
            last_datagram: SystemTime::now(),
            repaired: 0,
        };
        let m = Manifest::open(dir.path(), 0).unwrap();
        m.verified(
            Verified::Delivered,
            "7-1",
            &head,
            &[0; DIGEST_LEN],
            &evidence,
        );
        m.lost("7-2", 1, Some("b.txt"), None, "receiver stopped".into());
        drop(m);
        let m = Manifest::open(dir.path(), 0).unwrap();
        // The rest of object 1's datagrams rebuild it again after the restart: not recorded.
        m.verified(Verified::Repeat, "7-1", &head, &[0; DIGEST_LEN], &evidence);
        // Object 2, cut short by the stop, is completed by the next run: recorded.
        m.verified(
            Verified::Delivered,
            "7-2",
            &head,
            &[0; DIGEST_LEN],
            &evidence,
        );
        assert_eq!(m.end().seq, 3);
    }
}
