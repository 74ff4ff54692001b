//! `/metrics`: the live state in the Prometheus (OpenMetrics) text format, built afresh from the
//! file at every scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::View;

type Labels = Vec<(String, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The metrics text.
pub fn render(view: &View) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("checkvalve");
    gauge(
        &mut r,
        "receiver_up",
        "1 if the receiver wrote its live state within the last 5 s and did not stop",
        f64::from(u8::from(view.running)),
    );
    gauge(
        &mut r,
        "live_state_age_seconds",
        "Seconds since the receiver last wrote its live state",
        view.age_s.map_or(f64::NAN, |a| a as f64),
    );
    if let Some(l) = &view.live {
        gauge(
            &mut r,
            "authenticated",
            "1 if datagrams are authenticated by a key, 0 if the receiver runs with --allow-unauthenticated",
            f64::from(u8::from(l.authenticated)),
        );
        gauge(
            &mut r,
            "link_up",
            "1 if datagrams arrive, 0 if the link is down or nothing was heard yet",
            f64::from(u8::from(
                l.link == checkvalve_formats::live::Link::Up && view.running,
            )),
        );
        counter(
            &mut r,
            "datagrams_received",
            "Valid datagrams received",
            l.datagrams,
        );
        counter(
            &mut r,
            "datagrams_malformed",
            "Datagrams failing the CRC or format checks",
            l.malformed,
        );
        counter(
            &mut r,
            "datagrams_dropped_behind",
            "Datagrams dropped because the receiver fell behind",
            l.dropped_behind,
        );
        counter(
            &mut r,
            "datagrams_refused_auth",
            "Datagrams refused by authentication: forged, replayed, or unauthenticated",
            l.refused_auth,
        );
        counter(
            &mut r,
            "datagrams_refused_sessions",
            "Datagrams of new sessions refused: every session slot held an active sender",
            l.refused_sessions,
        );
        let t = &l.tally;
        counter(
            &mut r,
            "files_delivered",
            "Files verified and published",
            t.delivered,
        );
        counter(
            &mut r,
            "bytes_delivered",
            "Bytes of files published",
            t.delivered_bytes,
        );
        counter(
            &mut r,
            "files_repeated",
            "Copies of files already published",
            t.repeats,
        );
        counter(
            &mut r,
            "objects_lost",
            "Objects lost (named or not)",
            t.lost,
        );
        counter(
            &mut r,
            "shards_repaired",
            "Data shards rebuilt from parity in published files",
            t.repaired,
        );
        counter(
            &mut r,
            "files_removed",
            "Files removed by retention",
            t.removed,
        );
        counter(
            &mut r,
            "sender_restarts",
            "New sender sessions after another",
            l.sender_restarts,
        );
        counter(
            &mut r,
            "link_downs",
            "Times the link went down",
            l.link_downs,
        );
        gauge(
            &mut r,
            "manifest_records",
            "Number of the manifest's last record",
            l.manifest_seq as f64,
        );
        gauge(
            &mut r,
            "live_state_timestamp_seconds",
            "When the receiver last wrote its live state (Unix time)",
            l.updated_unix as f64,
        );
        let loss = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for s in &l.sessions {
            if let Some(v) = s.loss {
                loss.get_or_create(&vec![("session".to_owned(), s.session.clone())])
                    .set(v);
            }
        }
        r.register(
            "session_loss_ratio",
            "Datagram loss of a sender session since first heard (from its heartbeats)",
            loss,
        );
        // One series per record channel: the receiver keeps at most 256.
        let channel = |name: &str| vec![("channel".to_owned(), name.to_owned())];
        let records = Family::<Labels, Counter<u64>>::default();
        let gaps = Family::<Labels, Counter<u64>>::default();
        let missing = Family::<Labels, Counter<u64>>::default();
        let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for s in &l.streams {
            records.get_or_create(&channel(&s.name)).inc_by(s.records);
            gaps.get_or_create(&channel(&s.name)).inc_by(s.gaps);
            missing.get_or_create(&channel(&s.name)).inc_by(s.missing);
            if let Some(ms) = s.lag_ms {
                lag.get_or_create(&channel(&s.name)).set(ms as f64 / 1000.0);
            }
        }
        r.register(
            "stream_records",
            "Records of a record channel written to its file since the receiver started",
            records,
        );
        r.register(
            "stream_gaps",
            "Gaps marked in a record channel's file since the receiver started",
            gaps,
        );
        r.register(
            "stream_records_missing",
            "Records of a record channel lost for good (the markers' missing= counts)",
            missing,
        );
        r.register(
            "stream_lag_seconds",
            "From the sender taking a channel's last record written to its writing (two hosts' clocks)",
            lag,
        );
    }
    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}
