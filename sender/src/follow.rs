//! The sender's side of the stream spool: follows each channel's segments from where the link
//! last took them, batches the records (`common::stream::batcher`: by default 100 ms or 256 KiB),
//! encodes each batch as a record batch object of the stream session and hands it to the
//! transmitter, which sends it ahead of any file data.
//!
//! Positions: the transmitter notes, per channel, one past the last record it sent whole
//! ([`Sent`]); this thread saves that in `STATE/streams/.positions.json` every second and removes
//! the segments wholly below it. A restart resumes from the saved position: what was sent after
//! the last save goes again, and the receiver, which numbers records by their sequence, writes
//! each once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use checkvalve_common::interleave::{Batch, InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder};
use checkvalve_common::stream::batch::{Record, RecordBatch};
use checkvalve_common::stream::batcher::{BatchLimits, Batcher};
use checkvalve_common::stream::spool::{Frame, Spooled, segment_name, segment_seq};
use checkvalve_common::wire::StreamTail;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::inputs::SPOOL_DIR;
use crate::keys::Identity;

/// How often the spool is looked at for new records.
const LOOK_EVERY: Duration = Duration::from_millis(5);
/// How often positions are saved and sent segments removed.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The positions file in the stream spool.
const POSITIONS: &str = ".positions.json";

/// Where a channel stands on the sender.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// One past the last record read from the spool.
    pub read: u64,
    /// One past the last record the transmitter sent whole.
    pub sent: u64,
    /// When the last record read was taken (µs since the Unix epoch).
    pub last_us: Option<i64>,
}

/// Each channel's position, shared by the follower, the transmitter and the status file.
pub type Sent = Arc<Mutex<BTreeMap<String, Position>>>;

/// A batch of the stream session for the transmitter, with the channels' tails once it is sent.
pub struct StreamOut {
    /// The datagrams.
    pub batch: Batch,
    /// Where each channel of the batch stands once it is sent.
    pub tails: Vec<StreamTail>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Positions {
    channels: BTreeMap<String, u64>,
}

/// One channel's reading of its spool.
struct Reader {
    name: String,
    dir: PathBuf,
    /// The segment being read: its first sequence number, the file, and unread bytes.
    segment: Option<(u64, File)>,
    pending: Vec<u8>,
    /// The next sequence number to take.
    next: u64,
    /// When the last record taken was taken.
    last_us: Option<i64>,
    batcher: Batcher,
}

impl Reader {
    fn segments(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| segment_seq(e.file_name().to_str()?))
            .collect();
        v.sort_unstable();
        v
    }

    /// Opens the segment holding `next` (or the first after it).
    fn open_segment(&mut self) {
        let segments = self.segments();
        let pick = segments
            .iter()
            .rev()
            .find(|&&s| s <= self.next)
            .or(segments.first())
            .copied();
        if let Some(first) = pick
            && let Ok(f) = File::open(self.dir.join(segment_name(first)))
        {
            if first > self.next {
                warn!(channel = %self.name, from = self.next, to = first, "stream spool: records removed before they were sent (the receiver marks them missing)");
            }
            self.segment = Some((first, f));
            self.pending.clear();
        }
    }

    /// Takes in the records written since the last look.
    fn read(&mut self, now: Instant, out: &mut Vec<Vec<Record>>) {
        if self.segment.is_none() {
            self.open_segment();
        }
        let Some((first, f)) = self.segment.as_mut() else {
            return;
        };
        let first = *first;
        let mut buf = [0u8; 64 << 10];
        let mut got = 0;
        while got < 4 << 20 {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    got += n;
                }
            }
        }
        let mut at = 0;
        loop {
            match Spooled::decode(&self.pending[at..]) {
                Frame::Whole(s, len) => {
                    at += len;
                    if s.record.seq < self.next {
                        continue;
                    }
                    self.next = s.record.seq + 1;
                    self.last_us = Some(s.record.time_us);
                    if let Some(full) = self.batcher.push(now, s.record) {
                        out.push(full);
                    }
                }
                Frame::Partial => break,
                Frame::Corrupt => {
                    error!(channel = %self.name, segment = first, "stream spool: a corrupt frame: the rest of the segment is skipped");
                    at = self.pending.len();
                    let _ = f.seek(SeekFrom::End(0));
                    break;
                }
            }
        }
        self.pending.drain(..at);
        if got == 0 && self.pending.is_empty() {
            // At the end of this segment: a newer one means this one is closed.
            if let Some(&newer) = self.segments().iter().find(|&&s| s > first) {
                if newer > self.next {
                    warn!(channel = %self.name, from = self.next, to = newer, "stream spool: records missing between segments");
                }
                self.next = self.next.max(newer);
                self.segment = None;
            }
        }
        if let Some(due) = self.batcher.poll(now) {
            out.push(due);
        }
    }
}

/// Follows the spools of `channels` under `state`, handing batches to `tx`, until `stop`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    state: &Path,
    channels: Vec<String>,
    who: Identity,
    fec: FecParams,
    limits: BatchLimits,
    tx: SyncSender<StreamOut>,
    sent: Sent,
    stop: Arc<AtomicBool>,
) {
    let spool = state.join(SPOOL_DIR);
    let positions_file = spool.join(POSITIONS);
    let saved: Positions = std::fs::read(&positions_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut readers: Vec<Reader> = channels
        .into_iter()
        .map(|name| {
            let next = saved.channels.get(&name).copied().unwrap_or(0);
            if let Ok(mut s) = sent.lock() {
                s.insert(
                    name.clone(),
                    Position {
                        read: next,
                        sent: next,
                        last_us: None,
                    },
                );
            }
            info!(channel = %name, next_seq = next, "stream: sending from");
            Reader {
                dir: spool.join(&name),
                name,
                segment: None,
                pending: Vec::new(),
                next,
                last_us: None,
                batcher: Batcher::new(limits),
            }
        })
        .collect();
    // Small groups: a batch goes out as soon as it is made, its parity raised to span a
    // group's worth of datagrams (`InterleaveParams::min_span`) so a burst cannot take it whole.
    let mut inter = Interleaver::new(InterleaveParams::default());
    if let Some(sealer) = who.sealer.clone() {
        inter.seal_with(sealer);
    }
    let mut object = 0u64;
    let mut last_save = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for r in &mut readers {
            let mut out = Vec::new();
            let (before, last) = (r.next, r.last_us);
            r.read(now, &mut out);
            if (r.next, r.last_us) != (before, last)
                && let Ok(mut s) = sent.lock()
            {
                let p = s.entry(r.name.clone()).or_default();
                p.read = r.next;
                p.last_us = r.last_us;
            }
            for records in out {
                match encode(who.session, object, &r.name, records, fec, &mut inter) {
                    Ok((batches, tail)) => {
                        object += 1;
                        let last = batches.len();
                        for (i, batch) in batches.into_iter().enumerate() {
                            let tails = if i + 1 == last {
                                vec![tail.clone()]
                            } else {
                                vec![]
                            };
                            if tx.send(StreamOut { batch, tails }).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => error!(channel = %r.name, "record batch not encoded: {e}"),
                }
            }
        }
        if now.duration_since(last_save) >= SAVE_EVERY {
            last_save = now;
            save(&positions_file, &sent, &readers);
        }
        std::thread::sleep(LOOK_EVERY);
    }
    save(&positions_file, &sent, &readers);
}

/// Encodes `records` of `channel` as object `object`: its batches and the channel's tail.
fn encode(
    session: u64,
    object: u64,
    channel: &str,
    records: Vec<Record>,
    fec: FecParams,
    inter: &mut Interleaver,
) -> anyhow::Result<(Vec<Batch>, StreamTail)> {
    let last = records
        .last()
        .map(|r| (r.seq + 1, r.time_us))
        .unwrap_or_default();
    let content = RecordBatch {
        channel: channel.to_owned(),
        records,
    }
    .encode()?;
    let t = UNIX_EPOCH + Duration::from_micros(last.1.max(0) as u64);
    let mtime = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let head = Head {
        path: channel.to_owned(),
        size: content.len() as u64,
        mtime_secs: mtime.as_secs() as i64,
        mtime_nanos: mtime.subsec_nanos(),
        kind: ObjectKind::Records,
    };
    let (mut enc, head_block) = ObjectEncoder::new(session, object, &head, fec)?;
    let mut blocks = vec![head_block];
    enc.push(&content, &mut blocks)?;
    enc.finish(&mut blocks)?;
    let mut batches = Vec::new();
    for b in blocks {
        if let Some(batch) = inter.push(b)? {
            batches.push(batch);
        }
    }
    if let Some(batch) = inter.flush()? {
        batches.push(batch);
    }
    Ok((
        batches,
        StreamTail {
            channel: channel.to_owned(),
            end: last.0,
            time_us: last.1,
        },
    ))
}

/// Saves the positions sent and removes the segments wholly sent (never the newest: the inputs
/// may still append to it).
fn save(file: &Path, sent: &Sent, readers: &[Reader]) {
    let channels: BTreeMap<String, u64> = match sent.lock() {
        Ok(s) => s.iter().map(|(n, p)| (n.clone(), p.sent)).collect(),
        Err(_) => return,
    };
    for r in readers {
        let Some(&done) = channels.get(&r.name) else {
            continue;
        };
        let segments = r.segments();
        for pair in segments.windows(2) {
            if pair[1] <= done {
                let _ = std::fs::remove_file(r.dir.join(segment_name(pair[0])));
            }
        }
    }
    let tmp = file.with_extension("json.new");
    let written = serde_json::to_vec(&Positions { channels })
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        warn!(file = %file.display(), "stream positions not saved: {e}");
    }
}
