//! `/`: one self-contained HTML page (no script, no external resource) with the link state,
//! throughput and loss over the last hour as charts (inline SVG), recent files and every recent loss.

use std::fmt::Write;

use crate::View;
use checkvalve_formats::live::{Link, Sample};

/// Colour of the throughput series (the page test looks for it in a screenshot).
pub const THROUGHPUT_COLOUR: &str = "#1f6fd1";
/// Colour of the loss series.
pub const LOSS_COLOUR: &str = "#d1451f";
/// Background of the banner in alarm (the page test looks for it in a screenshot).
pub const ALARM_COLOUR: &str = "#b71c1c";
/// Background of the banner with no alarm.
pub const CLEAR_COLOUR: &str = "#2e7d32";
/// An interval in which the senders sent fewer datagrams than this is not plotted as loss: an
/// idle link's heartbeats are a handful, and one in flight at a sample's edge read as 80 % loss.
const MIN_SENT_FOR_LOSS: u64 = 100;

fn esc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c if c.is_control() => "\u{fffd}".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// A size for people (binary units).
pub fn bytes(n: u64) -> String {
    checkvalve_common::units::format_size(n)
}

/// (start, end, throughput in Mbit/s, loss in % if the interval had traffic) per interval of
/// the history.
fn rates(history: &[Sample]) -> Vec<(u64, u64, f64, Option<f64>)> {
    history
        .windows(2)
        .filter(|w| w[1].t > w[0].t)
        .map(|w| {
            let dt = (w[1].t - w[0].t) as f64;
            let mbps = w[1].bytes.saturating_sub(w[0].bytes) as f64 * 8.0 / dt / 1e6;
            let sent = w[1].sender_sent.saturating_sub(w[0].sender_sent);
            let got = w[1].received.saturating_sub(w[0].received);
            let loss = (sent >= MIN_SENT_FOR_LOSS)
                .then(|| (1.0 - got as f64 / sent as f64).max(0.0) * 100.0);
            (w[0].t, w[1].t, mbps, loss)
        })
        .collect()
}

/// An SVG step chart of `points` (interval start, end, value if any) over the last hour ending
/// at `end`; intervals without a value break the line.
fn chart(
    id: &str,
    title: &str,
    unit: &str,
    colour: &str,
    points: &[(u64, u64, Option<f64>)],
    end: u64,
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 190.0;
    // Room for the longest axis label ("1000.0 Mbit/s") at 11 px.
    const LEFT: f64 = 96.0;
    const RIGHT: f64 = 16.0;
    const BOTTOM: f64 = 26.0;
    let start = end.saturating_sub(3600);
    let max = points
        .iter()
        .filter_map(|(_, _, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(if unit == "%" { 1.0 } else { 0.1 });
    let x = |t: u64| LEFT + (t.saturating_sub(start) as f64 / 3600.0).min(1.0) * (W - LEFT - RIGHT);
    let y = |v: f64| 10.0 + (1.0 - v / max) * (H - BOTTOM - 10.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<figure><figcaption>{title}</figcaption><svg id="{id}" class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{title}">"##
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="10" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        W - LEFT - RIGHT,
        H - BOTTOM - 10.0
    );
    let digits = if max < 1.0 {
        2
    } else if max < 10.0 {
        1
    } else {
        0
    };
    for frac in [0.0, 0.5, 1.0] {
        let v = max * frac;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{v:.digits$} {unit}</text>"##,
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    // The outer labels anchored inside the plot, so that neither is cut at the edge.
    for (label, t, anchor) in [
        ("-60 min", start, "start"),
        ("-30 min", start + 1800, "middle"),
        ("now", end, "end"),
    ] {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="{anchor}">{label}</text>"##,
            x(t),
            H - 8.0
        );
    }
    let mut runs: Vec<Vec<String>> = vec![Vec::new()];
    for (t0, t1, v) in points.iter().filter(|(_, t1, _)| *t1 > start) {
        match v {
            Some(v) => runs.last_mut().map_or((), |r| {
                r.push(format!(
                    "{:.1},{:.1} {:.1},{:.1}",
                    x((*t0).max(start)),
                    y(*v),
                    x(*t1),
                    y(*v)
                ))
            }),
            None => runs.push(Vec::new()),
        }
    }
    runs.retain(|r| !r.is_empty());
    if runs.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="13" text-anchor="middle">no data in the last hour</text>"##,
            (W + LEFT) / 2.0,
            H / 2.0
        );
    }
    for run in runs {
        let _ = write!(
            svg,
            r##"<polyline class="series" fill="none" stroke="{colour}" stroke-width="3" points="{}"/>"##,
            run.join(" ")
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// "HH:MM:SSZ (5 min ago)" for an RFC 3339 time, relative to `now` (Unix seconds).
fn when(rfc3339: &str, now: u64) -> String {
    match crate::alarms::unix_of(rfc3339) {
        Some(t) => format!("{} ({})", esc(rfc3339), ago(now.saturating_sub(t))),
        None => esc(rfc3339),
    }
}

/// A span of seconds for people: "12 s ago", "5 min ago", "3 h ago", "2 d ago".
fn ago(s: u64) -> String {
    match s {
        0..=89 => format!("{s} s ago"),
        90..=5399 => format!("{} min ago", (s + 30) / 60),
        5400..=172_799 => format!("{} h ago", (s + 1800) / 3600),
        _ => format!("{} d ago", (s + 43_200) / 86_400),
    }
}

/// The page at `now` (Unix seconds).
pub fn render(view: &View, now: u64) -> String {
    let mut h = String::new();
    h.push_str(
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>checkvalve receiver</title>
<style>body{font-family:sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}.state{padding:.6em 1em;border-radius:6px;font-weight:bold;display:inline-block;margin:.2em 0}
.up{background:#d8f5d8}.down,.alarm{background:#f8d0d0}.unknown{background:#eee}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left;font-size:.9em}
#overall{display:block;font-size:1.2em;padding:.8em 1em}#overall.clear{background:"##,
    );
    h.push_str(CLEAR_COLOUR);
    h.push_str(r##";color:#fff}#overall.alarm{background:"##);
    h.push_str(ALARM_COLOUR);
    h.push_str(
        r##";color:#fff}#overall ul{margin:.3em 0 0;font-weight:normal}
figure{margin:.5em 0 1em}figcaption{font-weight:bold;margin-bottom:.2em}footer{color:#666;font-size:.85em}</style></head><body><h1>checkvalve receiver</h1>"##,
    );
    let alarms = crate::alarms::of(view, now);
    if alarms.is_empty() {
        h.push_str(r##"<div class="state clear" id="overall" data-alarms="0">ALL CLEAR</div>"##);
    } else {
        let _ = write!(
            h,
            r##"<div class="state alarm" id="overall" data-alarms="{}">ALARM<ul>"##,
            alarms.len()
        );
        for a in &alarms {
            let kind = serde_json::to_value(a.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = write!(h, r##"<li data-kind="{kind}">{}</li>"##, esc(&a.text));
        }
        h.push_str("</ul></div>");
    }
    let Some(l) = &view.live else {
        h.push_str(r##"<p class="state unknown" id="receiver">Receiver: never ran with this state folder (no live state)</p>"##);
        let _ = write!(
            h,
            "<footer>checkvalve-status {}</footer></body></html>",
            esc(checkvalve_host::VERSION)
        );
        return h;
    };
    if view.running {
        let _ = write!(
            h,
            r##"<p class="state up" id="receiver">Receiver: running (pid {}, listening on {}, since {})</p>"##,
            l.pid,
            esc(&l.bind),
            when(&l.started, now)
        );
    } else {
        let _ = write!(
            h,
            r##"<p class="state down" id="receiver">Receiver: NOT RUNNING ({}; last live state {})</p>"##,
            if l.stopped {
                "stopped"
            } else {
                "no live state for more than 5 s"
            },
            when(&l.updated, now)
        );
    }
    let link = if view.running { l.link } else { Link::Unknown }.as_str();
    let _ = write!(
        h,
        r##"<p class="state {link}" id="link">Link: {}{}</p><p>Last heartbeat: {}</p>"##,
        link.to_uppercase(),
        l.link_since
            .as_ref()
            .filter(|_| view.running)
            .map(|s| format!(" since {}", when(s, now)))
            .unwrap_or_default(),
        l.last_heartbeat
            .as_deref()
            .map_or_else(|| "none heard".to_owned(), |t| when(t, now))
    );
    if l.authenticated {
        let _ = write!(
            h,
            r##"<p class="state up" id="auth">Authentication: on (key{} {}); {} datagrams refused since the receiver started</p>"##,
            if l.key_ids.len() == 1 { "" } else { "s" },
            l.key_ids
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            l.refused_auth
        );
    } else {
        h.push_str(r##"<p class="state down" id="auth">Authentication: NONE: the receiver runs with --allow-unauthenticated and no key, so anyone on the DMZ side can forge what it publishes</p>"##);
    }
    let t = &l.tally;
    let _ = write!(
        h,
        r##"<table id="counters"><tr><th>files received</th><td>{}</td></tr><tr><th>bytes received</th><td>{}</td></tr><tr><th>objects lost</th><td>{}</td></tr><tr><th>data shards repaired</th><td>{}</td></tr><tr><th>repeats</th><td>{}</td></tr><tr><th>sender restarts</th><td>{}</td></tr><tr><th>link down</th><td>{} times</td></tr><tr><th>datagrams received / malformed / dropped behind / kernel overflows</th><td>{} / {} / {} / {}</td></tr><tr><th>manifest records (not written)</th><td>{} ({})</td></tr><tr><th>share disk free</th><td id="disk">{}</td></tr></table>"##,
        t.delivered,
        bytes(t.delivered_bytes),
        t.lost,
        t.repaired,
        t.repeats,
        l.sender_restarts,
        l.link_downs,
        l.datagrams,
        l.malformed,
        l.dropped_behind,
        l.kernel_overflows,
        l.manifest_seq,
        l.manifest_dropped,
        l.disk.map_or_else(
            || "unknown".to_owned(),
            |d| format!(
                "{} (files refused below {})",
                bytes(d.free_bytes),
                bytes(d.min_free_bytes)
            )
        )
    );
    // The samples of the last hour, and now.
    let mut history: Vec<Sample> = l.history.iter().cloned().collect();
    history.push(Sample {
        t: l.updated_unix,
        datagrams: l.datagrams,
        bytes: t.delivered_bytes,
        files: t.delivered,
        lost: t.lost,
        sender_sent: l.sessions.iter().filter_map(|s| s.sender_sent).sum(),
        received: l
            .sessions
            .iter()
            .filter(|s| s.sender_sent.is_some())
            .map(|s| s.received)
            .sum(),
        refused_auth: l.refused_auth,
    });
    let r = rates(&history);
    let end = l
        .history
        .back()
        .map_or(l.updated_unix, |s| s.t.max(l.updated_unix));
    let thr: Vec<(u64, u64, Option<f64>)> =
        r.iter().map(|(a, b, m, _)| (*a, *b, Some(*m))).collect();
    let loss: Vec<(u64, u64, Option<f64>)> = r.iter().map(|(a, b, _, x)| (*a, *b, *x)).collect();
    h.push_str(&chart(
        "throughput",
        "Throughput over the last hour (files published)",
        "Mbit/s",
        THROUGHPUT_COLOUR,
        &thr,
        end,
    ));
    h.push_str(&chart(
        "loss",
        "Datagram loss over the last hour (intervals with traffic; an idle link's heartbeats are not plotted)",
        "%",
        LOSS_COLOUR,
        &loss,
        end,
    ));
    if !l.sessions.is_empty() {
        h.push_str(r##"<h2>Sender sessions</h2><table id="sessions"><tr><th>session</th><th>datagrams received</th><th>sender says it sent</th><th>loss since first heard</th></tr>"##);
        for s in l.sessions.iter().rev() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.session),
                s.received,
                s.sender_sent
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                s.loss
                    .map_or_else(|| "-".to_owned(), |x| format!("{:.2} %", x * 100.0))
            );
        }
        h.push_str("</table>");
    }
    h.push_str(r##"<h2>Recent files</h2><table id="files"><tr><th>time</th><th>path</th><th>size</th></tr>"##);
    for f in t.recent_files.iter().rev() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(&f.time, now),
            esc(&f.path),
            bytes(f.size)
        );
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        r##"<h2>Losses ({} objects in the manifest)</h2><table id="losses"><tr><th>time</th><th>file or object</th><th>objects</th><th>reason</th></tr>"##,
        t.lost
    );
    if t.recent_losses.is_empty() {
        h.push_str(r##"<tr><td colspan="4">none</td></tr>"##);
    }
    for l in t.recent_losses.iter().rev() {
        let _ = write!(
            h,
            r##"<tr class="alarm"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"##,
            when(&l.time, now),
            esc(&l.what),
            l.objects,
            esc(&l.reason)
        );
    }
    h.push_str("</table>");
    if !l.streams.is_empty() {
        h.push_str(r##"<h2>Record channels</h2><table id="streams"><tr><th>channel</th><th>records</th><th>gaps</th><th>records missing</th><th>lag</th></tr>"##);
        for c in &l.streams {
            let alarm = if c.missing > 0 {
                r##" class="alarm""##
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr{alarm}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.name),
                c.records,
                c.gaps,
                c.missing,
                c.lag_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"))
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(
        h,
        "<p>The full record is the manifest; <code>checkvalve-receive report</code> prints it. Machine-readable: <a href=\"/api/live.json\">/api/live.json</a>, <a href=\"/metrics\">/metrics</a>.</p><footer>receiver {}; checkvalve-status {}</footer></body></html>",
        esc(&l.version),
        esc(checkvalve_host::VERSION)
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_channels_are_listed_and_one_with_records_missing_stands_out() {
        let live = checkvalve_formats::live::State {
            streams: vec![
                checkvalve_formats::live::StreamView {
                    name: "syslog".into(),
                    records: 1000,
                    gaps: 2,
                    missing: 17,
                    lag_ms: Some(140),
                    ..Default::default()
                },
                checkvalve_formats::live::StreamView {
                    name: "hist<1>".into(),
                    records: 5,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let h = render(
            &View {
                live: Some(live),
                running: true,
                age_s: Some(0),
            },
            0,
        );
        assert!(h.contains(r#"<table id="streams">"#));
        assert!(h.contains(
            r#"<tr class="alarm"><td>syslog</td><td>1000</td><td>2</td><td>17</td><td>140 ms</td></tr>"#
        ));
        assert!(
            h.contains("<tr><td>hist&lt;1&gt;</td><td>5</td><td>0</td><td>0</td><td>-</td></tr>")
        );
    }

    #[test]
    fn names_are_escaped_and_rates_come_from_differences() {
        assert_eq!(esc("<a&b>\"'"), "&lt;a&amp;b&gt;&quot;&#39;");
        let h = [
            Sample {
                t: 100,
                bytes: 0,
                sender_sent: 0,
                received: 0,
                ..Sample::default()
            },
            Sample {
                t: 110,
                bytes: 12_500_000,
                sender_sent: 1000,
                received: 900,
                ..Sample::default()
            },
        ];
        let r = rates(&h);
        assert_eq!(r.len(), 1);
        assert!((r[0].2 - 10.0).abs() < 1e-9 && (r[0].3.unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn an_idle_link_is_not_plotted_as_loss() {
        let h = [
            Sample {
                t: 100,
                sender_sent: 1000,
                received: 1000,
                ..Sample::default()
            },
            // Six heartbeats said sent, one seen yet: not 83 % loss.
            Sample {
                t: 110,
                sender_sent: 1006,
                received: 1001,
                ..Sample::default()
            },
        ];
        assert_eq!(rates(&h)[0].3, None);
        let svg = chart("loss", "t", "%", LOSS_COLOUR, &[(100, 110, None)], 110);
        assert!(!svg.contains("polyline") && svg.contains("no data"));
    }

    #[test]
    fn times_are_said_relative_to_now() {
        assert_eq!(ago(5), "5 s ago");
        assert_eq!(ago(300), "5 min ago");
        assert_eq!(ago(3 * 3600), "3 h ago");
        let now = crate::alarms::unix_of("2026-12-01T12:00:00Z").unwrap();
        assert_eq!(
            when("2026-12-01T11:55:00Z", now),
            "2026-12-01T11:55:00Z (5 min ago)"
        );
    }
}
