//! The simulator's counters as a report: totals and one entry per phase.

use std::time::Duration;

use serde::Serialize;

use crate::link::{Counters, IP_UDP_OVERHEAD, Link};

/// One phase of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Phase name.
    pub name: String,
    /// Seconds spent in this phase.
    pub seconds: f64,
    /// What happened in it (datagrams counted in the phase they arrived in).
    #[serde(flatten)]
    pub counters: Counters,
    /// Forwarded bits per second over the phase, IP and UDP headers included.
    pub achieved_bps: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seed of every decision.
    pub seed: u64,
    /// Seconds from start to stop.
    pub seconds: f64,
    /// Totals.
    #[serde(flatten)]
    pub total: Counters,
    /// Forwarded bits per second over the run, IP and UDP headers included.
    pub achieved_bps: f64,
    /// Per phase.
    pub phases: Vec<PhaseReport>,
}

fn bps(c: &Counters, time: Duration) -> f64 {
    let bits = (c.bytes_out + c.forwarded * IP_UDP_OVERHEAD as u64) as f64 * 8.0;
    if time.is_zero() {
        0.0
    } else {
        bits / time.as_secs_f64()
    }
}

impl Report {
    /// Builds the report of `link` after `elapsed`.
    pub fn new(link: &Link, seed: u64, elapsed: Duration) -> Report {
        let spent = link.schedule().time_in_phases(elapsed);
        let phases = link
            .schedule()
            .phases
            .iter()
            .zip(link.phase_counters())
            .zip(spent)
            .map(|((p, c), t)| PhaseReport {
                name: p.name.clone(),
                seconds: t.as_secs_f64(),
                counters: *c,
                achieved_bps: bps(c, t),
            })
            .collect();
        let total = link.counters();
        Report {
            seed,
            seconds: elapsed.as_secs_f64(),
            total,
            achieved_bps: bps(&total, elapsed),
            phases,
        }
    }
}
