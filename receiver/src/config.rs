//! The receiver's settings: from a TOML configuration file (every mistake reported with file, line
//! and reason) or from flags alone for simple cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use checkvalve_common::units::{parse_duration, parse_percent, parse_size};
use serde::Deserialize;
use toml::Spanned;

pub use checkvalve_common::settings::ConfigError;

/// Retention limits of the share: oldest files are removed first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Files published longer ago than this are removed.
    pub max_age: Option<Duration>,
    /// Oldest files are removed while the share holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

/// Everything the receiver needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub bind: String,
    /// The share (vendor-visible).
    pub out: PathBuf,
    /// State folder [default: OUT/.checkvalve].
    pub state: Option<PathBuf>,
    /// Give up on an object after this long without a new datagram for it.
    pub object_timeout: Duration,
    /// Largest file accepted.
    pub max_object_size: u64,
    /// Memory bound (see `--max-pending`).
    pub max_pending: u64,
    /// Free space always left on the share's filesystem.
    pub min_free: u64,
    /// Kernel receive buffer to ask for.
    pub rcvbuf: u64,
    /// Interval between statistics lines.
    pub stats_interval: Duration,
    /// Unnamed losses are recorded once per session per interval.
    pub aggregate_interval: Duration,
    /// Link down after this long without a datagram (none: three heartbeat periods, at least 3 s).
    pub link_down_after: Option<Duration>,
    /// Measured loss over a `loss_interval` above this is a WARN (and above the FEC's reach an ERROR).
    pub loss_warn: f64,
    /// Interval of the measured-loss records.
    pub loss_interval: Duration,
    /// Retention of the share.
    pub retention: Retention,
    /// Pre-shared key files: datagrams under any of them are accepted (two during a rotation).
    pub keys: Vec<PathBuf>,
    /// Refuse unauthenticated datagrams [default: yes once a key is configured].
    pub require_auth: Option<bool>,
}

impl Settings {
    /// The state folder: `state`, or `OUT/.checkvalve`.
    pub fn state_dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| self.out.join(checkvalve_common::meta::STATE_DIR))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    bind: Spanned<String>,
    out: Spanned<PathBuf>,
    state: Option<Spanned<PathBuf>>,
    object_timeout: Option<Spanned<String>>,
    max_object_size: Option<Spanned<String>>,
    max_pending: Option<Spanned<String>>,
    min_free: Option<Spanned<String>>,
    rcvbuf: Option<Spanned<String>>,
    stats_interval: Option<Spanned<String>>,
    aggregate_interval: Option<Spanned<String>>,
    link: Option<RawLink>,
    retention: Option<RawRetention>,
    #[serde(default)]
    keys: Vec<Spanned<PathBuf>>,
    require_auth: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    down_after: Option<Spanned<String>>,
    loss_warn: Option<Spanned<String>>,
    loss_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age: Option<Spanned<String>>,
    max_bytes: Option<Spanned<String>>,
}

/// Defaults shared by the flags and the file.
pub mod defaults {
    use std::time::Duration;
    /// `object_timeout`.
    pub const OBJECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `max_object_size`.
    pub const MAX_OBJECT_SIZE: u64 = 1 << 40;
    /// `max_pending`.
    pub const MAX_PENDING: u64 = 48 << 20;
    /// `min_free`.
    pub const MIN_FREE: u64 = 256 << 20;
    /// `rcvbuf`.
    pub const RCVBUF: u64 = 64 << 20;
    /// `stats_interval`.
    pub const STATS_INTERVAL: Duration = Duration::from_secs(10);
    /// `aggregate_interval`.
    pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(10);
    /// `loss_warn`.
    pub const LOSS_WARN: f64 = 0.01;
    /// `loss_interval`.
    pub const LOSS_INTERVAL: Duration = Duration::from_secs(60);
}

impl Settings {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Settings::parse(file, &text)
    }

    /// Parses and checks `text`, naming `file` in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Settings, ConfigError> {
        let at = |offset: usize, reason: String| ConfigError::at(file, text, offset, reason);
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().to_owned())
        })?;
        let duration = |v: &Option<Spanned<String>>, default: Duration| match v {
            Some(d) => {
                let parsed =
                    parse_duration(d.get_ref()).map_err(|e| at(d.span().start, e.to_string()))?;
                if parsed.is_zero() {
                    return Err(at(d.span().start, "must be positive".into()));
                }
                Ok(parsed)
            }
            None => Ok(default),
        };
        let size = |v: &Option<Spanned<String>>, default: u64| match v {
            Some(s) => parse_size(s.get_ref()).map_err(|e| at(s.span().start, e.to_string())),
            None => Ok(default),
        };
        let absolute = |p: &Spanned<PathBuf>, what: &str| {
            if p.get_ref().is_absolute() {
                Ok(p.get_ref().clone())
            } else {
                Err(at(
                    p.span().start,
                    format!("{what} must be an absolute path"),
                ))
            }
        };
        let out = absolute(&raw.out, "out")?;
        let state = raw
            .state
            .as_ref()
            .map(|s| absolute(s, "state"))
            .transpose()?;
        let link = raw.link.as_ref();
        let retention = raw.retention.as_ref();
        let optional = |v: Option<&Spanned<String>>| -> Result<Option<Duration>, ConfigError> {
            v.map(|d| duration(&Some(d.clone()), Duration::ZERO))
                .transpose()
        };
        let loss_warn = match link.and_then(|l| l.loss_warn.as_ref()) {
            Some(p) => parse_percent(p.get_ref()).map_err(|e| at(p.span().start, e.to_string()))?,
            None => defaults::LOSS_WARN,
        };
        let keys = raw
            .keys
            .iter()
            .map(|k| absolute(k, "a key file"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            keys,
            require_auth: raw.require_auth,
            bind: raw.bind.get_ref().clone(),
            out,
            state,
            object_timeout: duration(&raw.object_timeout, defaults::OBJECT_TIMEOUT)?,
            max_object_size: size(&raw.max_object_size, defaults::MAX_OBJECT_SIZE)?,
            max_pending: size(&raw.max_pending, defaults::MAX_PENDING)?,
            min_free: size(&raw.min_free, defaults::MIN_FREE)?,
            rcvbuf: size(&raw.rcvbuf, defaults::RCVBUF)?,
            stats_interval: duration(&raw.stats_interval, defaults::STATS_INTERVAL)?,
            aggregate_interval: duration(&raw.aggregate_interval, defaults::AGGREGATE_INTERVAL)?,
            link_down_after: optional(link.and_then(|l| l.down_after.as_ref()))?,
            loss_warn,
            loss_interval: optional(link.and_then(|l| l.loss_interval.as_ref()))?
                .unwrap_or(defaults::LOSS_INTERVAL),
            retention: Retention {
                max_age: optional(retention.and_then(|r| r.max_age.as_ref()))?,
                max_bytes: retention
                    .and_then(|r| r.max_bytes.as_ref())
                    .map(|b| size(&Some(b.clone()), 0))
                    .transpose()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_loads() {
        let text = include_str!("../../docs/checkvalve-receive.example.toml");
        let s = Settings::parse(Path::new("example.toml"), text).unwrap();
        assert_eq!(s.out, PathBuf::from("/srv/vendor-share"));
        assert_eq!(s.link_down_after, Some(Duration::from_secs(5)));
        assert_eq!(s.retention.max_age, Some(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let text =
            "bind = \"0.0.0.0:5000\"\nout = \"/srv/share\"\n\n[link]\ndown_after = \"soon\"\n";
        match Settings::parse(Path::new("r.toml"), text) {
            Err(ConfigError::At {
                line: 5, reason, ..
            }) => assert!(reason.contains("soon")),
            other => panic!("{other:?}"),
        }
        let text = "bind = \"0.0.0.0:5000\"\nout = \"share\"\n";
        assert!(matches!(
            Settings::parse(Path::new("r.toml"), text),
            Err(ConfigError::At { line: 2, .. })
        ));
        let text = "bind = \"0.0.0.0:5000\"\nout = \"/s\"\ncolour = 1\n";
        assert!(matches!(
            Settings::parse(Path::new("r.toml"), text),
            Err(ConfigError::At { line: 3, .. })
        ));
    }
}
