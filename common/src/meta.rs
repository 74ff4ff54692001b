//! Object metadata: the head that opens every object and the digest that closes it.

use bincode::{Decode, Encode};
use thiserror::Error;

/// Longest encoded head accepted, so that one head always fits the 16-bit `head_len` field.
pub const MAX_HEAD_LEN: usize = crate::wire::MAX_HEAD_LEN;
/// Longest relative path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component accepted, in bytes (the usual filesystem limit).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Length of the digest trailer: a raw SHA-256.
pub const DIGEST_LEN: usize = 32;
/// Name of the receiver's state folder; no delivered path may start with it.
pub const STATE_DIR: &str = ".checkvalve";

/// What an object carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ObjectKind {
    /// A regular file.
    File,
    /// A batch of stream records.
    Records,
}

/// Metadata head: block 0 of every object.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Head {
    /// Path relative to the receiver's output folder, `/`-separated UTF-8.
    pub path: String,
    /// Content length in bytes (equals the datagram header's `content_len`).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_nanos: u32,
    /// What the content is.
    pub kind: ObjectKind,
}

/// Why metadata was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// The head bytes are not a valid bincode `Head`.
    #[error("undecodable metadata: {0}")]
    Undecodable(String),
    /// The head does not fill exactly its announced length.
    #[error("metadata length mismatch")]
    LengthMismatch,
    /// The encoded head is longer than [`MAX_HEAD_LEN`].
    #[error("metadata longer than {MAX_HEAD_LEN} bytes")]
    TooLong,
    /// The head's size disagrees with the datagram headers' `content_len`.
    #[error("metadata size {head} disagrees with content length {header}")]
    SizeMismatch {
        /// Size in the head.
        head: u64,
        /// Content length in the datagram headers.
        header: u64,
    },
    /// The path is not safe to create under the output folder.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The offending path, as received.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_HEAD_LEN>()
}

impl Head {
    /// Encodes the head (bincode 2, big-endian, fixed-width integers). Its path must obey the
    /// rules of every policy: which of those names a share takes is the receiver's policy.
    pub fn encode(&self) -> Result<Vec<u8>, MetaError> {
        check_path_as(&self.path, NamePolicy::Posix)?;
        let bytes = bincode::encode_to_vec(self, config())
            .map_err(|e| MetaError::Undecodable(e.to_string()))?;
        if bytes.len() > MAX_HEAD_LEN {
            return Err(MetaError::TooLong);
        }
        Ok(bytes)
    }

    /// Decodes a head and checks that its path is safe, portable names only.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        Head::decode_as(bytes, NamePolicy::Portable)
    }

    /// Decodes a head and checks that its path is safe under `policy`.
    pub fn decode_as(bytes: &[u8], policy: NamePolicy) -> Result<Self, MetaError> {
        if bytes.len() > MAX_HEAD_LEN {
            return Err(MetaError::TooLong);
        }
        let (head, used): (Head, usize) = bincode::decode_from_slice(bytes, config())
            .map_err(|e| MetaError::Undecodable(e.to_string()))?;
        if used != bytes.len() {
            return Err(MetaError::LengthMismatch);
        }
        check_path_as(&head.path, policy)?;
        Ok(head)
    }
}

/// Which names a share accepts beyond the rules every name obeys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NamePolicy {
    /// Names vendors can open from Windows too (over SMB): no backslash, no device names, no
    /// characters or endings Windows forbids. The default.
    #[default]
    Portable,
    /// Only what POSIX and safety require, for shares never read from Windows.
    Posix,
}

impl std::str::FromStr for NamePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "portable" => Ok(NamePolicy::Portable),
            "posix" => Ok(NamePolicy::Posix),
            other => Err(format!("{other:?}: names are \"portable\" or \"posix\"")),
        }
    }
}

/// Checks `path` with the portable rule ([`check_path_as`]).
pub fn check_path(path: &str) -> Result<(), MetaError> {
    check_path_as(path, NamePolicy::Portable)
}

/// Checks that `path` is a relative, normalised path that stays inside the output folder.
///
/// Refused under every policy: empty paths, absolute paths, empty, `.` or `..` components, NUL,
/// control characters, invisible format characters, over-long names, and anything inside the
/// receiver's own state folder. Under [`NamePolicy::Portable`] also backslashes (a path separator
/// for vendors reading the share from Windows) and names Windows cannot hold.
pub fn check_path_as(path: &str, policy: NamePolicy) -> Result<(), MetaError> {
    let portable = policy == NamePolicy::Portable;
    let bad = |reason| {
        Err(MetaError::UnsafePath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return bad("too long");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.chars().any(|c| c == '\0') {
        return bad("contains NUL");
    }
    if path.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if path.chars().any(is_format_control) {
        return bad("contains an invisible format character (bidirectional override, zero width)");
    }
    if portable && path.contains('\\') {
        return bad("contains a backslash");
    }
    for (i, comp) in path.split('/').enumerate() {
        match comp {
            "" => return bad("empty component"),
            "." | ".." => return bad("dot component"),
            c if c.len() > MAX_COMPONENT_LEN => return bad("component too long"),
            STATE_DIR if i == 0 => return bad("inside the receiver's state folder"),
            c if portable && windows_reserved(c) => return bad("a name Windows cannot hold"),
            _ => {}
        }
    }
    Ok(())
}

/// Unicode format characters (category Cf) that change how a name is shown without showing
/// themselves: `invoice\u{202E}txt.exe` shows as `invoiceexe.txt`.
fn is_format_control(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// Names vendors reading the share over SMB from Windows could not open: device names (with any
/// extension, `COM1`-`COM9` and `LPT1`-`LPT9` with superscript digits too), names ending in a dot
/// or a space, and the characters Windows forbids.
fn windows_reserved(component: &str) -> bool {
    const DEVICES: [&str; 6] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];
    if component.ends_with('.') || component.ends_with(' ') {
        return true;
    }
    if component.contains(['<', '>', ':', '"', '|', '?', '*']) {
        return true;
    }
    let stem = component.split('.').next().unwrap_or(component).trim_end();
    let upper = stem.to_ascii_uppercase();
    if DEVICES.contains(&upper.as_str()) {
        return true;
    }
    let numbered = |prefix: &str| {
        upper.strip_prefix(prefix).is_some_and(|d| {
            matches!(
                d,
                "1" | "2"
                    | "3"
                    | "4"
                    | "5"
                    | "6"
                    | "7"
                    | "8"
                    | "9"
                    | "\u{B9}"
                    | "\u{B2}"
                    | "\u{B3}"
            )
        })
    };
    numbered("COM") || numbered("LPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(path: &str) -> Head {
        Head {
            path: path.into(),
            size: 12,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            kind: ObjectKind::File,
        }
    }

    #[test]
    fn head_round_trips() {
        let h = head("exports/été/a.csv");
        assert_eq!(Head::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\0b",
            "a\\..\\b",
            ".checkvalve/tmp/x",
            "a\nb",
            "CON",
            "logs/nul.txt",
            "aux.tar.gz",
            "com1",
            "LPT9.log",
            "a/b.",
            "a/b ",
            "what?.txt",
            "a:b",
            "COM\u{B9}.txt",
            "lpt\u{B3}",
            "CONIN$",
            "logs/conout$.log",
            "invoice\u{202E}txt.exe",
            "a\u{200B}b",
            "\u{FEFF}bom.csv",
        ] {
            assert!(check_path(p).is_err(), "{p:?} accepted");
        }
        for p in [
            "a",
            "a/b/c.txt",
            ".hidden",
            "a/.checkvalve",
            "日本/ファイル",
            "console.log",
            "com10",
            "nullable.csv",
            "com0",
        ] {
            assert!(check_path(p).is_ok(), "{p:?} refused");
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes_and_bad_paths() {
        let mut bytes = head("a").encode().unwrap();
        bytes.push(0);
        assert_eq!(Head::decode(&bytes), Err(MetaError::LengthMismatch));
        let forged = bincode::encode_to_vec(head("../x"), config()).unwrap();
        assert!(matches!(
            Head::decode(&forged),
            Err(MetaError::UnsafePath { .. })
        ));
    }

    #[test]
    fn the_posix_policy_takes_what_only_windows_refuses_and_nothing_unsafe() {
        for name in ["trend 12:00.csv", "COM1.log", "a\\b.txt", "ends.", "what?"] {
            assert!(check_path(name).is_err(), "portable took {name:?}");
            assert!(
                check_path_as(name, NamePolicy::Posix).is_ok(),
                "posix refused {name:?}"
            );
        }
        for name in [
            "../x",
            "/etc/passwd",
            "a//b",
            "bell\u{7}",
            "invoice\u{202E}txt.exe",
            ".checkvalve/x",
        ] {
            assert!(
                check_path_as(name, NamePolicy::Posix).is_err(),
                "posix took {name:?}"
            );
        }
        assert_eq!("posix".parse(), Ok(NamePolicy::Posix));
        assert_eq!("portable".parse(), Ok(NamePolicy::Portable));
        assert!("windows".parse::<NamePolicy>().is_err());
    }
}
