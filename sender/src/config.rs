//! The service configuration file (TOML): destination, shape of the traffic, and the channels whose
//! spool folders are watched. Every mistake is reported with the file, line and reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use checkvalve_common::object::FecParams;
use checkvalve_common::units::{parse_duration, parse_rate, parse_size};
use serde::Deserialize;
use toml::Spanned;

pub use checkvalve_common::settings::ConfigError;

/// What happens to a spooled file once it has been sent completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSend {
    /// Deleted from the spool.
    Delete,
    /// Left in place; the sender records it (until it changes) and does not send it again.
    Keep,
    /// Moved to `SENT/<day>/<path>`, and removed from there by age and total size.
    Move(SentFolder),
}

impl std::fmt::Display for AfterSend {
    /// As the configuration says it (`move` with its folder).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AfterSend::Delete => f.write_str("delete"),
            AfterSend::Keep => f.write_str("keep"),
            AfterSend::Move(sent) => write!(f, "move to {}", sent.dir.display()),
        }
    }
}

/// Where a channel with `after_send = "move"` keeps what it sent, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFolder {
    /// The folder (outside every spool).
    pub dir: PathBuf,
    /// Day folders older than this are removed.
    pub max_age: Option<Duration>,
    /// Oldest files are removed while the folder holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

/// One watched spool folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Name: files land under `OUT/NAME/` (the empty name: directly under `OUT/`).
    pub name: String,
    /// The spool folder.
    pub spool: PathBuf,
    /// Higher goes first.
    pub priority: i64,
    /// Copies of each file sent (1: once).
    pub repeat: u32,
    /// What to do with a sent file.
    pub after_send: AfterSend,
}

/// The sender service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Receiver (or diode) address, HOST:PORT.
    pub to: String,
    /// Output rate, bits per second.
    pub rate: u64,
    /// FEC shape and shard length.
    pub fec: FecParams,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// A file written in place is taken once unchanged for this long.
    pub settle: Duration,
    /// Full rescan interval (a missed event never means a missed file).
    pub rescan: Duration,
    /// Time between two copies of a file of a repeated channel.
    pub repeat_spacing: Duration,
    /// File name patterns never taken (temporary names of producers).
    pub ignore: Vec<String>,
    /// Which names are sent (the receiver's share applies its own policy too).
    pub names: checkvalve_common::meta::NamePolicy,
    /// The state folder (record of kept files, status file, session epoch), if any.
    pub state: Option<PathBuf>,
    /// Pre-shared key file: every datagram is authenticated.
    pub key: Option<PathBuf>,
    /// With a key: payloads are encrypted too.
    pub encrypt: bool,
    /// Without a key: the operator accepts sending unauthenticated datagrams.
    pub allow_unauthenticated: bool,
    /// The watched channels.
    pub channels: Vec<Channel>,
    /// The record stream inputs (their records cross as record channels).
    pub streams: Vec<crate::inputs::StreamSpec>,
    /// A stream's batch goes out when its first record has waited this long.
    pub stream_flush: Duration,
}

/// Flags given beside `--config`: each overrides the file's value, at start and at every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--to`.
    pub to: Option<String>,
    /// `--rate`.
    pub rate: Option<u64>,
    /// `--heartbeat`.
    pub heartbeat: Option<Duration>,
    /// `--settle`.
    pub settle: Option<Duration>,
    /// `--rescan`.
    pub rescan: Option<Duration>,
    /// `--stream-flush`.
    pub stream_flush: Option<Duration>,
    /// `--names`.
    pub names: Option<checkvalve_common::meta::NamePolicy>,
    /// `--state`.
    pub state: Option<PathBuf>,
}

impl Overrides {
    /// Puts the flags' values into `cfg`; `say` logs each (at start; a reload applies them
    /// quietly).
    pub fn apply(&self, cfg: &mut Config, say: bool) {
        let note = |flag: &str, value: &dyn std::fmt::Display| {
            if say {
                tracing::info!(flag, value = %value, "a flag beside --config overrides the configuration file");
            }
        };
        if let Some(v) = &self.to {
            note("--to", v);
            cfg.to = v.clone();
        }
        if let Some(v) = self.rate {
            note("--rate", &v);
            cfg.rate = v;
        }
        if let Some(v) = self.heartbeat {
            note("--heartbeat", &humantime::format_duration(v));
            cfg.heartbeat = v;
        }
        if let Some(v) = self.settle {
            note("--settle", &humantime::format_duration(v));
            cfg.settle = v;
        }
        if let Some(v) = self.rescan {
            note("--rescan", &humantime::format_duration(v));
            cfg.rescan = v;
        }
        if let Some(v) = self.stream_flush {
            note("--stream-flush", &humantime::format_duration(v));
            cfg.stream_flush = v;
        }
        if let Some(v) = self.names {
            note("--names", &format!("{v:?}").to_lowercase());
            cfg.names = v;
        }
        if let Some(v) = &self.state {
            note("--state", &v.display());
            cfg.state = Some(v.clone());
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    to: Spanned<String>,
    rate: Option<Spanned<String>>,
    fec: Option<Spanned<String>>,
    shard_size: Option<Spanned<u16>>,
    mtu: Option<Spanned<u16>>,
    heartbeat: Option<Spanned<String>>,
    settle: Option<Spanned<String>>,
    rescan: Option<Spanned<String>>,
    repeat_spacing: Option<Spanned<String>>,
    ignore: Option<Vec<String>>,
    names: Option<Spanned<String>>,
    state: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    encrypt: Option<Spanned<bool>>,
    allow_unauthenticated: Option<bool>,
    #[serde(default, rename = "channel")]
    channels: Vec<Spanned<RawChannel>>,
    #[serde(default, rename = "stream")]
    streams: Vec<RawStream>,
    stream_flush: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    name: Spanned<String>,
    input: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Spanned<String>,
    spool: Spanned<PathBuf>,
    #[serde(default)]
    priority: i64,
    repeat: Option<Spanned<u32>>,
    after_send: Option<Spanned<String>>,
    sent: Option<Spanned<PathBuf>>,
    sent_max_age: Option<Spanned<String>>,
    sent_max_bytes: Option<Spanned<String>>,
}

/// Temporary names producers use while writing; never taken.
pub const DEFAULT_IGNORE: [&str; 4] = [".*", "*.tmp", "*.part", "*~"];

/// Parses `K:M`.
pub fn parse_fec(s: &str) -> Result<(u8, u8), String> {
    let (k, m) = s.split_once(':').ok_or("expected K:M, for example 64:22")?;
    let k: u8 = k.trim().parse().map_err(|_| format!("bad K in {s:?}"))?;
    let m: u8 = m.trim().parse().map_err(|_| format!("bad M in {s:?}"))?;
    if k == 0 || usize::from(k) + usize::from(m) > 256 {
        return Err("need K >= 1 and K + M <= 256".into());
    }
    Ok((k, m))
}

impl Config {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Parses and checks `text`, naming `file` in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |offset: usize, reason: String| ConfigError::at(file, text, offset, reason);
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().to_owned())
        })?;
        let spanned = |v: &Spanned<String>| (v.span().start, v.get_ref().clone());
        let rate = match &raw.rate {
            Some(r) => parse_rate(r.get_ref()).map_err(|e| at(spanned(r).0, e.to_string()))?,
            None => 1_000_000_000,
        };
        let (k, m) = match &raw.fec {
            Some(f) => parse_fec(f.get_ref()).map_err(|e| at(spanned(f).0, e))?,
            None => (64, 22),
        };
        let key = match &raw.key {
            Some(k) if !k.get_ref().is_absolute() => {
                return Err(at(k.span().start, "key must be an absolute path".into()));
            }
            Some(k) => Some(k.get_ref().clone()),
            None => None,
        };
        let trailer = if key.is_some() {
            checkvalve_common::auth::TRAILER_LEN
        } else {
            0
        };
        let mtu = raw.mtu.as_ref().map(|m| *m.get_ref());
        let shard_len = shard_len(mtu, raw.shard_size.as_ref().map(|s| *s.get_ref()), trailer)
            .map_err(|e| {
                let offset = raw
                    .shard_size
                    .as_ref()
                    .or(raw.mtu.as_ref())
                    .map_or(0, |s| s.span().start);
                at(offset, e)
            })?;
        let fec = FecParams {
            data_shards: k,
            parity_shards: m,
            shard_len,
        };
        fec.validate().map_err(|e| {
            let offset = raw.shard_size.as_ref().map_or_else(
                || raw.fec.as_ref().map_or(0, |f| f.span().start),
                |s| s.span().start,
            );
            at(offset, e.to_string())
        })?;
        let duration =
            |v: &Option<Spanned<String>>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    Some(d) => {
                        let parsed = parse_duration(d.get_ref())
                            .map_err(|e| at(d.span().start, e.to_string()))?;
                        if parsed.is_zero() {
                            return Err(at(d.span().start, "must be positive".into()));
                        }
                        Ok(parsed)
                    }
                    None => Ok(default),
                }
            };
        let heartbeat = duration(&raw.heartbeat, Duration::from_secs(1))?;
        let settle = duration(&raw.settle, Duration::from_secs(5))?;
        let rescan = duration(&raw.rescan, Duration::from_secs(30))?;
        let repeat_spacing = duration(&raw.repeat_spacing, Duration::from_secs(5))?;
        if raw.channels.is_empty() && raw.streams.is_empty() {
            return Err(at(
                text.len(),
                "no [[channel]] and no [[stream]]: nothing to send".into(),
            ));
        }
        let stream_flush = duration(&raw.stream_flush, Duration::from_millis(100))?;
        let mut streams: Vec<crate::inputs::StreamSpec> = Vec::new();
        for st in &raw.streams {
            let name = st.name.get_ref().clone();
            let input = crate::inputs::parse_input(&name, st.input.get_ref())
                .map_err(|e| at(st.input.span().start, e))?;
            if streams.iter().any(|o| o.name.eq_ignore_ascii_case(&name)) {
                return Err(at(
                    st.name.span().start,
                    format!("stream {name:?} given twice"),
                ));
            }
            streams.push(crate::inputs::StreamSpec { name, input });
        }
        let mut channels: Vec<Channel> = Vec::new();
        for c in &raw.channels {
            let r = c.get_ref();
            let name = r.name.get_ref().clone();
            if name.is_empty()
                || checkvalve_common::meta::check_path(&name).is_err()
                || name.contains('/')
            {
                return Err(at(
                    r.name.span().start,
                    format!("channel name {name:?} is not a plain folder name"),
                ));
            }
            // Channels are folders of the share, which Windows readers see without case.
            if channels
                .iter()
                .any(|o| o.name.to_lowercase() == name.to_lowercase())
            {
                return Err(at(
                    r.name.span().start,
                    format!("channel {name:?} appears twice"),
                ));
            }
            let spool = r.spool.get_ref().clone();
            if !spool.is_absolute() {
                return Err(at(
                    r.spool.span().start,
                    "spool must be an absolute path".into(),
                ));
            }
            let sent = match &r.sent {
                Some(dir) if !dir.get_ref().is_absolute() => {
                    return Err(at(dir.span().start, "sent must be an absolute path".into()));
                }
                Some(dir) => Some(SentFolder {
                    dir: dir.get_ref().clone(),
                    max_age: match &r.sent_max_age {
                        Some(_) => Some(duration(&r.sent_max_age, Duration::ZERO)?),
                        None => None,
                    },
                    max_bytes: match &r.sent_max_bytes {
                        Some(b) => Some(
                            parse_size(b.get_ref())
                                .map_err(|e| at(b.span().start, e.to_string()))?,
                        ),
                        None => None,
                    },
                }),
                None => None,
            };
            let policy_at = r
                .after_send
                .as_ref()
                .map_or(c.span().start, |a| a.span().start);
            let after_send = match (r.after_send.as_ref().map(|a| a.get_ref().as_str()), sent) {
                (None | Some("delete"), None) => AfterSend::Delete,
                (Some("keep"), None) => AfterSend::Keep,
                (Some("move"), Some(sent)) => AfterSend::Move(sent),
                (Some("move"), None) => {
                    return Err(at(
                        policy_at,
                        "after_send = \"move\" needs sent = \"/folder\"".into(),
                    ));
                }
                (None | Some("delete" | "keep"), Some(_)) => {
                    return Err(at(
                        policy_at,
                        "sent is only for after_send = \"move\"".into(),
                    ));
                }
                (Some(other), _) => {
                    return Err(at(
                        policy_at,
                        format!("after_send {other:?}: expected \"delete\", \"keep\" or \"move\""),
                    ));
                }
            };
            let repeat = match &r.repeat {
                Some(n) if !(1..=100).contains(n.get_ref()) => {
                    return Err(at(n.span().start, "repeat must be 1 to 100".into()));
                }
                Some(n) => *n.get_ref(),
                None => 1,
            };
            let sent_dir = match &after_send {
                AfterSend::Move(s) => Some(s.dir.clone()),
                _ => None,
            };
            let overlaps = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
            for o in &channels {
                if overlaps(&spool, &o.spool) {
                    return Err(at(
                        r.spool.span().start,
                        format!("this spool overlaps the spool of channel {:?}", o.name),
                    ));
                }
                let other_sent = match &o.after_send {
                    AfterSend::Move(s) => Some(&s.dir),
                    _ => None,
                };
                if other_sent.is_some_and(|d| overlaps(&spool, d))
                    || sent_dir.as_ref().is_some_and(|d| overlaps(d, &o.spool))
                    || sent_dir.as_ref().is_some_and(|d| overlaps(d, &spool))
                {
                    return Err(at(
                        r.spool.span().start,
                        format!(
                            "a sent folder and a spool overlap (channels {name:?} and {:?}): sent folders must be outside every spool",
                            o.name
                        ),
                    ));
                }
            }
            if sent_dir.as_ref().is_some_and(|d| overlaps(d, &spool)) {
                return Err(at(
                    r.spool.span().start,
                    "the sent folder must be outside the spool".into(),
                ));
            }
            channels.push(Channel {
                name,
                spool,
                priority: r.priority,
                repeat,
                after_send,
            });
        }
        // Higher priority first; equal priorities in file order.
        channels.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let state = match &raw.state {
            Some(s) if !s.get_ref().is_absolute() => {
                return Err(at(s.span().start, "state must be an absolute path".into()));
            }
            Some(s) => Some(s.get_ref().clone()),
            None => None,
        };
        if let (Some(st), Some(span)) = (&state, raw.state.as_ref().map(|s| s.span().start))
            && let Some(o) = channels.iter().find(|o| st.starts_with(&o.spool))
        {
            return Err(at(
                span,
                format!("the state folder is inside the spool of {:?}", o.name),
            ));
        }
        let encrypt = raw.encrypt.as_ref().is_some_and(|e| *e.get_ref());
        if let Some(e) = &raw.encrypt
            && encrypt
            && key.is_none()
        {
            return Err(at(
                e.span().start,
                "encrypt = true needs key = \"/path/to/key\"".into(),
            ));
        }
        let allow_unauthenticated = raw.allow_unauthenticated.unwrap_or(false);
        if key.is_none() && !allow_unauthenticated {
            return Err(at(0, crate::keys::NO_KEY.into()));
        }
        let names = match &raw.names {
            Some(n) => n.get_ref().parse().map_err(|e| at(n.span().start, e))?,
            None => checkvalve_common::meta::NamePolicy::default(),
        };
        Ok(Config {
            key,
            encrypt,
            allow_unauthenticated,
            to: raw.to.get_ref().clone(),
            rate,
            fec,
            heartbeat,
            settle,
            rescan,
            repeat_spacing,
            ignore: raw
                .ignore
                .unwrap_or_else(|| DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect()),
            names,
            state: state.clone(),
            channels,
            streams: {
                if !streams.is_empty() && state.is_none() {
                    return Err(at(
                        0,
                        "[[stream]] needs state = \"/path\": its records are spooled there".into(),
                    ));
                }
                streams
            },
            stream_flush,
        })
    }
}

/// The shard length: `shard_size` if given (its datagrams, carrying `trailer`, must fit the link's
/// `mtu`), else the longest that fits it ([`wire::shard_len_for_mtu`]); `mtu` defaults to Ethernet's.
///
/// [`wire::shard_len_for_mtu`]: checkvalve_common::wire::shard_len_for_mtu
pub fn shard_len(mtu: Option<u16>, shard_size: Option<u16>, trailer: usize) -> Result<u16, String> {
    use checkvalve_common::wire::{DEFAULT_MTU, packet_len, shard_len_for_mtu};
    let link = mtu.unwrap_or(DEFAULT_MTU);
    match shard_size {
        Some(s) if packet_len(usize::from(s), trailer) > usize::from(link) => Err(format!(
            "shard_size {s} makes datagrams of {} bytes at the IP layer{}, more than the link's mtu of {link}: set mtu (9000 for jumbo frames), or leave shard_size out to size shards from it",
            packet_len(usize::from(s), trailer),
            if trailer > 0 {
                " with the authentication trailer"
            } else {
                ""
            }
        )),
        Some(s) => Ok(s),
        None => shard_len_for_mtu(link, trailer)
            .ok_or_else(|| format!("mtu {link} leaves no room for a shard")),
    }
}

/// True if `name` matches `pattern` (`*` for any run of characters, `?` for one).
pub fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some('?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    m(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"key = "/etc/checkvalve/keys/link-1.key"
to = "192.0.2.10:5000"
rate = "800M"
settle = "2s"

[[channel]]
name = "bulk"
spool = "/var/spool/checkvalve/bulk"

[[channel]]
name = "alarms"
spool = "/var/spool/checkvalve/alarms"
priority = 10
after_send = "keep"
"#;

    fn err_line(text: &str) -> (usize, String) {
        match Config::parse(Path::new("send.toml"), text) {
            Err(ConfigError::At { line, reason, .. }) => (line, reason),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_config_loads_with_priorities_first() {
        let c = Config::parse(Path::new("send.toml"), GOOD).unwrap();
        assert_eq!(c.rate, 800_000_000);
        assert_eq!(c.settle, Duration::from_secs(2));
        assert_eq!(c.channels[0].name, "alarms");
        assert_eq!(c.channels[0].after_send, AfterSend::Keep);
        assert_eq!(c.channels[1].after_send, AfterSend::Delete);
    }

    #[test]
    fn a_type_error_names_its_key_and_column() {
        let text = GOOD.replace("settle = \"2s\"", "settle = \"2s\"\nmtu = \"1400\"");
        let e = Config::parse(Path::new("send.toml"), &text)
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("send.toml:5:7: mtu: invalid type"), "{e}");
        let e = Config::parse(
            Path::new("send.toml"),
            &GOOD.replace("priority = 10", "priority = \"high\""),
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains(":13:12: channel[2].priority: "), "{e}");
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let (line, reason) = err_line(&GOOD.replace("\"800M\"", "\"fast\""));
        assert_eq!(line, 3, "{reason}");
        let (line, reason) =
            err_line(&GOOD.replace("after_send = \"keep\"", "after_send = \"shred\""));
        assert_eq!(line, 14, "{reason}");
        assert!(reason.contains("shred"));
        let (line, _) = err_line(&GOOD.replace("priority = 10", "priority = 10\ncolour = 1"));
        assert_eq!(line, 14);
        let (line, _) = err_line(&GOOD.replace("name = \"alarms\"", "name = \"bulk\""));
        assert_eq!(line, 11);
        let (line, reason) = err_line(&GOOD.replace("name = \"alarms\"", "name = \"Bulk\""));
        assert_eq!(line, 11, "channels differing only by case: {reason}");
        let (line, _) = err_line(&GOOD.replace("\"/var/spool/checkvalve/bulk\"", "\"relative\""));
        assert_eq!(line, 8);
        let (line, _) = err_line("to = \"x:1\"\nrate = [\n");
        assert!(line >= 2);
        let (line, reason) = err_line(&GOOD.replace("/alarms\"", "/bulk/alarms\""));
        assert_eq!(line, 12, "{reason}");
        let (line, reason) =
            err_line(&GOOD.replace("after_send = \"keep\"", "after_send = \"move\""));
        assert_eq!(line, 14, "{reason}");
        let moved = GOOD.replace(
            "after_send = \"keep\"",
            "after_send = \"move\"\nsent = \"/var/spool/checkvalve/bulk/sent\"",
        );
        let (line, reason) = err_line(&moved);
        assert_eq!(line, 12, "{reason}");
        let moved = moved
            .replace("bulk/sent", "sent-alarms")
            .replace("settle = \"2s\"", "settle = \"2s\"\nsent_max_age = \"1d\"");
        let (line, reason) = err_line(&moved);
        assert_eq!(line, 5, "{reason}");
        let moved = moved.replace("sent_max_age = \"1d\"\n", "")
            + "sent_max_age = \"30d\"\nsent_max_bytes = \"10G\"\n";
        let cfg = Config::parse(Path::new("send.toml"), &moved).unwrap();
        assert_eq!(
            cfg.channels[0].after_send,
            AfterSend::Move(SentFolder {
                dir: "/var/spool/checkvalve/sent-alarms".into(),
                max_age: Some(Duration::from_secs(30 * 86_400)),
                max_bytes: Some(10 << 30),
            })
        );
        let (line, reason) = err_line(&format!(
            "state = \"/var/spool/checkvalve/bulk/st\"\n{GOOD}"
        ));
        assert_eq!(line, 1, "{reason}");
    }

    #[test]
    fn the_shipped_example_loads() {
        let text = include_str!("../../docs/checkvalve-send.example.toml");
        let c = Config::parse(Path::new("example.toml"), text).unwrap();
        assert_eq!(c.channels.len(), 3);
        assert!(matches!(c.channels[1].after_send, AfterSend::Move(_)));
        assert_eq!(c.channels[0].name, "alarms");
        assert_eq!(c.streams.len(), 2);
        assert_eq!(c.stream_flush, Duration::from_millis(100));
    }

    #[test]
    fn streams_need_a_state_folder_and_a_valid_input_named_on_its_line() {
        let ok = Config::parse(
            Path::new("s.toml"),
            "to = \"127.0.0.1:9\"\nallow_unauthenticated = true\nstate = \"/var/lib/cv\"\n[[stream]]\nname = \"syslog\"\ninput = \"udp://127.0.0.1:514\"\n",
        )
        .expect("streams alone are something to send");
        assert!(ok.channels.is_empty());
        assert_eq!(ok.streams[0].name, "syslog");
        let no_state = Config::parse(
            Path::new("s.toml"),
            "to = \"127.0.0.1:9\"\nallow_unauthenticated = true\n[[stream]]\nname = \"syslog\"\ninput = \"-\"\n",
        );
        assert!(no_state.unwrap_err().to_string().contains("needs state"));
        let bad = Config::parse(
            Path::new("s.toml"),
            "to = \"127.0.0.1:9\"\nallow_unauthenticated = true\nstate = \"/var/lib/cv\"\n[[stream]]\nname = \"syslog\"\ninput = \"http://x:1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains(":6"), "the input's line: {bad}");
    }

    #[test]
    fn globs_match_temporary_names() {
        assert!(glob(".*", ".hidden") && glob("*.tmp", "a.tmp") && glob("*.part", "x.y.part"));
        assert!(!glob("*.tmp", "a.tmp.csv") && !glob(".*", "a.csv"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
    }
}
