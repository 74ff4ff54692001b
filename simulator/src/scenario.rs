//! Scenario files: a TOML timeline of phases, each with its own link settings.

use std::time::Duration;

use checkvalve_common::units::{parse_duration, parse_percent, parse_rate, parse_size};
use serde::Deserialize;
use thiserror::Error;

use crate::link::{LinkConfig, Loss, Phase, Schedule};

/// Why a scenario could not be loaded.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file is not valid TOML or has unknown keys.
    #[error("scenario syntax: {0}")]
    Syntax(#[from] toml::de::Error),
    /// A value is out of range or badly written.
    #[error("scenario phase {phase}: {message}")]
    Value {
        /// Phase name or number.
        phase: String,
        /// What is wrong.
        message: String,
    },
    /// The timeline is empty or inconsistent.
    #[error("scenario: {0}")]
    Timeline(&'static str),
}

/// A number or a string such as `"5%"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(f64),
    Text(String),
}

impl Quantity {
    fn text(&self) -> String {
        match self {
            Quantity::Number(n) => n.to_string(),
            Quantity::Text(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGe {
    p: f64,
    r: f64,
    #[serde(default)]
    loss_good: f64,
    #[serde(default = "one")]
    loss_bad: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseSpec {
    name: Option<String>,
    duration: Option<Quantity>,
    loss: Option<Quantity>,
    burst: Option<f64>,
    ge: Option<RawGe>,
    reorder: Option<Quantity>,
    reorder_max: Option<usize>,
    duplicate: Option<Quantity>,
    corrupt: Option<Quantity>,
    truncate: Option<Quantity>,
    mtu: Option<usize>,
    rate: Option<Quantity>,
    queue: Option<Quantity>,
    delay: Option<Quantity>,
    jitter: Option<Quantity>,
    #[serde(default)]
    down: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageSpec {
    at: Quantity,
    #[serde(rename = "for")]
    length: Quantity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioSpec {
    seed: Option<u64>,
    #[serde(default)]
    repeat: bool,
    #[serde(default)]
    outages: Vec<OutageSpec>,
    #[serde(rename = "phase", default)]
    phases: Vec<PhaseSpec>,
}

/// A loaded scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The timeline.
    pub schedule: Schedule,
    /// Seed named in the file, if any.
    pub seed: Option<u64>,
}

/// Parses a scenario from TOML text.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let spec: ScenarioSpec = toml::from_str(text)?;
    if spec.phases.is_empty() {
        return Err(ScenarioError::Timeline("no [[phase]]"));
    }
    let n = spec.phases.len();
    let mut phases = Vec::with_capacity(n);
    for (i, p) in spec.phases.into_iter().enumerate() {
        let name = p.name.clone().unwrap_or_else(|| format!("phase-{}", i + 1));
        let err = |message: String| ScenarioError::Value {
            phase: name.clone(),
            message,
        };
        let duration = match &p.duration {
            Some(d) => Some(parse_duration(&d.text()).map_err(|e| err(e.to_string()))?),
            None if i + 1 == n => None,
            None => return Err(err("every phase but the last needs a duration".into())),
        };
        let config = phase_config(&p).map_err(err)?;
        phases.push(Phase {
            name,
            duration,
            config,
        });
    }
    if spec.repeat && phases.iter().any(|p| p.duration.is_none()) {
        return Err(ScenarioError::Timeline(
            "repeat = true needs a duration on every phase",
        ));
    }
    let mut outages = Vec::new();
    for o in &spec.outages {
        let at = parse_duration(&o.at.text()).map_err(|e| ScenarioError::Value {
            phase: "outages".into(),
            message: e.to_string(),
        })?;
        let len = parse_duration(&o.length.text()).map_err(|e| ScenarioError::Value {
            phase: "outages".into(),
            message: e.to_string(),
        })?;
        outages.push((at, len));
    }
    Ok(Scenario {
        schedule: Schedule {
            phases,
            outages,
            repeat: spec.repeat,
        },
        seed: spec.seed,
    })
}

fn percent(q: &Option<Quantity>) -> Result<f64, String> {
    q.as_ref()
        .map_or(Ok(0.0), |q| parse_percent(&q.text()))
        .map_err(|e| e.to_string())
}

fn duration(q: &Option<Quantity>) -> Result<Duration, String> {
    q.as_ref()
        .map_or(Ok(Duration::ZERO), |q| parse_duration(&q.text()))
        .map_err(|e| e.to_string())
}

fn phase_config(p: &PhaseSpec) -> Result<LinkConfig, String> {
    let loss_rate = percent(&p.loss)?;
    let loss = match (&p.ge, p.burst) {
        (Some(_), Some(_)) => return Err("give either burst or ge, not both".into()),
        (Some(_), _) if p.loss.is_some() => return Err("give either loss or ge, not both".into()),
        (Some(ge), None) => {
            for v in [ge.p, ge.r, ge.loss_good, ge.loss_bad] {
                if !(0.0..=1.0).contains(&v) {
                    return Err("ge probabilities must lie in [0, 1]".into());
                }
            }
            Loss::GilbertElliott {
                p: ge.p,
                r: ge.r,
                loss_good: ge.loss_good,
                loss_bad: ge.loss_bad,
            }
        }
        (None, Some(b)) if b < 1.0 => return Err("burst must be at least 1".into()),
        (None, Some(b)) => Loss::bursty(loss_rate, b),
        (None, None) => Loss::Independent(loss_rate),
    };
    let rate_bps = p
        .rate
        .as_ref()
        .map(|q| parse_rate(&q.text()))
        .transpose()
        .map_err(|e| e.to_string())?;
    let queue_bytes = p
        .queue
        .as_ref()
        .map_or(Ok(1 << 20), |q| parse_size(&q.text()))
        .map_err(|e| e.to_string())? as usize;
    Ok(LinkConfig {
        loss,
        reorder: percent(&p.reorder)?,
        reorder_max: p.reorder_max.unwrap_or(8).max(1),
        duplicate: percent(&p.duplicate)?,
        corrupt: percent(&p.corrupt)?,
        truncate: percent(&p.truncate)?,
        mtu: p.mtu,
        rate_bps,
        queue_bytes,
        delay: duration(&p.delay)?,
        jitter: duration(&p.jitter)?,
        down: p.down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let s = parse(include_str!("../../docs/scenarios/qualification.toml")).unwrap();
        assert_eq!(s.seed, Some(42));
        let names: Vec<_> = s.schedule.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["clean", "bursty", "outage", "slow", "recovery"]);
        assert!(s.schedule.phases[2].config.down);
        assert_eq!(s.schedule.phases[3].config.rate_bps, Some(10_000_000));
        assert_eq!(s.schedule.phases[3].config.queue_bytes, 256 << 10);
        assert!((s.schedule.phases[1].config.loss.mean() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn reports_mistakes_clearly() {
        let e = parse("[[phase]]\nloss = \"5 percent\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("phase-1") && e.contains("5 percent"), "{e}");
        let e = parse("[[phase]]\nlos = \"5%\"\n").unwrap_err().to_string();
        assert!(e.contains("los"), "{e}");
        let e = parse("[[phase]]\nname = \"a\"\n[[phase]]\nname = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("duration"), "{e}");
        assert!(parse("seed = 1\n").is_err());
    }
}
