//! A historian feed for demos, tests and benchmarks: point records (timestamp, tag, value,
//! quality) of `tags` tags, each a seeded random walk, as a plant historian exports them.
//!
//! Sans-IO: [`Points::next`] makes the next record for the time it is given; the `historian`
//! command (`main.rs`) paces them and writes them to a TCP, UDP or MQTT input.
//!
//! A record is one CSV line: `2026-12-03T11:30:39.239729Z,PLANT1.U02.FIC-0007.PV,41.2731,GOOD,17`
//! — the time it was made, the tag, the value, the quality (`GOOD`, now and then `UNCERTAIN` or
//! `BAD`), and its number in the feed (from 0), so that a test or a benchmark can tell every
//! record and its latency from the line alone.

use std::time::SystemTime;

use rand::{Rng, SeedableRng};

/// Kinds of instrument a tag is named after, and the range its value walks in.
const KINDS: [(&str, f64, f64); 6] = [
    ("FIC", 0.0, 120.0),
    ("TIC", 15.0, 380.0),
    ("PIC", 0.5, 42.0),
    ("LIC", 0.0, 100.0),
    ("VT", 0.0, 12.0),
    ("JI", 0.0, 950.0),
];

/// One tag's state.
#[derive(Debug, Clone)]
struct Tag {
    name: String,
    value: f64,
    low: f64,
    high: f64,
}

/// The feed.
#[derive(Debug)]
pub struct Points {
    tags: Vec<Tag>,
    rng: rand_chacha::ChaCha8Rng,
    next_tag: usize,
    count: u64,
}

impl Points {
    /// A feed of `tags` tags (at least one), seeded.
    pub fn new(tags: usize, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let tags = (0..tags.max(1))
            .map(|i| {
                let (kind, low, high) = KINDS[i % KINDS.len()];
                Tag {
                    name: format!("PLANT1.U{:02}.{kind}-{:04}.PV", i / 100 + 1, i),
                    value: rng.random_range(low..high),
                    low,
                    high,
                }
            })
            .collect();
        Points {
            tags,
            rng,
            next_tag: 0,
            count: 0,
        }
    }

    /// Records made so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The next record, made at `now`: the tags take turns.
    pub fn next(&mut self, now: SystemTime) -> String {
        let i = self.next_tag;
        self.next_tag = (i + 1) % self.tags.len();
        let step = self.rng.random_range(-1.0..1.0);
        let quality = match self.rng.random_range(0..1000) {
            0..=2 => "BAD",
            3..=12 => "UNCERTAIN",
            _ => "GOOD",
        };
        let t = &mut self.tags[i];
        let span = t.high - t.low;
        t.value = (t.value + step * span * 0.01).clamp(t.low, t.high);
        let line = format!(
            "{},{},{:.4},{quality},{}",
            time(now),
            t.name,
            t.value,
            self.count
        );
        self.count += 1;
        line
    }

    /// The tag of a record line's topic (for MQTT: `historian/TAG`).
    pub fn tag_of(line: &str) -> Option<&str> {
        line.split(',').nth(1)
    }
}

/// A time as the feed writes it: RFC 3339, UTC, microseconds.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The time a record line was made, from its first field.
pub fn made_at(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split(',').next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn records_are_numbered_csv_points_whose_time_reads_back() {
        let mut p = Points::new(3, 1);
        let t = UNIX_EPOCH + Duration::from_micros(1_796_299_100_123_456);
        let lines: Vec<String> = (0..4).map(|_| p.next(t)).collect();
        assert!(lines[0].starts_with("2026-12-03T"), "{}", lines[0]);
        assert_eq!(Points::tag_of(&lines[1]), Some("PLANT1.U01.TIC-0001.PV"));
        assert_eq!(Points::tag_of(&lines[3]), Points::tag_of(&lines[0]));
        assert!(lines[3].ends_with(",3"));
        assert_eq!(made_at(&lines[2]), Some(t));
        let again: Vec<String> = {
            let mut p = Points::new(3, 1);
            (0..4).map(|_| p.next(t)).collect()
        };
        assert_eq!(lines, again, "seeded");
    }
}
