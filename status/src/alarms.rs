//! What is wrong, from the live state: the page's banner, `/healthz` and `/api/live.json` all
//! read these, so that they never disagree.

use serde::Serialize;

use checkvalve_formats::live::{Link, State};

use crate::View;

/// Losses newer than this keep the page red (a day: an operator who looks once a shift sees it).
pub const RECENT_LOSS_S: u64 = 24 * 3600;
/// Authentication refusals within this long raise an alarm.
pub const REFUSALS_WINDOW_S: u64 = 600;
/// The share's free space below this many times `min_free` raises an alarm (files are refused
/// below `min_free` itself).
pub const DISK_LOW_FACTOR: u64 = 2;

/// One kind of alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The receiver wrote no live state lately, or stopped.
    ReceiverDown,
    /// Nothing arrives, not even a heartbeat.
    LinkDown,
    /// Files or objects were lost within the last day.
    FilesLost,
    /// A record channel lost records.
    RecordsMissing,
    /// Datagrams were refused by authentication within the last ten minutes (forged, replayed,
    /// or a sender without the key).
    AuthRefusals,
    /// The share's filesystem is close to `min_free`.
    DiskLow,
    /// The receiver runs without a key.
    Unauthenticated,
}

/// An alarm: its kind and what to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alarm {
    /// What is wrong.
    pub kind: Kind,
    /// For people.
    pub text: String,
}

/// Seconds since the Unix epoch of an RFC 3339 time.
pub fn unix_of(rfc3339: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The alarms of `view` at `now` (Unix seconds), the most urgent first.
pub fn of(view: &View, now: u64) -> Vec<Alarm> {
    let mut out = Vec::new();
    let Some(l) = &view.live else {
        out.push(Alarm {
            kind: Kind::ReceiverDown,
            text: "the receiver never ran with this state folder".into(),
        });
        return out;
    };
    if !view.running {
        out.push(Alarm {
            kind: Kind::ReceiverDown,
            text: if l.stopped {
                "the receiver is stopped".into()
            } else {
                "the receiver is not running (no live state for more than 5 s)".into()
            },
        });
    } else if l.link == Link::Down {
        out.push(Alarm {
            kind: Kind::LinkDown,
            text: "the link is down: no datagram, not even a heartbeat".into(),
        });
    }
    let recent: u64 = l
        .tally
        .recent_losses
        .iter()
        .filter(|x| unix_of(&x.time).is_some_and(|t| now.saturating_sub(t) <= RECENT_LOSS_S))
        .map(|x| x.objects.max(1))
        .sum();
    if recent > 0 {
        out.push(Alarm {
            kind: Kind::FilesLost,
            text: format!(
                "{recent} objects lost in the last 24 h ({} in the manifest in all)",
                l.tally.lost
            ),
        });
    }
    let missing: u64 = l.streams.iter().map(|s| s.missing).sum();
    if missing > 0 {
        out.push(Alarm {
            kind: Kind::RecordsMissing,
            text: format!("{missing} records missing in record channels"),
        });
    }
    let refused = refusals_since(l, now.saturating_sub(REFUSALS_WINDOW_S));
    if refused > 0 {
        out.push(Alarm {
            kind: Kind::AuthRefusals,
            text: format!(
                "{refused} datagrams refused by authentication in the last 10 min (forged, replayed, or a sender without the key)"
            ),
        });
    }
    if let Some(d) = l.disk
        && d.free_bytes < d.min_free_bytes.saturating_mul(DISK_LOW_FACTOR)
    {
        out.push(Alarm {
            kind: Kind::DiskLow,
            text: format!(
                "the share's disk is low: {} free, files are refused below {}",
                crate::page::bytes(d.free_bytes),
                crate::page::bytes(d.min_free_bytes)
            ),
        });
    }
    if !l.authenticated {
        out.push(Alarm {
            kind: Kind::Unauthenticated,
            text: "no key: anyone on the DMZ side can forge what the receiver publishes".into(),
        });
    }
    out
}

/// Refusals counted since `from` (Unix seconds): the counter now against the newest history
/// sample at or before `from` (or the oldest sample of this run).
fn refusals_since(l: &State, from: u64) -> u64 {
    let base = l
        .history
        .iter()
        .filter(|s| s.t >= l.started_unix)
        .take_while(|s| s.t <= from)
        .last()
        .or_else(|| l.history.iter().find(|s| s.t >= l.started_unix))
        .map_or(0, |s| s.refused_auth);
    l.refused_auth.saturating_sub(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use checkvalve_formats::live::{Disk, RecentLoss, Sample};

    fn running(l: State) -> View {
        View {
            live: Some(l),
            running: true,
            age_s: Some(0),
        }
    }

    #[test]
    fn a_healthy_receiver_has_no_alarm() {
        let l = State {
            authenticated: true,
            link: Link::Up,
            ..State::default()
        };
        assert!(of(&running(l), 1_000_000).is_empty());
    }

    #[test]
    fn losses_link_down_refusals_and_disk_raise_alarms() {
        let mut l = State {
            authenticated: true,
            link: Link::Down,
            refused_auth: 50,
            started_unix: 1_000,
            disk: Some(Disk {
                free_bytes: 100,
                min_free_bytes: 80,
            }),
            ..State::default()
        };
        l.tally.lost = 5;
        l.tally.recent_losses.push_back(RecentLoss {
            time: "2026-12-01T10:00:00Z".into(),
            what: "a.csv".into(),
            objects: 5,
            reason: "x".into(),
        });
        l.history.push_back(Sample {
            t: 2_000,
            refused_auth: 20,
            ..Sample::default()
        });
        let now = unix_of("2026-12-01T12:00:00Z").unwrap();
        let kinds: Vec<Kind> = of(&running(l.clone()), now)
            .iter()
            .map(|a| a.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::LinkDown,
                Kind::FilesLost,
                Kind::AuthRefusals,
                Kind::DiskLow
            ]
        );
        // Two days later the loss is history; the refusals stopped rising.
        let later = now + 2 * 24 * 3600;
        for t in [later - 700, later - 60] {
            l.history.push_back(Sample {
                t,
                refused_auth: 50,
                ..Sample::default()
            });
        }
        let kinds: Vec<Kind> = of(&running(l), later).iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [Kind::LinkDown, Kind::DiskLow]);
    }
}
