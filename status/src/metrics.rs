//! `/metrics`: the live state as Prometheus metrics, built afresh from the file at every scrape,
//! in the text format (0.0.4, what `promtool check metrics` and most scrapers read) or in
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`).
//!
//! Names follow node_exporter's conventions: `checkvalve_` first, the unit in base units before
//! `_total` (`_bytes_total`, `_seconds`), counters end `_total`, ratios `_ratio`. Labels are
//! bounded: `channel` (at most the receiver's 256 record channels), `version` and `commit` of
//! `checkvalve_build_info`; no label takes a session id (one per sender restart).

use std::fmt::Write;

use checkvalve_formats::live::Link;

use crate::View;

/// What the scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when it names it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The answer's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Labels describing something, value 1 (`_info`).
    Info,
}

/// One metric with its samples.
struct Metric {
    /// The full name as scraped (with `_total` for a counter, `_info` for an info).
    name: String,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// The metrics of one scrape, in order.
#[derive(Default)]
struct Metrics(Vec<Metric>);

impl Metrics {
    fn add(&mut self, name: &str, help: &'static str, kind: Kind, value: f64) {
        self.family(name, help, kind, vec![(Vec::new(), value)]);
    }

    fn counter(&mut self, name: &str, help: &'static str, value: u64) {
        self.add(name, help, Kind::Counter, value as f64);
    }

    fn gauge(&mut self, name: &str, help: &'static str, value: f64) {
        self.add(name, help, Kind::Gauge, value);
    }

    fn family(
        &mut self,
        name: &str,
        help: &'static str,
        kind: Kind,
        samples: Vec<(Vec<(&'static str, String)>, f64)>,
    ) {
        self.0.push(Metric {
            name: format!("checkvalve_{name}"),
            help,
            kind,
            samples,
        });
    }

    fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        for m in &self.0 {
            // OpenMetrics names the family without its sample suffix.
            let family = match (format, m.kind) {
                (Format::OpenMetrics, Kind::Counter) => m.name.trim_end_matches("_total"),
                (Format::OpenMetrics, Kind::Info) => m.name.trim_end_matches("_info"),
                _ => &m.name,
            };
            let kind = match (format, m.kind) {
                (_, Kind::Counter) => "counter",
                (Format::Text, Kind::Info) | (_, Kind::Gauge) => "gauge",
                (Format::OpenMetrics, Kind::Info) => "info",
            };
            let _ = writeln!(out, "# HELP {family} {}", escape_help(m.help));
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for (labels, value) in &m.samples {
                out.push_str(&m.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(*value));
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The metrics text of `view` in `format`; `started_unix` is this server's start.
pub fn render(view: &View, format: Format, started_unix: f64) -> String {
    let mut m = Metrics::default();
    m.family(
        "build_info",
        "This status server's version and commit (value 1)",
        Kind::Info,
        vec![(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("commit", checkvalve_host::COMMIT.to_owned()),
            ],
            1.0,
        )],
    );
    m.gauge(
        "receiver_up",
        "1 if the receiver wrote its live state within the last 5 s and did not stop",
        f64::from(u8::from(view.running)),
    );
    m.gauge(
        "live_state_age_seconds",
        "Seconds since the receiver last wrote its live state",
        view.age_s.map_or(f64::NAN, |a| a as f64),
    );
    if let Some(l) = &view.live {
        m.gauge(
            "receiver_start_time_seconds",
            "When the receiver started (Unix time)",
            l.started_unix as f64,
        );
        m.gauge(
            "authenticated",
            "1 if datagrams are authenticated by a key, 0 if the receiver runs with --allow-unauthenticated",
            f64::from(u8::from(l.authenticated)),
        );
        m.gauge(
            "link_up",
            "1 if datagrams arrive, 0 if the link is down or nothing was heard yet",
            f64::from(u8::from(l.link == Link::Up && view.running)),
        );
        m.counter(
            "datagrams_received_total",
            "Valid datagrams received",
            l.datagrams,
        );
        m.counter(
            "datagrams_malformed_total",
            "Datagrams failing the CRC or format checks",
            l.malformed,
        );
        m.counter(
            "datagrams_dropped_behind_total",
            "Datagrams dropped because the receiver fell behind",
            l.dropped_behind,
        );
        m.counter(
            "kernel_overflows_total",
            "Datagrams the kernel dropped because the socket's receive buffer was full",
            l.kernel_overflows,
        );
        m.counter(
            "datagrams_refused_auth_total",
            "Datagrams refused by authentication: forged, replayed, or unauthenticated",
            l.refused_auth,
        );
        m.counter(
            "datagrams_refused_sessions_total",
            "Datagrams of new sessions refused: every session slot held an active sender",
            l.refused_sessions,
        );
        let t = &l.tally;
        m.counter(
            "files_delivered_total",
            "Files verified and published (the whole manifest)",
            t.delivered,
        );
        m.counter(
            "files_delivered_bytes_total",
            "Bytes of files published (the whole manifest)",
            t.delivered_bytes,
        );
        m.counter(
            "files_repeated_total",
            "Copies of files already published",
            t.repeats,
        );
        m.counter(
            "objects_lost_total",
            "Objects lost, named or not (the whole manifest)",
            t.lost,
        );
        m.counter(
            "shards_repaired_total",
            "Data shards rebuilt from parity in published files",
            t.repaired,
        );
        m.counter(
            "files_removed_total",
            "Files removed by retention",
            t.removed,
        );
        m.counter(
            "sender_restarts_total",
            "New sender sessions after another, since the receiver started",
            l.sender_restarts,
        );
        m.counter(
            "link_downs_total",
            "Times the link went down, since the receiver started",
            l.link_downs,
        );
        m.gauge(
            "manifest_records",
            "Number of the manifest's last record",
            l.manifest_seq as f64,
        );
        m.counter(
            "manifest_records_dropped_total",
            "Manifest records not written (disk below half of min_free, or a write error)",
            l.manifest_dropped,
        );
        if let Some(d) = &l.disk {
            m.gauge(
                "share_free_bytes",
                "Free space of the share's filesystem",
                d.free_bytes as f64,
            );
            m.gauge(
                "share_min_free_bytes",
                "The free space the receiver always leaves (min_free): files are refused below it",
                d.min_free_bytes as f64,
            );
        }
        m.gauge(
            "live_state_timestamp_seconds",
            "When the receiver last wrote its live state (Unix time)",
            l.updated_unix as f64,
        );
        // Always the family (a dashboard's query names it), a sample once a heartbeat said.
        m.family(
            "link_loss_ratio",
            "Datagram loss of the current sender session since first heard (from its heartbeats)",
            Kind::Gauge,
            l.sessions
                .last()
                .and_then(|s| s.loss)
                .map(|loss| (Vec::new(), loss))
                .into_iter()
                .collect(),
        );
        // One series per record channel: the receiver keeps at most 256.
        let per_channel = |f: &dyn Fn(&checkvalve_formats::live::StreamView) -> Option<f64>| {
            l.streams
                .iter()
                .filter_map(|s| Some((vec![("channel", s.name.clone())], f(s)?)))
                .collect::<Vec<_>>()
        };
        m.family(
            "stream_records_total",
            "Records of a record channel written to its file since the receiver started",
            Kind::Counter,
            per_channel(&|s| Some(s.records as f64)),
        );
        m.family(
            "stream_gaps_total",
            "Gaps marked in a record channel's file since the receiver started",
            Kind::Counter,
            per_channel(&|s| Some(s.gaps as f64)),
        );
        m.family(
            "stream_records_missing_total",
            "Records of a record channel lost for good (the markers' missing= counts)",
            Kind::Counter,
            per_channel(&|s| Some(s.missing as f64)),
        );
        m.family(
            "stream_lag_seconds",
            "From the sender taking a channel's last record written to its writing (two hosts' clocks)",
            Kind::Gauge,
            per_channel(&|s| s.lag_ms.map(|ms| ms as f64 / 1000.0)),
        );
    }
    let mut text = m.encode(format);
    // The exporter's own start, by the process_ convention (node_exporter's too).
    let process = format!(
        "# HELP process_start_time_seconds Start time of this status server since the Unix epoch in seconds\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
        number(started_unix)
    );
    match format {
        Format::Text => text.push_str(&process),
        Format::OpenMetrics => {
            let at = text.len() - "# EOF\n".len();
            text.insert_str(at, &process);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> View {
        View {
            live: Some(checkvalve_formats::live::State {
                datagrams: 7,
                streams: vec![checkvalve_formats::live::StreamView {
                    name: "sys\"log".into(),
                    records: 3,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            running: true,
            age_s: Some(1),
        }
    }

    #[test]
    fn text_names_every_counter_by_its_sample_and_openmetrics_by_its_family() {
        let text = render(&sample(), Format::Text, 5.0);
        assert!(text.contains("# TYPE checkvalve_datagrams_received_total counter\ncheckvalve_datagrams_received_total 7\n"), "{text}");
        assert!(
            text.contains("checkvalve_stream_records_total{channel=\"sys\\\"log\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE checkvalve_build_info gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        let om = render(&sample(), Format::OpenMetrics, 5.0);
        assert!(om.contains("# TYPE checkvalve_datagrams_received counter\ncheckvalve_datagrams_received_total 7\n"), "{om}");
        assert!(
            om.contains("# TYPE checkvalve_build info\ncheckvalve_build_info{"),
            "{om}"
        );
        assert!(
            om.ends_with("process_start_time_seconds 5\n# EOF\n"),
            "{om}"
        );
    }

    #[test]
    fn only_an_accept_naming_openmetrics_gets_it() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::Text
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
