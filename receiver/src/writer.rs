//! The writer and hashing stages: the writer puts decoded content into each object's temporary
//! file and hands each written block to the hasher, which hashes content in order as it is
//! written, so that verification never reads a file back (except for content that arrived too far
//! out of order to keep), and neither disk writes nor SHA-256 hold up the receive loop. Their
//! threads and queues are made by [`crate::pipeline`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use checkvalve_common::assembler::ObjectKey;
use checkvalve_common::meta::{DIGEST_LEN, Head};
use checkvalve_common::ranges::RangeMap;
use checkvalve_common::repair::Repair;
use nix::fcntl::{FallocateFlags, fallocate};
use sha2::{Digest, Sha256};

use crate::outcome::{LossReason, Outcome, Recorder};
use crate::pipeline::messages::{Completed, PublishJob, RebuildDone, RebuildJob, ToHash, ToWriter};
use crate::publish::Publisher;
use crate::rebuild;
use crate::share::{Share, Temp};

/// One object being written.
struct Open {
    temp: Temp,
    /// A write failed: the object was recorded lost and its data is ignored.
    failed: bool,
    /// The hasher has its own handle on the file, to read back what arrived out of order.
    handed: bool,
    /// Bytes of the file allocated ahead of the content (`u64::MAX`: the filesystem refused).
    allocated: u64,
}

/// Content beyond which a file is allocated ahead of its writes.
const ALLOCATE_FROM: u64 = 4 << 20;
/// Most allocated ahead of the content written, at once.
const ALLOCATE_AHEAD: u64 = 32 << 20;

impl Open {
    /// Allocates the file's blocks ahead of a write ending at `end`, in stretches as long as
    /// what is written (at most 32 MiB): ext4 otherwise reserves each block as it is first
    /// written (delayed allocation), the writer's largest cost (3.6 s of kernel time per GiB).
    /// The file's size is kept; what is allocated beyond the content is freed at completion.
    fn allocate_ahead(&mut self, end: u64) {
        if end < ALLOCATE_FROM || end <= self.allocated || self.allocated == u64::MAX {
            return;
        }
        let to = end + end.min(ALLOCATE_AHEAD);
        let (Ok(at), Ok(len)) = (
            i64::try_from(self.allocated),
            i64::try_from(to - self.allocated),
        ) else {
            return;
        };
        self.allocated = match fallocate(
            &self.temp.file,
            FallocateFlags::FALLOC_FL_KEEP_SIZE,
            at,
            len,
        ) {
            Ok(()) => to,
            // Unsupported, or no room for so much at once: the writes go on without (and report
            // a full disk themselves).
            Err(_) => u64::MAX,
        };
    }

    /// A handle on the file for the hasher, the first time only.
    fn hand(&mut self) -> Option<File> {
        if self.handed {
            return None;
        }
        self.handed = true;
        self.temp.file.try_clone().ok()
    }
}

/// State of the writer thread.
pub struct Writer {
    share: Arc<Share>,
    /// Block buffers going back to the assembler.
    recycle: Sender<Vec<u8>>,
    /// Objects whose write failed, with why: the receive loop records them and stops assembling.
    failed: Sender<(ObjectKey, LossReason)>,
    objects: HashMap<ObjectKey, Open>,
    /// The hasher.
    hash: SyncSender<ToHash>,
    /// The rebuilding thread's queue, while it runs (`None`: blocks are rebuilt here).
    jobs: Option<SyncSender<RebuildJob>>,
    /// Its finished jobs.
    done: Receiver<RebuildDone>,
    /// Batches handed to the rebuilding thread and not yet done, per object.
    outstanding: HashMap<ObjectKey, usize>,
}

impl Writer {
    /// A writer handing written content to `hash` and striped repairs to `jobs` (rebuilt here
    /// when `None`), whose results come back on `done`.
    pub fn new(
        share: Arc<Share>,
        recycle: Sender<Vec<u8>>,
        failed: Sender<(ObjectKey, LossReason)>,
        hash: SyncSender<ToHash>,
        jobs: Option<SyncSender<RebuildJob>>,
        done: Receiver<RebuildDone>,
    ) -> Self {
        Writer {
            share,
            recycle,
            failed,
            objects: HashMap::new(),
            hash,
            jobs,
            done,
            outstanding: HashMap::new(),
        }
    }

    /// Handles messages until the channel closes; then waits for the rebuilding thread's last
    /// jobs and forgets what is left (the hasher stops once every sender of its queue is gone).
    pub fn run(mut self, rx: Receiver<ToWriter>) {
        for msg in rx {
            while let Ok(d) = self.done.try_recv() {
                self.on_done(d);
            }
            match msg {
                ToWriter::Data { key, offset, data } => self.data(key, offset, data),
                ToWriter::Repair { key, repairs } => self.repair(key, repairs),
                ToWriter::Complete(object) => {
                    self.settle(object.key);
                    self.complete(object)
                }
                ToWriter::Discard { key } => {
                    self.settle(key);
                    if let Some(open) = self.objects.remove(&key) {
                        self.share.discard(open.temp);
                        let _ = self.hash.send(ToHash::Forget { key });
                    }
                }
            }
        }
        // The rebuilding thread stops once its queue closes, and its results end with it.
        self.jobs = None;
        while let Ok(d) = self.done.recv() {
            self.on_done(d);
        }
        for (key, open) in std::mem::take(&mut self.objects) {
            self.share.discard(open.temp);
            let _ = self.hash.send(ToHash::Forget { key });
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let _ = self.recycle.send(buf);
    }

    /// The object's temporary file, created on first use; `None` once it failed.
    fn open(&mut self, key: ObjectKey) -> Option<&mut Open> {
        if !self.objects.contains_key(&key) {
            match self.share.create_temp(key) {
                Ok(temp) => {
                    self.objects.insert(
                        key,
                        Open {
                            temp,
                            failed: false,
                            handed: false,
                            allocated: 0,
                        },
                    );
                }
                Err(e) => {
                    self.fail(key, LossReason::CreateTemp(e));
                    return None;
                }
            }
        }
        self.objects.get_mut(&key).filter(|o| !o.failed)
    }

    /// Hands striped blocks to the rebuilding thread, now that everything before them is
    /// written; rebuilds them here if that thread could not start.
    fn repair(&mut self, key: ObjectKey, repairs: Vec<Repair>) {
        let Some(open) = self.open(key) else {
            return;
        };
        // The hasher gets its handle on the file before any rebuilt shard (an object whose
        // first data shards were all lost has no content written before its first repair).
        let (handed, file) = (open.hand(), open.temp.file.try_clone());
        if let Some(file) = handed {
            let _ = self.hash.send(ToHash::File { key, file });
        }
        let file = match file {
            Ok(f) => f,
            Err(e) => return self.fail(key, LossReason::ReadBack(e)),
        };
        let job = RebuildJob { key, file, repairs };
        match &self.jobs {
            Some(jobs) => {
                *self.outstanding.entry(key).or_insert(0) += 1;
                if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
                    self.jobs = None;
                    self.outstanding.remove(&key);
                    self.rebuild_here(job);
                }
            }
            None => self.rebuild_here(job),
        }
    }

    /// Rebuilds on this thread: the rebuilding thread could not start or stopped.
    fn rebuild_here(&mut self, job: RebuildJob) {
        let done = rebuild::Rebuilder::default().job(&self.hash, &job);
        self.on_done(done);
    }

    /// A batch of rebuilds finished.
    fn on_done(&mut self, d: RebuildDone) {
        if let Some(n) = self.outstanding.get_mut(&d.key) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(&d.key);
                if self.objects.get(&d.key).is_some_and(|o| o.failed) {
                    let _ = self.hash.send(ToHash::Forget { key: d.key });
                }
            }
        }
        if let Some(reason) = d.error {
            self.fail(d.key, reason);
        }
    }

    /// Waits until every batch of `key` handed to the rebuilding thread is done.
    fn settle(&mut self, key: ObjectKey) {
        while self.outstanding.contains_key(&key) {
            match self.done.recv() {
                Ok(d) => self.on_done(d),
                Err(_) => {
                    self.outstanding.clear();
                    return;
                }
            }
        }
    }

    fn data(&mut self, key: ObjectKey, offset: u64, data: Vec<u8>) {
        let Some(open) = self.open(key) else {
            return self.give_back(data);
        };
        open.allocate_ahead(offset + data.len() as u64);
        if let Err(e) = open.temp.file.write_all_at(&data, offset) {
            self.give_back(data);
            return self.fail(key, LossReason::WriteTemp(e));
        }
        if let Some(file) = open.hand() {
            let _ = self.hash.send(ToHash::File { key, file });
        }
        let _ = self.hash.send(ToHash::Data { key, offset, data });
    }

    /// Every block of `object` is written (or it is empty): its file goes to the hasher.
    fn complete(&mut self, object: Completed) {
        let (key, size) = (object.key, object.head.size);
        let temp = match self.objects.remove(&key) {
            Some(o) if o.failed => {
                // Recorded by the receive loop; dropping the object releases its reservation.
                self.share.discard(o.temp);
                let _ = self.hash.send(ToHash::Forget { key });
                return;
            }
            Some(o) => {
                if o.allocated > 0 {
                    // Frees what was allocated beyond the content (ext4 and XFS do so even
                    // when the size does not change).
                    let _ = o.temp.file.set_len(size);
                }
                Ok(o.temp)
            }
            // An empty file never had content written.
            None => self.share.create_temp(key),
        };
        let _ = self.hash.send(ToHash::Complete { object, temp });
    }

    /// A write failed: the object's remaining data is ignored, and the receive loop (which knows
    /// its name) records the loss and stops assembling it.
    fn fail(&mut self, key: ObjectKey, reason: LossReason) {
        if let Some(open) = self.objects.get_mut(&key) {
            open.failed = true;
        }
        // Rebuilt shards still on their way would bring the object back to the hasher: it
        // forgets the object once they are all in.
        if !self.outstanding.contains_key(&key) {
            let _ = self.hash.send(ToHash::Forget { key });
        }
        let _ = self.failed.send((key, reason));
    }
}

/// The SHA-256 of one object as it is written.
struct Digesting {
    hasher: Sha256,
    /// Content hashed so far, from offset 0.
    hashed: u64,
    /// Blocks written ahead of `hashed`, kept to hash them in order.
    stash: BTreeMap<u64, Vec<u8>>,
    /// The stash overflowed: content is hashed by reading the file back as the written
    /// content from `hashed` on grows, and what is left at completion.
    read_back: bool,
    /// In read-back mode, the content written beyond `hashed`.
    written: RangeMap<()>,
    /// The hasher's handle on the object's file.
    file: Option<File>,
}

impl Digesting {
    fn new() -> Self {
        Digesting {
            hasher: Sha256::new(),
            hashed: 0,
            stash: BTreeMap::new(),
            read_back: false,
            written: RangeMap::default(),
            file: None,
        }
    }
}

/// State of the hashing thread: hashes content in order, then publishes or refuses.
pub struct Hasher {
    share: Arc<Share>,
    recorder: Arc<Recorder>,
    publisher: Publisher,
    recycle: Sender<Vec<u8>>,
    objects: HashMap<ObjectKey, Digesting>,
    stash_bytes: usize,
    stash_limit: usize,
    /// Buffer for reading content back.
    scratch: Vec<u8>,
}

impl Hasher {
    /// A hasher publishing through `publisher`; `stash_limit` bounds the bytes kept to hash
    /// out-of-order blocks in order.
    pub fn new(
        share: Arc<Share>,
        recorder: Arc<Recorder>,
        publisher: Publisher,
        recycle: Sender<Vec<u8>>,
        stash_limit: usize,
    ) -> Self {
        Hasher {
            share,
            recorder,
            publisher,
            recycle,
            objects: HashMap::new(),
            stash_bytes: 0,
            stash_limit,
            scratch: Vec::new(),
        }
    }

    /// Hashes until every sender of `rx` is gone; the publishers' queues close with it.
    pub fn run(mut self, rx: Receiver<ToHash>) {
        for handed in rx {
            match handed {
                ToHash::Data { key, offset, data } => self.data(key, offset, data),
                ToHash::File { key, file } => {
                    self.objects.entry(key).or_insert_with(Digesting::new).file = Some(file);
                }
                ToHash::Rebuilt { key, shards } => {
                    for (offset, data) in shards {
                        self.data(key, offset, data);
                    }
                }
                ToHash::Complete { object, temp } => match temp {
                    Ok(temp) => self.complete(object, temp),
                    Err(e) => {
                        if let Some(d) = self.objects.remove(&object.key) {
                            self.drop_stash(d);
                        }
                        self.lost(&object, LossReason::CreateTemp(e));
                    }
                },
                ToHash::Forget { key } => {
                    if let Some(d) = self.objects.remove(&key) {
                        self.drop_stash(d);
                    }
                }
            }
        }
        for (_, d) in std::mem::take(&mut self.objects) {
            self.drop_stash(d);
        }
    }

    fn drop_stash(&mut self, d: Digesting) {
        for (_, buf) in d.stash {
            self.stash_bytes -= buf.capacity();
            let _ = self.recycle.send(buf);
        }
    }

    fn data(&mut self, key: ObjectKey, offset: u64, data: Vec<u8>) {
        let d = self.objects.entry(key).or_insert_with(Digesting::new);
        if offset < d.hashed {
            let _ = self.recycle.send(data);
            return;
        }
        if d.read_back {
            d.written.insert(offset, offset + data.len() as u64, ());
            let _ = self.recycle.send(data);
            Self::catch_up(d, &mut self.scratch);
            return;
        }
        if offset == d.hashed {
            d.hasher.update(&data);
            d.hashed += data.len() as u64;
            let _ = self.recycle.send(data);
            while let Some(next) = d.stash.remove(&d.hashed) {
                d.hasher.update(&next);
                d.hashed += next.len() as u64;
                self.stash_bytes -= next.capacity();
                let _ = self.recycle.send(next);
            }
        } else if self.stash_bytes + data.capacity() <= self.stash_limit {
            self.stash_bytes += data.capacity();
            d.stash.insert(offset, data);
        } else {
            // Too far out of order to keep: what is written is hashed from the file once the
            // content before it is.
            d.read_back = true;
            for (at, buf) in std::mem::take(&mut d.stash) {
                d.written.insert(at, at + buf.len() as u64, ());
                self.stash_bytes -= buf.capacity();
                let _ = self.recycle.send(buf);
            }
            d.written.insert(offset, offset + data.len() as u64, ());
            let _ = self.recycle.send(data);
        }
    }

    /// Hashes, from the file, the written content that now continues what was hashed.
    fn catch_up(d: &mut Digesting, scratch: &mut Vec<u8>) {
        let Some(file) = &d.file else {
            return;
        };
        loop {
            let first = d.written.iter().next();
            let Some((start, end, ())) = first else {
                break;
            };
            if start > d.hashed {
                break;
            }
            d.written.pop_first();
            if scratch.is_empty() {
                scratch.resize(1 << 20, 0);
            }
            while d.hashed < end {
                let want = usize::try_from(end - d.hashed)
                    .unwrap_or(usize::MAX)
                    .min(scratch.len());
                if file.read_exact_at(&mut scratch[..want], d.hashed).is_err() {
                    // Completion reads back from `hashed` again and reports the error.
                    return;
                }
                d.hasher.update(&scratch[..want]);
                d.hashed += want as u64;
            }
        }
    }

    fn complete(&mut self, object: Completed, temp: Temp) {
        let d = self
            .objects
            .remove(&object.key)
            .unwrap_or_else(Digesting::new);
        match self.finish_hash(d, &temp, &object.head) {
            Ok(actual) if actual == object.digest => {
                self.publisher.send(PublishJob { object, temp })
            }
            Ok(_) => {
                self.share.discard(temp);
                self.lost(&object, LossReason::DigestMismatch);
            }
            Err(e) => {
                self.share.discard(temp);
                self.lost(&object, LossReason::Unverifiable(e));
            }
        }
    }

    /// The SHA-256 of the whole content: what was hashed in order, plus the rest read back.
    fn finish_hash(
        &mut self,
        mut d: Digesting,
        temp: &Temp,
        head: &Head,
    ) -> std::io::Result<[u8; DIGEST_LEN]> {
        if !d.stash.is_empty() {
            // Every block arrived, so a stash left over can only be after a gap that was filled
            // by content too far out of order to keep: re-hash from the file.
            d.read_back = true;
            for (_, buf) in std::mem::take(&mut d.stash) {
                self.stash_bytes -= buf.capacity();
                let _ = self.recycle.send(buf);
            }
        }
        if d.hashed < head.size {
            let mut buf = vec![0u8; 1 << 20];
            while d.hashed < head.size {
                let want = usize::try_from(head.size - d.hashed)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                match temp.file.read_at(&mut buf[..want], d.hashed)? {
                    0 => {
                        return Err(std::io::Error::other(format!(
                            "temporary file ends at {} of {} bytes",
                            d.hashed, head.size
                        )));
                    }
                    n => {
                        d.hasher.update(&buf[..n]);
                        d.hashed += n as u64;
                    }
                }
            }
        }
        Ok(d.hasher.finalize().into())
    }

    /// Records a complete object that cannot be published; dropping it releases its reservation.
    fn lost(&self, object: &Completed, reason: LossReason) {
        self.recorder.record(Outcome::Lost {
            key: object.key,
            path: &object.head.path,
            size: Some(object.head.size),
            reason: &reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::pipeline::Stages;
    use crate::pipeline::reservation::Reserved;
    use checkvalve_common::assembler::Precedence;
    use checkvalve_common::meta::ObjectKind;

    fn head(path: &str, size: usize) -> Head {
        Head {
            path: path.into(),
            size: size as u64,
            mtime_secs: 1_600_000_000,
            mtime_nanos: 0,
            kind: ObjectKind::File,
        }
    }

    /// Runs a writer with `stash_limit` over `objects` (path, content, claimed digest), each sent
    /// in 10-byte blocks in a scrambled order; returns the share folder and manifest text.
    fn run(
        stash_limit: usize,
        objects: &[(&str, Vec<u8>, [u8; 32])],
    ) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(&dir.path().join("out"), None).unwrap();
        let share = Arc::new(share);
        let manifest = Arc::new(Manifest::open(&dir.path().join("m.jsonl"), 0).unwrap());
        let recorder = Arc::new(Recorder::new(manifest));
        let reserved = Reserved::default();
        // The stages' memory: half of it keeps blocks to hash in order.
        let (stages, queues) = Stages::start(
            &share,
            &recorder,
            stash_limit * 2,
            crate::streams::StreamSettings::default(),
            &crate::streams::Views::default(),
        )
        .unwrap();
        for (i, (path, content, digest)) in objects.iter().enumerate() {
            let key = ObjectKey {
                session: 1,
                object: i as u64,
            };
            let (reservation, _) = reserved.take(content.len() as u64);
            let blocks: Vec<(u64, Vec<u8>)> = content
                .chunks(10)
                .enumerate()
                .map(|(b, c)| (b as u64 * 10, c.to_vec()))
                .collect();
            // Last block first, then the rest reversed in pairs: out of order throughout.
            let mut order: Vec<usize> = (0..blocks.len()).rev().collect();
            if !order.is_empty() {
                order.swap(0, blocks.len() / 2);
            }
            for b in order {
                let (offset, data) = blocks[b].clone();
                queues
                    .writer
                    .send(ToWriter::Data { key, offset, data })
                    .unwrap();
            }
            queues
                .writer
                .send(ToWriter::Complete(Completed {
                    key,
                    head: head(path, content.len()),
                    digest: *digest,
                    precedence: Precedence {
                        session_ordinal: 0,
                        object: i as u64,
                    },
                    evidence: crate::manifest::Evidence {
                        first_datagram: std::time::SystemTime::now(),
                        last_datagram: std::time::SystemTime::now(),
                        repaired: 0,
                    },
                    reservation: Some(reservation),
                }))
                .unwrap();
        }
        drop(queues.writer);
        drop(queues.streams);
        stages.join();
        assert_eq!(reserved.bytes(), 0, "reservations not released");
        assert!(queues.recycled.try_iter().count() > 0);
        let text = crate::manifest::files(&dir.path().join("m.jsonl"))
            .unwrap()
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        (dir, text)
    }

    #[test]
    fn hashes_in_order_whatever_the_arrival_order_and_refuses_a_wrong_digest() {
        let a: Vec<u8> = (0..95u8).collect();
        let b: Vec<u8> = (100..195u8).collect();
        let digest = |d: &[u8]| -> [u8; 32] { Sha256::digest(d).into() };
        for stash in [1 << 20, 15] {
            let (dir, manifest) = run(
                stash,
                &[
                    ("a.bin", a.clone(), digest(&a)),
                    ("b.bin", b.clone(), digest(&a)),
                    ("empty", Vec::new(), digest(b"")),
                ],
            );
            let out = dir.path().join("out");
            assert_eq!(
                std::fs::read(out.join("a.bin")).unwrap(),
                a,
                "stash {stash}"
            );
            assert!(!out.join("b.bin").exists(), "a wrong digest was published");
            assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
            assert!(manifest.contains("SHA-256 mismatch"), "{manifest}");
            assert_eq!(manifest.matches("delivered").count(), 2, "{manifest}");
        }
    }
}
