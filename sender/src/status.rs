//! The status file in the state folder, written by the running service every second, and the
//! `checkvalve-send status` command that reads it (no running sender needed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use checkvalve_common::units::format_size;
use checkvalve_formats::sender::{ChannelStatus, FILE, Problem, Status};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

use crate::archive::day;
use crate::config::{Config, glob};
use crate::kept::Kept;

/// A status older than this, from a sender that did not say it stopped, means it died.
const STALE: Duration = Duration::from_secs(10);

/// The last warning or error logged, kept for the status file.
static LAST_PROBLEM: Mutex<Option<Problem>> = Mutex::new(None);

/// Keeps the last WARN or ERROR event for the status file.
pub struct LastProblem;

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?} "));
        } else {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value} "));
        } else {
            self.0.push_str(&format!("{}={value} ", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for LastProblem {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        let problem = Problem {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            level: level.to_string(),
            message: text.0.trim_end().to_owned(),
        };
        *LAST_PROBLEM
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(problem);
    }
}

/// Fills the time and last problem and writes `status` atomically into `state`.
pub fn write(status: &mut Status, state: &Path) -> std::io::Result<()> {
    let now = SystemTime::now();
    status.sent.roll(&day(now));
    status.updated = humantime::format_rfc3339_seconds(now).to_string();
    status.updated_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    status.last_problem = LAST_PROBLEM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .or_else(|| status.last_problem.take());
    let tmp = state.join(format!("{FILE}.new"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?)?;
    fs::rename(&tmp, state.join(FILE))
}

/// How recent an ERROR must be for `status` to call the sender unhealthy.
const RECENT_ERROR: std::time::Duration = std::time::Duration::from_secs(300);

/// Prints the status of the sender configured by `cfg` (live queue from its spools) or of the one
/// whose state folder is `state` (the queue as last written). True when the sender is healthy:
/// running, with no ERROR in the last five minutes (a health check's exit code).
pub fn print(cfg: Option<&Config>, state: Option<&Path>, json: bool) -> anyhow::Result<bool> {
    let state = state
        .map(Path::to_path_buf)
        .or_else(|| cfg.and_then(|c| c.state.clone()));
    let status = state.as_deref().and_then(Status::read);
    let now = SystemTime::now();
    let channels = match cfg {
        Some(cfg) => {
            let kept = Kept::open_read_only(state.as_deref());
            cfg.channels
                .iter()
                .map(|c| live_queue(&c.name, &c.spool, &cfg.ignore, &kept, now))
                .collect()
        }
        None => status
            .as_ref()
            .map(|s| s.channels.clone())
            .unwrap_or_default(),
    };
    let running = status.as_ref().is_some_and(|s| {
        !s.stopped
            && now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
                <= s.updated_unix + STALE.as_secs()
    });
    let recent_error = status
        .as_ref()
        .and_then(|s| s.last_problem.as_ref())
        .filter(|p| p.level == "ERROR")
        .and_then(|p| humantime::parse_rfc3339(&p.time).ok())
        .is_some_and(|t| now.duration_since(t).unwrap_or_default() < RECENT_ERROR);
    let healthy = running && !recent_error;
    if json {
        let v = serde_json::json!({
            "running": running,
            "healthy": healthy,
            "state": state,
            "status": status,
            "channels": channels,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(healthy);
    }
    match (&state, &status) {
        (None, _) => {
            println!("sender:        no state folder configured (no counters, no last error)")
        }
        (Some(st), None) => println!(
            "sender:        never ran with state folder {}",
            st.display()
        ),
        (Some(_), Some(s)) if running => println!(
            "sender:        running (pid {}, session {}, since {}, status written {})",
            s.pid, s.session, s.started, s.updated
        ),
        (Some(_), Some(s)) => println!(
            "sender:        NOT RUNNING (last status {}{})",
            s.updated,
            if s.stopped {
                ", stopped cleanly"
            } else {
                ", did not stop cleanly"
            }
        ),
    }
    if let Some(s) = &status {
        let (files, bytes) = if s.sent.day == day(now) {
            (s.sent.files_today, s.sent.bytes_today)
        } else {
            (0, 0)
        };
        println!(
            "sent today:    {files} files, {} (UTC day {})",
            format_size(bytes),
            day(now)
        );
        println!(
            "sent in all:   {} files, {}",
            s.sent.files_total,
            format_size(s.sent.bytes_total)
        );
        match &s.last_problem {
            Some(p) => println!("last error:    {} {} {}", p.time, p.level, p.message),
            None => println!("last error:    none"),
        }
    }
    println!("queue:");
    for c in &channels {
        let oldest = match (&c.oldest, c.oldest_age_s) {
            (Some(p), Some(age)) => format!(
                ", oldest {} ({} old)",
                p.display(),
                humantime::format_duration(Duration::from_secs(age))
            ),
            _ => String::new(),
        };
        let name = if c.name.is_empty() {
            "(spool)"
        } else {
            &c.name
        };
        println!(
            "  {name:<14} {} files, {}{oldest}",
            c.queued,
            format_size(c.queued_bytes)
        );
    }
    if let Some(s) = status.as_ref().filter(|s| !s.streams.is_empty()) {
        println!("streams:");
        for st in &s.streams {
            println!(
                "  {:<14} {}  spooled {}, sent {} ({} waiting), last record {}",
                st.name,
                st.input,
                st.spooled,
                st.sent,
                st.spooled.saturating_sub(st.sent),
                st.last_record.as_deref().unwrap_or("none yet")
            );
        }
    }
    Ok(healthy)
}

/// What waits in a spool now: every file not ignored and not kept, the oldest by modification time.
fn live_queue(
    name: &str,
    spool: &Path,
    ignore: &[String],
    kept: &Kept,
    now: SystemTime,
) -> ChannelStatus {
    let mut files = Vec::new();
    walk(spool, ignore, &mut files);
    let mut out = ChannelStatus {
        name: name.to_owned(),
        queued: 0,
        queued_bytes: 0,
        oldest: None,
        oldest_age_s: None,
    };
    let mut oldest: Option<SystemTime> = None;
    for (path, m) in files {
        let Ok(mtime) = m.modified() else { continue };
        if kept.contains(&path, (m.len(), mtime)) {
            continue;
        }
        out.queued += 1;
        out.queued_bytes += m.len();
        if oldest.is_none_or(|o| mtime < o) {
            oldest = Some(mtime);
            out.oldest_age_s = Some(now.duration_since(mtime).map_or(0, |d| d.as_secs()));
            out.oldest = Some(path);
        }
    }
    out
}

fn walk(dir: &Path, ignore: &[String], out: &mut Vec<(PathBuf, fs::Metadata)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        if name
            .to_str()
            .is_none_or(|n| ignore.iter().any(|p| glob(p, n)))
        {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            walk(&e.path(), ignore, out);
        } else if m.is_file() {
            out.push((e.path(), m));
        }
    }
}
