//! The receiver's settings: from a TOML configuration file (every mistake reported with file, line
//! and reason) or from flags alone for simple cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use checkvalve_common::meta::NamePolicy;
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
    /// Permissions of published files (group-readable by default, for vendors' accounts).
    pub file_mode: u32,
    /// Group of published files and folders (the vendors' accounts' group), if not the
    /// receiver's own.
    pub group: Option<String>,
    /// Which names the share accepts.
    pub names: NamePolicy,
    /// How long a record channel waits for a late batch before marking its records lost.
    pub reorder_window: Duration,
    /// How records are written in the channel files.
    pub stream_format: crate::streams::StreamFormat,
    /// A channel's file of the day is continued in a new part past this size.
    pub stream_max_file: Option<u64>,
    /// The operator accepts unauthenticated datagrams: without a key, the receiver runs
    /// unauthenticated (and says so); with one, it accepts both (a migration).
    pub allow_unauthenticated: bool,
}

/// Why a receiver without a key does not start.
pub const NO_KEY: &str = "no key: give a key file (--key FILE or keys = [\"/path\"], made by `checkvalve-send keygen`), or accept unauthenticated datagrams with --allow-unauthenticated (allow_unauthenticated = true)";

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
    allow_unauthenticated: Option<bool>,
    file_mode: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    names: Option<Spanned<String>>,
    reorder_window: Option<Spanned<String>>,
    stream_format: Option<Spanned<String>>,
    stream_max_file: Option<Spanned<String>>,
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

/// Defaults, defined once, as the text an operator would write: the flags show them in `--help`,
/// and the flags and the file parse them with the same parsers.
pub mod defaults {
    /// `object_timeout`.
    pub const OBJECT_TIMEOUT: &str = "10s";
    /// `max_object_size`.
    pub const MAX_OBJECT_SIZE: &str = "1T";
    /// `max_pending`.
    pub const MAX_PENDING: &str = "48M";
    /// `min_free`.
    pub const MIN_FREE: &str = "256M";
    /// `rcvbuf`.
    pub const RCVBUF: &str = "64M";
    /// `stats_interval`.
    pub const STATS_INTERVAL: &str = "10s";
    /// `aggregate_interval`.
    pub const AGGREGATE_INTERVAL: &str = "10s";
    /// `link.loss_warn`.
    pub const LOSS_WARN: &str = "1%";
    /// `link.loss_interval`.
    pub const LOSS_INTERVAL: &str = "60s";
    /// `file_mode`.
    pub const FILE_MODE: &str = "0640";
    /// `names`.
    pub const NAMES: &str = "portable";
    /// `reorder_window`.
    pub const REORDER_WINDOW: &str = "1s";
}

/// A file mode in octal (`0640`, `640` or `0o640`): permission bits only, never writable by others.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{text:?} is not an octal file mode such as 0640"))?;
    if mode > 0o777 {
        return Err(format!("{text:?}: only permission bits (at most 0777)"));
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "{text:?}: published files must not be writable by others"
        ));
    }
    Ok(mode)
}

/// The id of group `name` (or a number), as published files and folders get it.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

impl Settings {
    /// Settings for `bind` and `out` with every other value at its default.
    pub fn defaults(bind: String, out: PathBuf) -> Settings {
        // The defaults are constants, parsed by a test too: they cannot fail.
        let duration = |t: &str| parse_duration(t).expect("default duration");
        let size = |t: &str| parse_size(t).expect("default size");
        Settings {
            bind,
            out,
            state: None,
            object_timeout: duration(defaults::OBJECT_TIMEOUT),
            max_object_size: size(defaults::MAX_OBJECT_SIZE),
            max_pending: size(defaults::MAX_PENDING),
            min_free: size(defaults::MIN_FREE),
            rcvbuf: size(defaults::RCVBUF),
            stats_interval: duration(defaults::STATS_INTERVAL),
            aggregate_interval: duration(defaults::AGGREGATE_INTERVAL),
            link_down_after: None,
            loss_warn: parse_percent(defaults::LOSS_WARN).expect("default percentage"),
            loss_interval: duration(defaults::LOSS_INTERVAL),
            retention: Retention::default(),
            keys: Vec::new(),
            require_auth: None,
            allow_unauthenticated: false,
            file_mode: parse_mode(defaults::FILE_MODE).expect("default mode"),
            group: None,
            names: defaults::NAMES.parse().expect("default names"),
            reorder_window: duration(defaults::REORDER_WINDOW),
            stream_format: crate::streams::StreamFormat::default(),
            stream_max_file: None,
        }
    }

    /// Checks that the settings say how datagrams are authenticated: a key, or the operator's
    /// explicit leave to run without one; `require_auth` needs a key.
    pub fn check_auth(&self) -> Result<(), &'static str> {
        if !self.keys.is_empty() {
            return Ok(());
        }
        if self.require_auth == Some(true) {
            return Err(
                "require_auth = true needs a key (keys = [\"/path\"]): without one nothing could be authenticated",
            );
        }
        if !self.allow_unauthenticated {
            return Err(NO_KEY);
        }
        Ok(())
    }
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
        let duration = |d: &Spanned<String>| {
            let parsed =
                parse_duration(d.get_ref()).map_err(|e| at(d.span().start, e.to_string()))?;
            if parsed.is_zero() {
                return Err(at(d.span().start, "must be positive".into()));
            }
            Ok(parsed)
        };
        let size = |s: &Spanned<String>| {
            parse_size(s.get_ref()).map_err(|e| at(s.span().start, e.to_string()))
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
        let mut s = Settings::defaults(raw.bind.get_ref().clone(), absolute(&raw.out, "out")?);
        s.state = raw
            .state
            .as_ref()
            .map(|p| absolute(p, "state"))
            .transpose()?;
        s.keys = raw
            .keys
            .iter()
            .map(|k| absolute(k, "a key file"))
            .collect::<Result<Vec<_>, _>>()?;
        s.allow_unauthenticated = raw.allow_unauthenticated.unwrap_or(false);
        s.require_auth = raw.require_auth;
        // With keys, leave to accept unauthenticated datagrams is a migration's: both are taken.
        if s.allow_unauthenticated && !s.keys.is_empty() && s.require_auth.is_none() {
            s.require_auth = Some(false);
        }
        let durations = [
            (&raw.object_timeout, &mut s.object_timeout),
            (&raw.stats_interval, &mut s.stats_interval),
            (&raw.aggregate_interval, &mut s.aggregate_interval),
            (&raw.reorder_window, &mut s.reorder_window),
        ];
        for (given, value) in durations {
            if let Some(d) = given {
                *value = duration(d)?;
            }
        }
        if let Some(m) = &raw.stream_max_file {
            s.stream_max_file = Some(size(m)?);
        }
        if let Some(f) = &raw.stream_format {
            s.stream_format = f.get_ref().parse().map_err(|e| at(f.span().start, e))?;
        }
        let sizes = [
            (&raw.max_object_size, &mut s.max_object_size),
            (&raw.max_pending, &mut s.max_pending),
            (&raw.min_free, &mut s.min_free),
            (&raw.rcvbuf, &mut s.rcvbuf),
        ];
        for (given, value) in sizes {
            if let Some(v) = given {
                *value = size(v)?;
            }
        }
        if let Some(link) = &raw.link {
            s.link_down_after = link.down_after.as_ref().map(duration).transpose()?;
            if let Some(d) = &link.loss_interval {
                s.loss_interval = duration(d)?;
            }
            if let Some(p) = &link.loss_warn {
                s.loss_warn =
                    parse_percent(p.get_ref()).map_err(|e| at(p.span().start, e.to_string()))?;
            }
        }
        if let Some(r) = &raw.retention {
            s.retention = Retention {
                max_age: r.max_age.as_ref().map(duration).transpose()?,
                max_bytes: r.max_bytes.as_ref().map(size).transpose()?,
            };
        }
        if let Some(m) = &raw.file_mode {
            s.file_mode = parse_mode(m.get_ref()).map_err(|e| at(m.span().start, e))?;
        }
        if let Some(g) = &raw.group {
            group_id(g.get_ref()).map_err(|e| at(g.span().start, e))?;
            s.group = Some(g.get_ref().clone());
        }
        if let Some(n) = &raw.names {
            s.names = n.get_ref().parse().map_err(|e| at(n.span().start, e))?;
        }
        s.check_auth().map_err(|e| at(0, e.into()))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse_and_a_file_with_only_the_folders_takes_them() {
        let text = "bind = \"0.0.0.0:5000\"\nout = \"/srv/share\"\nallow_unauthenticated = true\n";
        let s = Settings::parse(Path::new("r.toml"), text).unwrap();
        assert_eq!(s.object_timeout, Duration::from_secs(10));
        assert_eq!(s.max_pending, 48 << 20);
        assert_eq!(s.loss_interval, Duration::from_secs(60));
        assert!((s.loss_warn - 0.01).abs() < 1e-12);
    }

    #[test]
    fn a_key_or_the_operators_leave_to_run_without_one_is_required() {
        let folders = "bind = \"0.0.0.0:5000\"\nout = \"/srv/share\"\n";
        for extra in [
            "",
            "require_auth = true\n",
            "allow_unauthenticated = true\nrequire_auth = true\n",
        ] {
            match Settings::parse(Path::new("r.toml"), &format!("{folders}{extra}")) {
                Err(ConfigError::At { reason, .. }) => assert!(reason.contains("key"), "{reason}"),
                other => panic!("{extra:?}: {other:?}"),
            }
        }
        let keyed = format!("{folders}keys = [\"/k\"]\nallow_unauthenticated = true\n");
        let s = Settings::parse(Path::new("r.toml"), &keyed).unwrap();
        assert_eq!(
            s.require_auth,
            Some(false),
            "with a key, leave to accept both"
        );
    }

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
