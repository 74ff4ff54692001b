//! The producer thread: reads, hashes and encodes files ahead of the transmitter.
//!
//! It runs on its own thread and hands finished batches through a bounded channel, so disk reads,
//! hashing and parity computation never stall the paced output; when the link is slower than the
//! disk, the channel fills and the producer simply waits.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::time::Duration;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use checkvalve_common::interleave::{Batch, InterleaveParams, Interleaver, Spares};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{DataBlock, FecParams, ObjectEncoder};
use checkvalve_common::stripe::{Sink, StripedEncoder};
use checkvalve_common::wire::Announced;
use sha2::{Digest, Sha256};
use tracing::{debug, error, warn};

use crate::keys::Identity;
use crate::queue::{Feed, Next};
use crate::walk::Entry;

/// Attempts at a file that changes while it is read, before it is skipped as unstable.
const MAX_TRIES: u32 = 3;

/// What the producer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    /// Files fully encoded.
    pub files: u64,
    /// Content bytes encoded.
    pub bytes: u64,
    /// Files that could not be read in full, or kept changing while read.
    pub failed: u64,
}

/// How one attempt at a file ended.
enum Attempt {
    /// Sent whole and verified: its size and the SHA-256 of its content.
    Sent { size: u64, digest: [u8; 32] },
    /// Refused before anything was sent.
    Refused,
    /// The file changed (or shrank) while it was read: its digest was withheld, so the receiver
    /// can never verify (and publish) what went out.
    Changed(String),
    /// Failed part-way for another reason.
    Failed(anyhow::Error),
}

/// Where batches go: the transmitter's queue, and the store it gives sent batches back to.
pub struct Outlet {
    /// The transmitter's queue.
    pub tx: SyncSender<Batch>,
    /// Batches sent, to be filled again.
    pub spares: Spares,
    /// Where each object sent whole is named, for the transmitter's announcements.
    pub names: SyncSender<Announced>,
}

/// Encodes `entries` as objects `0..` of `session` and sends the batches to `tx`.
pub fn produce(
    who: Identity,
    entries: Vec<Entry>,
    fec: FecParams,
    interleave: InterleaveParams,
    out: Outlet,
    stop: Arc<AtomicBool>,
) -> Produced {
    let (feed, rx) = std::sync::mpsc::channel();
    for (id, e) in entries.into_iter().enumerate() {
        let _ = feed.send((id as u64, e));
    }
    drop(feed);
    let (announce, _) = std::sync::mpsc::channel();
    produce_stream(who, &rx, &announce, fec, interleave, out, stop)
}

/// Encodes entries as they come from `rx` (each with the caller's id) as objects `0..` of
/// `session`, sending batches to `tx` and `(object, id, SHA-256)` to `announce` for every file encoded
/// whole. When no entry is waiting, the group in progress is sealed so that nothing waits for a
/// group to fill. Ends when `rx` closes or `stop` is raised.
pub fn produce_stream(
    who: Identity,
    rx: &dyn Feed,
    announce: &Sender<(u64, u64, [u8; 32])>,
    fec: FecParams,
    interleave: InterleaveParams,
    out: Outlet,
    stop: Arc<AtomicBool>,
) -> Produced {
    let Outlet { tx, spares, names } = out;
    let session = who.session;
    let mut inter = Interleaver::new(interleave);
    inter.reuse(spares);
    if let Some(sealer) = who.sealer {
        inter.seal_with(sealer);
    }
    let mut out = Produced::default();
    let mut next_object = 0u64;
    let mut blocks = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (id, entry) = match rx.next(Duration::ZERO) {
            Next::Item(x) => x,
            Next::Closed => break,
            Next::Empty => {
                if inter.pending() > 0 {
                    match inter.flush() {
                        Ok(Some(batch)) => {
                            if tx.send(batch).is_err() {
                                return out;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => error!("parity encoding failed: {e}"),
                    }
                }
                match rx.next(Duration::from_millis(200)) {
                    Next::Item(x) => x,
                    Next::Empty => continue,
                    Next::Closed => break,
                }
            }
        };
        for attempt in 1..=MAX_TRIES {
            let result = encode_file(
                session,
                next_object,
                &entry,
                fec,
                &mut blocks,
                &mut inter,
                &tx,
            );
            if !matches!(result, Attempt::Refused) {
                // The head went out: the object number is spent whatever happens next.
                next_object += 1;
            }
            match result {
                Attempt::Sent { size, digest } => {
                    out.files += 1;
                    out.bytes += size;
                    // A full queue (the transmitter far behind) costs the name's repetition
                    // only: the head and digest blocks still carry it.
                    let _ = names.try_send(Announced {
                        object: next_object - 1,
                        size,
                        digest,
                        path: entry.name.clone(),
                    });
                    let _ = announce.send((next_object - 1, id, digest));
                    debug!(file = %entry.name, size, "encoded");
                }
                Attempt::Refused => out.failed += 1,
                Attempt::Changed(what) if attempt < MAX_TRIES => {
                    warn!(file = %entry.name, attempt, "{what} while being read: not verifiable, sending it again");
                    if forward(&mut inter, &mut blocks, &tx).is_err() {
                        return out;
                    }
                    continue;
                }
                Attempt::Changed(what) => {
                    out.failed += 1;
                    error!(file = %entry.name, tries = MAX_TRIES, "skipped: {what} on every try (the receiver reports it lost)");
                }
                Attempt::Failed(e) => {
                    out.failed += 1;
                    error!(file = %entry.name, "not sent in full: {e:#}");
                }
            }
            break;
        }
        if forward(&mut inter, &mut blocks, &tx).is_err() {
            return out;
        }
    }
    if let Ok(Some(batch)) = inter.flush() {
        let _ = tx.send(batch);
    }
    out
}

/// Moves `blocks` into the interleaver and any sealed batch into the channel.
fn forward(
    inter: &mut Interleaver,
    blocks: &mut Vec<DataBlock>,
    tx: &SyncSender<Batch>,
) -> Result<()> {
    for b in blocks.drain(..) {
        if let Some(batch) = inter.push(b).context("parity encoding failed")? {
            tx.send(batch).context("transmitter stopped")?;
        }
    }
    Ok(())
}

/// Size and modification time: a file whose pair differs after reading changed under the reader.
fn fingerprint(m: &std::fs::Metadata) -> (u64, Option<std::time::SystemTime>) {
    (m.len(), m.modified().ok())
}

/// A striped object's datagrams are handed to the transmitter in batches of about this size.
const STRIPE_BATCH_BYTES: usize = 1 << 20;

/// Read buffers of a striped file: one being encoded while the next is read and hashed.
const READ_BUFFERS: usize = 2;

/// A piece of a file read and hashed (the buffer and the bytes of it read), or how the attempt
/// at the file ends.
type Piece = Result<(Vec<u8>, usize), Attempt>;

/// Reads `size` bytes of `file` into the buffers from `empty`, hashing them in order, and hands
/// each on to `full`; the digest and the file when all was read. `None` if the encoder stopped
/// taking pieces (it then has its own reason) or a piece ended the attempt (sent on `full`).
fn read_and_hash(
    mut file: File,
    size: u64,
    empty: &Receiver<Vec<u8>>,
    full: &SyncSender<Piece>,
) -> Option<([u8; 32], File)> {
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        let mut buf = empty.recv().ok()?;
        match read_piece(&mut file, &mut buf, left) {
            Ok(n) => {
                hasher.update(&buf[..n]);
                left -= n as u64;
                full.send(Ok((buf, n))).ok()?;
            }
            Err(end) => {
                let _ = full.send(Err(end));
                return None;
            }
        }
    }
    Some((hasher.finalize().into(), file))
}

/// Reads the file's next piece into `buf` (at most `left` bytes, `left` being what is still to
/// read): its length, or how the attempt at the file ends.
fn read_piece(file: &mut File, buf: &mut [u8], left: u64) -> Result<usize, Attempt> {
    let want = (buf.len() as u64).min(left) as usize;
    match file.read_exact(&mut buf[..want]) {
        Ok(()) => Ok(want),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Attempt::Changed(format!("shrank with {left} bytes to go")))
        }
        Err(e) => Err(Attempt::Failed(
            anyhow::Error::new(e).context("read failed"),
        )),
    }
}

/// Why a file changed under the reader, if it did: `before` is its fingerprint when opened.
fn changed(before: (u64, Option<std::time::SystemTime>), file: &File) -> Option<String> {
    match file.metadata().map(|m| fingerprint(&m)) {
        Ok(after) if after == before => None,
        Ok((len, _)) if len != before.0 => Some(format!("size changed from {} to {len}", before.0)),
        Ok(_) => Some("modified".to_string()),
        Err(e) => Some(format!("could not be checked ({e})")),
    }
}

/// Encodes one file. Its digest block goes out only if the file was stable while it was read.
fn encode_file(
    session: u64,
    object: u64,
    entry: &Entry,
    fec: FecParams,
    blocks: &mut Vec<DataBlock>,
    inter: &mut Interleaver,
    tx: &SyncSender<Batch>,
) -> Attempt {
    let opened = File::open(&entry.source).and_then(|f| {
        let m = f.metadata()?;
        Ok((f, m))
    });
    let (mut file, meta) = match opened {
        Ok(x) => x,
        Err(e) => {
            error!(file = %entry.name, "cannot open: {e}");
            return Attempt::Refused;
        }
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let head = Head {
        path: entry.name.clone(),
        size: meta.len(),
        mtime_secs: mtime.map_or(0, |d| d.as_secs() as i64),
        mtime_nanos: mtime.map_or(0, |d| d.subsec_nanos()),
        kind: ObjectKind::File,
    };
    let (mut enc, head_block) = match ObjectEncoder::new(session, object, &head, fec) {
        Ok(x) => x,
        Err(e) => {
            error!(file = %entry.name, "refused: {e}");
            return Attempt::Refused;
        }
    };
    if let Some(stripe) = inter.stripe_for(head.size, enc.block_stride() as u64) {
        return encode_striped(session, object, &head, fec, stripe, file, &meta, inter, tx);
    }
    let mut flush = |blocks: &mut Vec<DataBlock>| forward(inter, blocks, tx);
    blocks.push(head_block);
    let mut buf = vec![0u8; enc.block_stride()];
    let mut left = head.size;
    while left > 0 {
        let want = match read_piece(&mut file, &mut buf, left) {
            Ok(n) => n,
            Err(end) => return end,
        };
        if let Err(e) = enc.push(&buf[..want], blocks) {
            return Attempt::Failed(e.into());
        }
        left -= want as u64;
        if let Err(e) = flush(blocks) {
            return Attempt::Failed(e);
        }
    }
    let withheld = changed(fingerprint(&meta), &file);
    let digest = match enc.finish(blocks) {
        Ok(d) => d,
        Err(e) => return Attempt::Failed(e.into()),
    };
    match withheld {
        None => Attempt::Sent {
            size: head.size,
            digest,
        },
        Some(what) => {
            // The digest block is last: withholding it leaves the object unverifiable.
            blocks.pop();
            Attempt::Changed(what)
        }
    }
}

/// Encodes a large file as a striped object, streaming its datagrams to `tx` in batches. Groups
/// of small objects still waiting in `inter` go out first.
#[allow(clippy::too_many_arguments)]
fn encode_striped(
    session: u64,
    object: u64,
    head: &Head,
    fec: FecParams,
    stripe: u8,
    file: File,
    meta: &std::fs::Metadata,
    inter: &mut Interleaver,
    tx: &SyncSender<Batch>,
) -> Attempt {
    match inter.flush() {
        Ok(Some(batch)) => {
            if tx.send(batch).is_err() {
                return Attempt::Failed(anyhow::anyhow!("transmitter stopped"));
            }
        }
        Ok(None) => {}
        Err(e) => return Attempt::Failed(anyhow::Error::new(e).context("parity encoding failed")),
    }
    let mut enc = match StripedEncoder::new(session, object, head, fec, stripe, inter.min_span()) {
        Ok(enc) => enc.hashed_by_caller(),
        Err(e) => return Attempt::Failed(e.into()),
    };
    let sealer = inter.sealer();
    let mut send = |mut batch: Batch| {
        batch.objects_end = object + 1;
        tx.send(batch).is_ok()
    };
    let mut sink = Sink::new(STRIPE_BATCH_BYTES, &mut send).reusing(inter.spares());
    let read_size = enc.read_size();
    let size = head.size;
    // Reading and hashing on one thread, encoding on this one: SHA-256 and the parity are the
    // two largest costs of a large file, and each has a core to itself when the machine has one.
    let read = std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Piece>(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_BUFFERS);
        for _ in 0..READ_BUFFERS {
            let _ = empty_tx.send(vec![0u8; read_size]);
        }
        let reader = std::thread::Builder::new()
            .name("read".into())
            .spawn_scoped(scope, move || {
                read_and_hash(file, size, &empty_rx, &full_tx)
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                return Err(Attempt::Failed(
                    anyhow::Error::new(e).context("no read thread"),
                ));
            }
        };
        for piece in &full_rx {
            let buf = match piece {
                Ok((buf, n)) => {
                    if let Err(e) = enc.push(&buf[..n], sealer, &mut sink) {
                        return Err(Attempt::Failed(e.into()));
                    }
                    buf
                }
                Err(end) => return Err(end),
            };
            let _ = empty_tx.send(buf);
        }
        match reader.join() {
            Ok(Some((digest, file))) => Ok((enc, digest, file)),
            Ok(None) => Err(Attempt::Failed(anyhow::anyhow!(
                "read thread stopped early"
            ))),
            Err(_) => Err(Attempt::Failed(anyhow::anyhow!("read thread panicked"))),
        }
    });
    let (enc, digest, file) = match read {
        Ok(r) => r,
        Err(end) => return end,
    };
    let withheld = changed(fingerprint(meta), &file);
    if let Err(e) = enc.finish_with_digest(digest, withheld.is_some(), sealer, &mut sink) {
        return Attempt::Failed(e.into());
    }
    let complete_end = if withheld.is_none() { object + 1 } else { 0 };
    if !sink.finish(complete_end) {
        return Attempt::Failed(anyhow::anyhow!("transmitter stopped"));
    }
    match withheld {
        None => Attempt::Sent {
            size: head.size,
            digest,
        },
        Some(what) => Attempt::Changed(what),
    }
}
