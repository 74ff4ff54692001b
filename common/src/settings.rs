//! What the configuration files of both programs share: how a mistake is reported (file, line,
//! reason). Parsing values lives in [`crate::units`].

use std::path::{Path, PathBuf};

use thiserror::Error;

/// A configuration that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value (or the syntax) is wrong at a known place.
    #[error("{file}:{line}:{column}: {}{reason}", key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    At {
        /// The file.
        file: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// Column, from 1 (in characters).
        column: usize,
        /// The key there, with its table (`channel[2].spool`, `link.down_after`), or the table
        /// on a table's header line.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The mistake at byte `offset` of `text`, the content of `file`.
    pub fn at(file: &Path, text: &str, offset: usize, reason: String) -> ConfigError {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError::At {
            file: file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            key: key_at(text, line_start),
            reason,
        }
    }
}

/// The key of the `key = value` line starting at byte `line_start` of `text`, prefixed by the
/// table it is in (`[link]`, or the N-th `[[channel]]`, counted from 1).
fn key_at(text: &str, line_start: usize) -> Option<String> {
    let line = text[line_start..].lines().next().unwrap_or("");
    // A table's header (`[link]`, `[[channel]]`): the table is the key.
    if let Some(header) = line.trim().strip_prefix('[') {
        let name = header.trim_start_matches('[').split(']').next()?.trim();
        return (!name.is_empty()).then(|| name.to_owned());
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let mut table: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let n = counts.entry(name.to_owned()).or_default();
            *n += 1;
            table = Some(format!("{name}[{n}]"));
        } else if let Some(name) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            table = Some(name.to_owned());
        }
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistake_is_placed_by_line_column_and_key_with_its_table() {
        let text = "to = \"x:1\"\n[[channel]]\nname = \"a\"\n[[channel]]\nspool = 7\n[link]\ndown_after = \"x\"\n";
        let at = |needle: &str| {
            let offset = text.find(needle).unwrap();
            ConfigError::at(Path::new("send.toml"), text, offset, "bad".into()).to_string()
        };
        assert_eq!(at("7"), "send.toml:5:9: channel[2].spool: bad");
        assert_eq!(at("\"x\""), "send.toml:7:14: link.down_after: bad");
        assert_eq!(at("\"x:1\""), "send.toml:1:6: to: bad");
        assert_eq!(at("[link]"), "send.toml:6:1: link: bad");
        assert_eq!(at("[[channel]]\nspool"), "send.toml:4:1: channel: bad");
    }
}
