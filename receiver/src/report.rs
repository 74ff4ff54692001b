//! `checkvalve-receive report`: what crossed and what did not, from the manifest and the live
//! state alone (no running receiver needed), as text for a review or JSON for tools.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use checkvalve_formats::live;
use checkvalve_formats::manifest::{Detail, Record, Status};

use crate::audit;
use crate::manifest::files;

/// Report layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people: a page a security team attaches to a review.
    Text,
    /// One JSON object, for tools.
    Json,
}

/// A lost object, as the report lists it.
#[derive(Debug, Serialize)]
struct Lost {
    time: String,
    path: Option<String>,
    object: Option<String>,
    objects: u64,
    reason: String,
}

/// A file delivered, as `--files` lists it.
#[derive(Debug, Serialize)]
struct Delivered {
    time: String,
    path: String,
    size: u64,
    sha256: String,
    object: Option<String>,
}

/// A record channel's gaps in the period.
#[derive(Debug, Default, Serialize)]
struct ChannelGaps {
    channel: String,
    gaps: u64,
    records_missing: u64,
}

/// A sender session the period heard, and what its heartbeats say of the link.
#[derive(Debug, Default, Serialize)]
struct Session {
    session: String,
    first_heard: String,
    datagrams_sent: u64,
    datagrams_received: u64,
    loss_rate: Option<f64>,
}

/// A link or session event.
#[derive(Debug, Serialize)]
struct LinkEvent {
    time: String,
    event: Status,
    reason: String,
}

/// The report.
#[derive(Debug, Default, Serialize)]
struct Report {
    period_from: Option<String>,
    period_to: String,
    receiver: String,
    link: String,
    link_since: Option<String>,
    last_heartbeat: Option<String>,
    files_delivered: u64,
    bytes_delivered: u64,
    files_repaired: u64,
    shards_repaired: u64,
    repeats: u64,
    superseded: u64,
    removed_by_retention: u64,
    objects_lost: u64,
    lost: Vec<Lost>,
    /// Record channels' gaps, and the records lost in them.
    stream_gaps: u64,
    records_missing: u64,
    /// The same by record channel, in order of name.
    record_channels: Vec<ChannelGaps>,
    datagrams_sent: u64,
    datagrams_received: u64,
    loss_rate: Option<f64>,
    /// How datagrams are authenticated: the key ids, or none.
    authentication: String,
    sessions: Vec<Session>,
    /// With `--files`: every file delivered in the period.
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<Delivered>>,
    sender_restarts: u64,
    link_downs: u64,
    link_events: Vec<LinkEvent>,
    manifest_records: u64,
    manifest_verifies: bool,
    manifest_problem: Option<String>,
}

/// A bound of the report's period: a date (`2026-11-01`, UTC midnight), a time (RFC 3339), or a
/// duration back from now (`24h`, `30d`).
pub fn parse_bound(s: &str) -> Result<SystemTime, String> {
    if let Ok(d) = checkvalve_common::units::parse_duration(s) {
        return Ok(SystemTime::now().checked_sub(d).unwrap_or(UNIX_EPOCH));
    }
    let t = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    humantime::parse_rfc3339_weak(&t).map_err(|_| {
        format!("{s:?}: expected a date (2026-11-01), a time (2026-11-01T06:00:00Z) or a duration back from now (24h, 30d)")
    })
}

/// What the report covers.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    /// From (everything if `None`).
    pub since: Option<SystemTime>,
    /// Up to (now if `None`).
    pub until: Option<SystemTime>,
    /// List every delivered file with its SHA-256.
    pub files: bool,
}

/// Prints the report of the receiver whose share is `out` and state folder `state`.
pub fn print(out: &Path, state: &Path, period: Period, format: Format) -> Result<()> {
    let now = SystemTime::now();
    let from = period.since;
    let to = period.until.unwrap_or(now);
    let from_text = from.map(|t| humantime::format_rfc3339_millis(t).to_string());
    let to_text = humantime::format_rfc3339_millis(to).to_string();
    let mut r = Report {
        period_from: from.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        period_to: humantime::format_rfc3339_seconds(to).to_string(),
        files: period.files.then(Vec::new),
        ..Report::default()
    };
    let mut sessions: std::collections::BTreeMap<String, Session> = Default::default();
    let live = live::State::read(state);
    let mut running = false;
    match &live {
        Some(l) => {
            let fresh = now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(l.updated_unix)
                <= 10;
            r.receiver = if l.stopped {
                format!("stopped (last state {})", l.updated)
            } else if fresh {
                format!(
                    "running (pid {}, listening on {}, since {})",
                    l.pid, l.bind, l.started
                )
            } else {
                format!(
                    "NOT RUNNING: no live state since {} and no clean stop",
                    l.updated
                )
            };
            running = !l.stopped && fresh;
            if running {
                r.link = l.link.to_string();
                r.link_since = l.link_since.clone();
            } else {
                r.link = format!("unknown (receiver not running; last seen {})", l.link);
            }
            r.last_heartbeat = l.last_heartbeat.clone();
            r.authentication = if l.authenticated {
                format!(
                    "authenticated by key{} {}",
                    if l.key_ids.len() == 1 { "" } else { "s" },
                    l.key_ids
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                "NONE: the receiver runs with --allow-unauthenticated and no key".into()
            };
        }
        None => {
            r.receiver = "never ran with this state folder".into();
            r.link = "unknown".into();
            r.authentication = "unknown".into();
        }
    }
    let dir = state.join("manifest");
    for file in files(&dir).unwrap_or_default() {
        let Ok(f) = File::open(&file) else { continue };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            let Some(v) = Record::parse(line.as_bytes()) else {
                continue;
            };
            let time = v.time;
            if from_text.as_ref().is_some_and(|f| time < *f) || time > to_text {
                continue;
            }
            let reason = v.reason.unwrap_or_default();
            match v.status {
                Status::Delivered => {
                    if let Some(files) = &mut r.files {
                        files.push(Delivered {
                            time: time.clone(),
                            path: v.path.clone().unwrap_or_default(),
                            size: v.size.unwrap_or(0),
                            sha256: v.sha256.clone().unwrap_or_default(),
                            object: v.object.clone(),
                        });
                    }
                    r.files_delivered += 1;
                    r.bytes_delivered += v.size.unwrap_or(0);
                    let repaired = v.repaired.unwrap_or(0);
                    r.shards_repaired += repaired;
                    r.files_repaired += u64::from(repaired > 0);
                }
                Status::Repeat => r.repeats += 1,
                Status::Superseded => r.superseded += 1,
                Status::Removed => r.removed_by_retention += 1,
                Status::Lost => {
                    r.objects_lost += v.objects;
                    r.lost.push(Lost {
                        time,
                        path: v.path,
                        object: v.object,
                        objects: v.objects,
                        reason,
                    });
                }
                Status::StreamGap => {
                    r.stream_gaps += 1;
                    if let Some(Detail::Gap {
                        missing, channel, ..
                    }) = v.detail
                    {
                        r.records_missing += missing;
                        let at = match r
                            .record_channels
                            .binary_search_by(|c| c.channel.as_str().cmp(&channel))
                        {
                            Ok(i) => i,
                            Err(i) => {
                                let c = ChannelGaps {
                                    channel,
                                    ..ChannelGaps::default()
                                };
                                r.record_channels.insert(i, c);
                                i
                            }
                        };
                        r.record_channels[at].gaps += 1;
                        r.record_channels[at].records_missing += missing;
                    }
                }
                Status::Loss => {
                    if let Some(Detail::Loss { sent, received, .. }) = v.detail {
                        r.datagrams_sent += sent;
                        r.datagrams_received += received;
                        if let Some(s) = v.object.as_deref() {
                            let e = session_of(&mut sessions, s, &time);
                            e.datagrams_sent += sent;
                            e.datagrams_received += received;
                        }
                    }
                }
                event @ (Status::LinkDown
                | Status::LinkUp
                | Status::SenderRestart
                | Status::SessionStart
                | Status::Torn
                | Status::ChainBreak
                | Status::SessionsRefused) => {
                    if matches!(event, Status::SessionStart | Status::SenderRestart)
                        && let Some(s) = v.object.as_deref()
                    {
                        session_of(&mut sessions, s, &time);
                    }
                    r.sender_restarts += u64::from(event == Status::SenderRestart);
                    r.link_downs += u64::from(event == Status::LinkDown);
                    r.link_events.push(LinkEvent {
                        time,
                        event,
                        reason,
                    });
                }
            }
        }
    }
    // Up to now: what the running receiver's sessions' heartbeats said since their last loss
    // record (written every loss_interval), so that the figure does not lag the link.
    if let Some(l) = &live
        && running
        && period.until.is_none()
    {
        for s in &l.sessions {
            let Some(sent) = s.sender_sent else { continue };
            let e = session_of(&mut sessions, &s.session, &r.period_to);
            let (more_sent, more_received) = (
                sent.saturating_sub(e.datagrams_sent),
                s.received.saturating_sub(e.datagrams_received),
            );
            e.datagrams_sent += more_sent;
            e.datagrams_received += more_received;
            r.datagrams_sent += more_sent;
            r.datagrams_received += more_received;
        }
    }
    for s in sessions.values_mut() {
        if s.datagrams_sent > 0 {
            s.loss_rate =
                Some((1.0 - s.datagrams_received as f64 / s.datagrams_sent as f64).max(0.0));
        }
    }
    r.sessions = sessions.into_values().collect();
    if r.datagrams_sent > 0 {
        r.loss_rate = Some((1.0 - r.datagrams_received as f64 / r.datagrams_sent as f64).max(0.0));
    }
    match audit::verify(&dir, None, live.map(|l| l.chain_end()).as_ref()) {
        Ok(v) => {
            r.manifest_records = v.records;
            r.manifest_verifies = true;
        }
        Err(e) => r.manifest_problem = Some(e.to_string()),
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Format::Text => print_text(&r, out),
    }
    Ok(())
}

/// The session `id`'s entry, made (first heard at `time`) if new.
fn session_of<'a>(
    sessions: &'a mut std::collections::BTreeMap<String, Session>,
    id: &str,
    time: &str,
) -> &'a mut Session {
    sessions.entry(id.to_owned()).or_insert_with(|| Session {
        session: id.to_owned(),
        first_heard: time.to_owned(),
        ..Session::default()
    })
}

fn print_text(r: &Report, out: &Path) {
    println!("checkvalve transfer report");
    println!("==========================");
    println!(
        "period:            {} to {}",
        r.period_from.as_deref().unwrap_or("the first record"),
        r.period_to
    );
    println!("share:             {}", out.display());
    println!("receiver:          {}", r.receiver);
    // A bare state (up, down) stands out in capitals; a sentence stays as written.
    let link = if r.link.contains(' ') {
        r.link.clone()
    } else {
        r.link.to_uppercase()
    };
    println!(
        "link:              {}{}",
        link,
        r.link_since
            .as_ref()
            .map(|s| format!(" since {s}"))
            .unwrap_or_default()
    );
    println!(
        "last heartbeat:    {}",
        r.last_heartbeat.as_deref().unwrap_or("none heard")
    );
    println!("authentication:    {}", r.authentication);
    println!();
    println!(
        "files received:    {} ({} bytes)",
        r.files_delivered, r.bytes_delivered
    );
    println!(
        "repairs:           {} files needed parity ({} data shards rebuilt)",
        r.files_repaired, r.shards_repaired
    );
    println!(
        "repeats:           {} copies of files already published",
        r.repeats
    );
    println!("superseded:        {}", r.superseded);
    println!(
        "retention:         {} files removed",
        r.removed_by_retention
    );
    match r.loss_rate {
        Some(l) => println!(
            "datagram loss:     {:.3}% ({} of {} datagrams the sender reported)",
            l * 100.0,
            r.datagrams_sent.saturating_sub(r.datagrams_received),
            r.datagrams_sent
        ),
        None => println!("datagram loss:     not measured (no loss records in the period)"),
    }
    println!("sender restarts:   {}", r.sender_restarts);
    for s in &r.sessions {
        println!(
            "  session {}  first heard {}  {}",
            s.session,
            s.first_heard,
            match s.loss_rate {
                Some(l) => format!("loss {:.3}% of {} datagrams", l * 100.0, s.datagrams_sent),
                None => "loss not measured".to_owned(),
            }
        );
    }
    println!("link down:         {} times", r.link_downs);
    println!();
    println!("LOST OBJECTS:      {}", r.objects_lost);
    for l in &r.lost {
        let what = match (&l.path, &l.object) {
            (Some(p), _) => p.clone(),
            (None, Some(o)) => format!("{} unnamed object(s) of session {o}", l.objects),
            (None, None) => format!("{} unnamed object(s)", l.objects),
        };
        println!("  {}  {}  ({})", l.time, what, l.reason);
    }
    println!(
        "RECORDS MISSING:   {} in {} gap(s) of record channels",
        r.records_missing, r.stream_gaps
    );
    for c in &r.record_channels {
        println!(
            "  {:<16} {} records in {} gap(s)",
            c.channel, c.records_missing, c.gaps
        );
    }
    if let Some(files) = &r.files {
        println!();
        println!("files delivered ({}):", files.len());
        for f in files {
            println!(
                "  {}  {}  {} bytes  sha256 {}",
                f.time, f.path, f.size, f.sha256
            );
        }
    }
    if !r.link_events.is_empty() {
        println!();
        println!("link events:");
        for e in &r.link_events {
            println!("  {}  {:<15} {}", e.time, e.event, e.reason);
        }
    }
    println!();
    match &r.manifest_problem {
        None => println!(
            "manifest:          chain verified ({} records in all)",
            r.manifest_records
        ),
        Some(p) => println!("manifest:          DOES NOT VERIFY: {p}"),
    }
}
