//! The record channels' stage: verified record batches are put in order per channel and appended
//! to the channel's file of the day, `OUT/CHANNEL/YYYY-MM-DD.log`; what the reorder window waited
//! for in vain becomes one marker line in place, a `stream_gap` manifest record and a WARN.
//!
//! Invariants:
//! - a channel file only ever grows by whole lines appended (tailers can follow it), and each
//!   record is one line: `\` is written `\\`, a line feed `\n`, a carriage return `\r`, a tab in
//!   a topic `\t`, and a record that starts with `#` gets a `\` before it, so that every line
//!   starting with `#` is a marker ([`MARKER`]);
//! - a record is written at most once: the position of each channel (`next`, and how long its
//!   file was then) is saved in `STATE/streams.json` after every write, and at start the lines
//!   written after the last save are counted back into it (records, and markers' `missing=`);
//! - memory is bounded: at most [`MAX_CHANNELS`] channels, each holding at most its
//!   `OrderConfig::max_held_bytes` out of order; a batch is at most `batch::MAX_BATCH_LEN`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use checkvalve_common::stream::batch::{MAX_BATCH_LEN, Record, RecordBatch, check_channel};
use checkvalve_common::stream::order::{Emit, Gap, Order, OrderConfig};
use checkvalve_formats::live::StreamView;
use checkvalve_formats::manifest::{Detail, Status};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::manifest::Manifest;
use crate::pipeline::messages::ToStreams;
use crate::share::Share;

/// How records are written in a channel's file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamFormat {
    /// One record per line, escaped (`YYYY-MM-DD.log`).
    #[default]
    Lines,
    /// One JSON object per line with the record's number, sender time and topic
    /// (`YYYY-MM-DD.jsonl`).
    Json,
}

impl std::str::FromStr for StreamFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lines" => Ok(StreamFormat::Lines),
            "json" => Ok(StreamFormat::Json),
            other => Err(format!("{other:?}: expected lines or json")),
        }
    }
}

impl StreamFormat {
    /// The extension of its files.
    fn extension(self) -> &'static str {
        match self {
            StreamFormat::Lines => "log",
            StreamFormat::Json => "jsonl",
        }
    }
}

/// The stage's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// How long a hole is waited for, and how much is held meanwhile.
    pub order: OrderConfig,
    /// How records are written.
    pub format: StreamFormat,
    /// A channel's file of the day is continued in `YYYY-MM-DD.N.log` past this size.
    pub max_file: Option<u64>,
}

/// A channel file's name: the day's first file, or its `part`-th continuation.
fn file_name(day: &str, part: u32, format: StreamFormat) -> String {
    match part {
        0 => format!("{day}.{}", format.extension()),
        n => format!("{day}.{n}.{}", format.extension()),
    }
}

/// The day and part of a channel file's name, for ordering them (`None`: not one).
fn file_key(name: &str, format: StreamFormat) -> Option<(String, u32)> {
    let stem = name.strip_suffix(&format!(".{}", format.extension()))?;
    let (day, part) = match stem.split_once('.') {
        Some((day, n)) => (day, n.parse().ok()?),
        None => (stem, 0),
    };
    (day.len() == 10).then(|| (day.to_owned(), part))
}

/// Channels kept at most: a batch of another channel is refused (and counted) beyond them.
pub const MAX_CHANNELS: usize = 256;
/// Every marker line starts with this.
pub const MARKER: &str = "#checkvalve gap";
/// The file in the state folder holding each channel's position.
const STATE_FILE: &str = "streams.json";
/// Longest the stage sleeps between looks at its windows.
const TICK: Duration = Duration::from_millis(50);

/// Where a channel stands, saved after every write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// The next sequence number to write.
    next: u64,
    /// The file written last, and its length after the last write.
    file: String,
    len: u64,
}

/// `STATE/streams.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    channels: BTreeMap<String, Position>,
}

/// One channel: its order and its file.
struct Channel {
    order: Order,
    /// The file being appended to: its day and part.
    file: Option<(String, u32, File)>,
    position: Position,
    /// Sender time of the last record written (for the lag).
    last_lag: Option<Duration>,
}

/// The channels' figures, shared with the live state.
pub type Views = Arc<std::sync::Mutex<Vec<StreamView>>>;

/// The stage.
pub struct Streams {
    views: Views,
    last_view: Option<Instant>,
    share: Arc<Share>,
    manifest: Arc<Manifest>,
    config: OrderConfig,
    format: StreamFormat,
    max_file: Option<u64>,
    channels: HashMap<String, Channel>,
    state_file: PathBuf,
    /// Batches refused (undecodable, or one channel too many).
    refused: u64,
    dirty: bool,
}

impl Streams {
    /// The stage writing into `share`, resuming every channel saved in its state folder.
    pub fn new(
        share: Arc<Share>,
        manifest: Arc<Manifest>,
        settings: StreamSettings,
        views: Views,
    ) -> Self {
        let config = settings.order;
        let state_file = share.state().join(STATE_FILE);
        let saved: Saved = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut s = Streams {
            views,
            last_view: None,
            share,
            manifest,
            config,
            format: settings.format,
            max_file: settings.max_file,
            channels: HashMap::new(),
            state_file,
            refused: 0,
            dirty: false,
        };
        for (name, position) in saved.channels {
            if check_channel(&name).is_err() {
                continue;
            }
            let position = s.recover(&name, position);
            info!(channel = %name, next = position.next, "record channel resumes");
            s.channels.insert(
                name,
                Channel {
                    order: Order::new(config, Some(position.next)),
                    file: None,
                    position,
                    last_lag: None,
                },
            );
        }
        s
    }

    /// Counts back what was written after the last save: the lines past its length in its
    /// file, and every line of the channel's later files.
    fn recover(&mut self, name: &str, mut p: Position) -> Position {
        let format = self.format;
        let from_key = file_key(&p.file, format);
        let mut files: Vec<((String, u32), String)> =
            std::fs::read_dir(self.share.root().join(name))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|f| Some((file_key(&f, format)?, f)))
                .filter(|(k, _)| from_key.as_ref().is_none_or(|from| k >= from))
                .collect();
        files.sort();
        let files: Vec<String> = files.into_iter().map(|(_, f)| f).collect();
        let before = p.next;
        for f in files {
            let Ok(bytes) = self.share.read_channel_file(name, &f) else {
                continue;
            };
            let from = if f == p.file {
                (p.len as usize).min(bytes.len())
            } else {
                0
            };
            for line in bytes[from..].split(|&b| b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                match self.format {
                    StreamFormat::Lines => {
                        p.next += match marker_missing(line) {
                            Some(n) => n,
                            None if line.starts_with(b"#") => 0,
                            None => 1,
                        };
                    }
                    // Each JSON line says its numbers: a record its `seq`, a gap its last.
                    StreamFormat::Json => {
                        let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                        if let Some(seq) = v["seq"].as_u64() {
                            p.next = p.next.max(seq + 1);
                        } else if let Some(last) = v["gap"]["last_seq"].as_u64() {
                            p.next = p.next.max(last + 1);
                        }
                    }
                }
            }
            p.len = bytes.len() as u64;
            p.file = f;
        }
        if p.next != before {
            warn!(channel = %name, lines_after_last_save = p.next - before, "record channel: lines written after the last saved position counted back in (the receiver stopped abruptly)");
            self.dirty = true;
        }
        p
    }

    /// Runs until the queue closes.
    pub fn run(mut self, rx: Receiver<ToStreams>) {
        loop {
            let now = Instant::now();
            let wait = self
                .channels
                .values()
                .filter_map(|c| c.order.next_due())
                .min()
                .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
            match rx.recv_timeout(wait) {
                Ok(msg) => self.on_message(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything queued now, then the windows, then one save.
            while let Ok(msg) = rx.try_recv() {
                self.on_message(msg);
            }
            self.poll(Instant::now());
            self.save();
            self.show(false);
        }
        self.save();
        self.show(true);
    }

    /// Updates the figures the live state shows, at most every 200 ms (or `now`).
    fn show(&mut self, now: bool) {
        let t = Instant::now();
        if !now
            && self
                .last_view
                .is_some_and(|l| t.duration_since(l) < TICK * 4)
        {
            return;
        }
        self.last_view = Some(t);
        let mut views: Vec<StreamView> = self
            .channels
            .iter()
            .map(|(name, c)| {
                let k = c.order.counters();
                StreamView {
                    name: name.clone(),
                    records: k.records,
                    batches: k.batches,
                    gaps: k.gaps,
                    missing: k.missing,
                    duplicates: k.duplicates,
                    next_seq: c.order.next_seq(),
                    lag_ms: c.last_lag.map(|d| d.as_millis() as u64),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        if let Ok(mut v) = self.views.lock() {
            *v = views;
        }
    }

    fn on_message(&mut self, msg: ToStreams) {
        let now = Instant::now();
        match msg {
            ToStreams::Batch { channel, content } => {
                match RecordBatch::decode(&channel, &content) {
                    Ok(batch) => {
                        let Some(c) = self.channel(&channel) else {
                            return;
                        };
                        let mut out = Vec::new();
                        c.order.on_batch(now, batch.records, &mut out);
                        self.write(&channel, out);
                    }
                    Err(e) => {
                        self.refused += 1;
                        warn!(channel = %channel, refused = self.refused, "record batch refused: {e}");
                    }
                }
            }
            ToStreams::Tails(tails) => {
                for (channel, end, time_us) in tails {
                    if check_channel(&channel).is_err() {
                        continue;
                    }
                    if let Some(c) = self.channel(&channel) {
                        c.order.on_tail(now, end, time_us);
                    }
                }
            }
        }
    }

    /// The channel, made if new and there is room.
    fn channel(&mut self, name: &str) -> Option<&mut Channel> {
        if !self.channels.contains_key(name) {
            if self.channels.len() >= MAX_CHANNELS {
                self.refused += 1;
                warn!(channel = %name, "record channel refused: {MAX_CHANNELS} channels already");
                return None;
            }
            info!(channel = %name, "new record channel");
            self.channels.insert(
                name.to_owned(),
                Channel {
                    order: Order::new(self.config, None),
                    file: None,
                    position: Position::default(),
                    last_lag: None,
                },
            );
        }
        self.channels.get_mut(name)
    }

    fn poll(&mut self, now: Instant) {
        let due: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.order.next_due().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let mut out = Vec::new();
            if let Some(c) = self.channels.get_mut(&name) {
                c.order.poll(now, &mut out);
            }
            self.write(&name, out);
        }
    }

    /// Appends what the order emitted to the channel's files, and records its gaps.
    fn write(&mut self, name: &str, out: Vec<Emit>) {
        if out.is_empty() {
            return;
        }
        let Some(c) = self.channels.get_mut(name) else {
            return;
        };
        let (format, max_file) = (self.format, self.max_file);
        for emit in out {
            let first = match &emit {
                Emit::Records(records) => records[0].seq,
                Emit::Gap(gap) => gap.first_seq,
            };
            if first > c.position.next {
                // Records the order emitted whose write failed (a full or failing disk): marked
                // in place once writing works again, like records the link lost.
                let unwritten = Gap {
                    first_seq: c.position.next,
                    missing: first - c.position.next,
                    after_us: None,
                    before_us: None,
                };
                let day = c
                    .file
                    .as_ref()
                    .map_or_else(|| day_of(0), |(d, _, _)| d.clone());
                let text = gap_line(format, name, &unwritten, Some("not-written"));
                if append(&self.share, name, c, &day, (format, max_file), &text).is_err() {
                    continue;
                }
                c.position.next = first;
                warn!(channel = %name, missing = unwritten.missing, first_seq = unwritten.first_seq, "record channel: records not written (a write failed): marked");
                self.manifest.event(
                    Status::StreamGap,
                    None,
                    format!(
                        "{} records of channel {name} not written (a write failed)",
                        unwritten.missing
                    ),
                    Some(Detail::Gap {
                        channel: name.to_owned(),
                        first_seq: unwritten.first_seq,
                        missing: unwritten.missing,
                    }),
                );
            }
            let (day, text) = match &emit {
                Emit::Records(records) => {
                    let day = day_of(records[0].time_us);
                    let mut text =
                        Vec::with_capacity(records.iter().map(|r| r.payload.len() + 1).sum());
                    // A run straddling midnight goes whole into the day it began in.
                    for r in records {
                        match format {
                            StreamFormat::Lines => line(r, &mut text),
                            StreamFormat::Json => json_line(r, &mut text),
                        }
                    }
                    if let Some(r) = records.last() {
                        c.last_lag = lag(r.time_us);
                    }
                    (day, text)
                }
                Emit::Gap(gap) => {
                    let day = c
                        .file
                        .as_ref()
                        .map(|(d, _, _)| d.clone())
                        .unwrap_or_else(|| day_of(gap.before_us.or(gap.after_us).unwrap_or(0)));
                    (day, gap_line(format, name, gap, None))
                }
            };
            if let Err(e) = append(&self.share, name, c, &day, (format, max_file), &text) {
                // The position does not move past them: the next write that works marks them.
                warn!(channel = %name, "record channel file not written: {e}");
                continue;
            }
            match emit {
                Emit::Records(records) => {
                    if let Some(r) = records.last() {
                        c.position.next = r.seq + 1;
                    }
                }
                Emit::Gap(gap) => {
                    c.position.next = gap.first_seq + gap.missing;
                    warn!(channel = %name, missing = gap.missing, first_seq = gap.first_seq, "record channel: records lost");
                    self.manifest.event(
                        Status::StreamGap,
                        None,
                        format!("{} records of channel {name} lost", gap.missing),
                        Some(Detail::Gap {
                            channel: name.to_owned(),
                            first_seq: gap.first_seq,
                            missing: gap.missing,
                        }),
                    );
                }
            }
            self.dirty = true;
        }
        debug!(channel = %name, counters = ?c.order.counters(), "record channel written");
    }

    /// Saves every channel's position if anything was written since the last save.
    fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let saved = Saved {
            channels: self
                .channels
                .iter()
                .map(|(n, c)| (n.clone(), c.position.clone()))
                .collect(),
        };
        let tmp = self.state_file.with_extension("json.new");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.state_file));
        match written {
            Ok(()) => self.dirty = false,
            Err(e) => {
                warn!(file = %self.state_file.display(), "record channel positions not saved: {e}")
            }
        }
    }
}

/// Appends `text` to the channel's file of `day`, switching files at a new day, and to the next
/// part of the day past the size limit (`how`: the format and the limit).
fn append(
    share: &Share,
    name: &str,
    c: &mut Channel,
    day: &str,
    how: (StreamFormat, Option<u64>),
    text: &[u8],
) -> std::io::Result<()> {
    let (format, max_file) = how;
    let current = c.file.as_ref().map(|(d, part, _)| (d.clone(), *part));
    let part = match &current {
        Some((d, part)) if d == day => {
            let full = max_file
                .is_some_and(|max| c.position.len > 0 && c.position.len + text.len() as u64 > max);
            *part + u32::from(full)
        }
        // A new day, or the first write of this run: where the saved position says, that day.
        _ => file_key(&c.position.file, format)
            .filter(|(d, _)| d == day)
            .map_or(0, |(_, part)| part),
    };
    if current.as_ref().is_none_or(|(d, p)| d != day || *p != part) {
        let f = share.open_channel_file(name, &file_name(day, part, format))?;
        c.position.len = f.metadata()?.len();
        c.file = Some((day.to_owned(), part, f));
    }
    let Some((_, _, f)) = c.file.as_mut() else {
        return Ok(());
    };
    f.write_all(text)?;
    c.position.file = file_name(day, part, format);
    c.position.len = f
        .stream_position()
        .or_else(|_| f.metadata().map(|m| m.len()))?;
    Ok(())
}

/// Appends the line of `r`: `TOPIC<tab>` first when it has a topic, escaped as documented.
fn line(r: &Record, out: &mut Vec<u8>) {
    if !r.topic.is_empty() {
        escape(&r.topic, true, out);
        out.push(b'\t');
    } else if r.payload.first() == Some(&b'#') {
        out.push(b'\\');
    }
    escape(&r.payload, false, out);
    out.push(b'\n');
}

fn escape(bytes: &[u8], tab: bool, out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' if tab => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

/// The marker line of a gap (`reason`: why, when not lost on the link).
pub fn marker(channel: &str, gap: &Gap, reason: Option<&str>) -> String {
    let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), rfc3339);
    format!(
        "{MARKER} channel={channel} missing={} first_seq={} last_seq={} after={} before={}{}\n",
        gap.missing,
        gap.first_seq,
        gap.first_seq + gap.missing - 1,
        time(gap.after_us),
        time(gap.before_us),
        reason.map_or_else(String::new, |r| format!(" reason={r}")),
    )
}

/// A gap's line in `format`.
fn gap_line(format: StreamFormat, channel: &str, gap: &Gap, reason: Option<&str>) -> Vec<u8> {
    match format {
        StreamFormat::Lines => marker(channel, gap, reason).into_bytes(),
        StreamFormat::Json => {
            let time = |t: Option<i64>| t.map(rfc3339);
            let mut v = serde_json::json!({
                "gap": {
                    "channel": channel,
                    "missing": gap.missing,
                    "first_seq": gap.first_seq,
                    "last_seq": gap.first_seq + gap.missing - 1,
                    "after": time(gap.after_us),
                    "before": time(gap.before_us),
                }
            });
            if let Some(r) = reason {
                v["gap"]["reason"] = r.into();
            }
            let mut out = v.to_string().into_bytes();
            out.push(b'\n');
            out
        }
    }
}

/// Appends the JSON line of `r`: its number, sender time, topic (MQTT) and the record, as a
/// string when it is UTF-8, else as hex (`record_hex`).
fn json_line(r: &Record, out: &mut Vec<u8>) {
    let mut v = serde_json::json!({ "seq": r.seq, "time": rfc3339(r.time_us) });
    if !r.topic.is_empty() {
        v["topic"] = String::from_utf8_lossy(&r.topic).into();
    }
    match std::str::from_utf8(&r.payload) {
        Ok(text) => v["record"] = text.into(),
        Err(_) => {
            v["record_hex"] = r
                .payload
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into()
        }
    }
    if serde_json::to_writer(&mut *out, &v).is_ok() {
        out.push(b'\n');
    }
}

/// The `missing=` count of a marker line.
fn marker_missing(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix(MARKER)?;
    rest.split(' ')
        .find_map(|f| f.strip_prefix("missing="))?
        .parse()
        .ok()
}

fn system_time(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH
    }
}

fn rfc3339(us: i64) -> String {
    humantime::format_rfc3339_micros(system_time(us)).to_string()
}

/// The UTC day of a sender time, `YYYY-MM-DD`.
fn day_of(us: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(us)).to_string()[..10].to_string()
}

/// How long ago (by this host's clock) the sender took a record.
fn lag(us: i64) -> Option<Duration> {
    SystemTime::now().duration_since(system_time(us)).ok()
}

/// Reads a record batch's verified content from its temporary file (at most a batch's bound).
pub fn read_content(file: &mut File, size: u64) -> std::io::Result<Vec<u8>> {
    if size > MAX_BATCH_LEN as u64 {
        return Err(std::io::Error::other("record batch larger than the bound"));
    }
    file.rewind()?;
    let mut out = Vec::with_capacity(size as usize);
    file.take(size).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A share holding channel `c`'s file with `before` (saved as written up to its end) and
    /// `after` (written after the last save), resumed by a new stage in `format`.
    fn resumed(format: StreamFormat, next: u64, before: &str, after: &str) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(&dir.path().join("out"), None).unwrap();
        let share = Arc::new(share);
        let manifest = Arc::new(Manifest::open(&dir.path().join("m"), 0).unwrap());
        let name = format!("2026-12-03.{}", format.extension());
        let mut f = share.open_channel_file("c", &name).unwrap();
        f.write_all(before.as_bytes()).unwrap();
        f.write_all(after.as_bytes()).unwrap();
        let saved = Saved {
            channels: [(
                "c".to_string(),
                Position {
                    next,
                    file: name,
                    len: before.len() as u64,
                },
            )]
            .into(),
        };
        std::fs::write(
            share.state().join(STATE_FILE),
            serde_json::to_vec(&saved).unwrap(),
        )
        .unwrap();
        let settings = StreamSettings {
            format,
            ..StreamSettings::default()
        };
        let s = Streams::new(share, manifest, settings, Views::default());
        s.channels.get("c").and_then(|c| c.order.next_seq())
    }

    #[test]
    fn lines_written_after_the_last_save_are_counted_back_in_at_start() {
        let marker =
            "#checkvalve gap channel=c missing=4 first_seq=8 last_seq=11 after=- before=-\n";
        assert_eq!(
            resumed(
                StreamFormat::Lines,
                5,
                "a\nb\nc\nd\ne\n",
                &format!("f\n\\#g\nh\n{marker}")
            ),
            Some(12)
        );
        assert_eq!(resumed(StreamFormat::Lines, 5, "a\n", ""), Some(5));
        let after = "{\"seq\":5,\"time\":\"x\",\"record\":\"f\"}\n{\"gap\":{\"first_seq\":6,\"last_seq\":9,\"missing\":4}}\n";
        assert_eq!(resumed(StreamFormat::Json, 5, "", after), Some(10));
    }

    #[test]
    fn lines_escape_newlines_and_leading_hashes_and_markers_count_back() {
        let mut out = Vec::new();
        let r = |topic: &[u8], payload: &[u8]| Record {
            seq: 0,
            time_us: 0,
            topic: topic.to_vec(),
            payload: payload.to_vec(),
        };
        line(&r(b"", b"a\nb\\c\r"), &mut out);
        line(&r(b"", b"#not a marker"), &mut out);
        line(&r(b"t/1\t", b"v\t1"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\nb\\\\c\\r\n\\#not a marker\nt/1\\t\tv\t1\n"
        );
        let m = marker(
            "syslog",
            &Gap {
                first_seq: 5,
                missing: 7,
                after_us: Some(0),
                before_us: None,
            },
            None,
        );
        assert_eq!(
            m,
            "#checkvalve gap channel=syslog missing=7 first_seq=5 last_seq=11 after=1970-01-01T00:00:00.000000Z before=-\n"
        );
        assert_eq!(marker_missing(m.trim_end().as_bytes()), Some(7));
        assert_eq!(day_of(86_400_000_000), "1970-01-02");
        let key = |n: &str| file_key(n, StreamFormat::Lines);
        let mut names = [
            "2026-12-03.10.log",
            "2026-12-04.log",
            "2026-12-03.log",
            "2026-12-03.2.log",
        ];
        names.sort_by_key(|n| key(n));
        assert_eq!(
            names,
            [
                "2026-12-03.log",
                "2026-12-03.2.log",
                "2026-12-03.10.log",
                "2026-12-04.log"
            ]
        );
        assert_eq!(key("2026-12-03.jsonl"), None);
        assert_eq!(
            file_name("2026-12-03", 2, StreamFormat::Json),
            "2026-12-03.2.jsonl"
        );
    }
}
