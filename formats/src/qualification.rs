//! A link qualification's artifact (`OUT/qualification.json`), written by `checkvalve-sim sweep`
//! (alias `qualify`) once every point has run: the programs' versions, the host, the whole
//! configuration (scenario files' text included) and every point's result, so that one file
//! answers "what was run, with what, and what came of it".

use serde::{Deserialize, Serialize};

/// File name of the artifact inside the sweep's output folder.
pub const FILE: &str = "qualification.json";

/// The artifact's format version, raised when a field changes meaning.
pub const FORMAT: u32 = 1;

/// The whole artifact.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Qualification {
    /// [`FORMAT`].
    pub format: u32,
    /// When the first point started (RFC 3339, UTC).
    pub started: String,
    /// When the last point ended (RFC 3339, UTC).
    pub ended: String,
    /// `--version` of each program run.
    pub versions: Versions,
    /// Where it ran.
    pub host: Host,
    /// What was asked for.
    pub config: SweepConfig,
    /// Every point, in the order run.
    pub points: Vec<Point>,
    /// Points at which some file was not delivered intact.
    pub points_with_loss: usize,
}

/// The programs' own `--version` lines (name, version and commit).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Versions {
    /// The simulator that drove the sweep.
    pub sim: String,
    /// The sender it ran.
    pub send: String,
    /// The receiver it ran.
    pub receive: String,
}

/// The machine the sweep ran on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Host {
    /// Host name.
    pub name: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Processors available.
    pub cpus: usize,
}

/// A scenario file as it was played.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ScenarioFile {
    /// Its path as given.
    pub path: String,
    /// Its whole text.
    pub text: String,
}

/// The sweep's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SweepConfig {
    /// Loss rates (fractions), each with each burst length.
    pub losses: Vec<f64>,
    /// Mean burst lengths; 1 is independent loss.
    pub bursts: Vec<f64>,
    /// Scenario timelines played as links of their own.
    pub scenarios: Vec<ScenarioFile>,
    /// Sender rates, as the sender takes them.
    pub rates: Vec<String>,
    /// Sender shard sizes in bytes; empty for the sender's default.
    pub shard_sizes: Vec<u16>,
    /// Sender FEC, `K:M`.
    pub fec: String,
    /// Files in the test tree.
    pub files: usize,
    /// Largest file in the tree, in bytes.
    pub max_file: u64,
    /// Runs of every combination.
    pub repeats: u32,
    /// First seed; point `n` uses `seed + n`.
    pub seed: u64,
    /// The receiver's object timeout, in milliseconds.
    pub object_timeout_ms: u64,
}

/// One measured point.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Point {
    /// The link: `loss 5% burst 10`, or the scenario file's name.
    pub link: String,
    /// Configured loss rate (fraction; 0 for a scenario).
    pub loss: f64,
    /// Configured mean burst (1 = independent; 0 for a scenario).
    pub burst: f64,
    /// Sender rate, as the sender took it.
    pub rate: String,
    /// Sender shard size in bytes (`None`: the sender's default).
    pub shard_size: Option<u16>,
    /// Which run of this combination (from 0).
    pub repeat: u32,
    /// Seed of the link's decisions.
    pub seed: u64,
    /// Times the tree was sent (more than once to cover a scenario's whole timeline).
    pub rounds: u32,
    /// Files sent.
    pub files: usize,
    /// Files that arrived byte-identical.
    pub delivered: usize,
    /// Content bytes sent.
    pub bytes: u64,
    /// Content bytes that arrived byte-identical.
    pub bytes_delivered: u64,
    /// Seconds the sender ran.
    pub seconds: f64,
    /// Delivered content bits per second of sender time, in Mbit/s.
    pub goodput_mbps: f64,
    /// Datagrams the link received.
    pub datagrams: u64,
    /// Loss the link actually applied (fraction).
    pub measured_loss: f64,
    /// Longest run of dropped datagrams.
    pub longest_burst: u64,
}

impl Point {
    /// Share of files delivered intact.
    pub fn delivery_ratio(&self) -> f64 {
        if self.files == 0 {
            1.0
        } else {
            self.delivered as f64 / self.files as f64
        }
    }

    /// Whether the point's link is a scenario (not a loss rate).
    pub fn is_scenario(&self) -> bool {
        self.burst == 0.0
    }

    /// Legend label of the burst setting.
    pub fn burst_label(&self) -> String {
        if self.burst <= 1.0 {
            "independent".into()
        } else {
            format!("bursts of {}", self.burst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_reads_back_as_written_and_a_missing_field_defaults() {
        let q = Qualification {
            format: FORMAT,
            points: vec![Point {
                link: "loss 5% burst 10".into(),
                loss: 0.05,
                burst: 10.0,
                shard_size: Some(1376),
                files: 4,
                delivered: 3,
                ..Point::default()
            }],
            points_with_loss: 1,
            ..Qualification::default()
        };
        let text = serde_json::to_string(&q).expect("json");
        assert_eq!(
            serde_json::from_str::<Qualification>(&text).expect("read"),
            q
        );
        let old: Qualification = serde_json::from_str(r#"{"format":1}"#).expect("tolerant");
        assert!(old.points.is_empty());
        assert_eq!(q.points[0].delivery_ratio(), 0.75);
    }
}
