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
    /// A value (or the syntax) is wrong at a known line.
    #[error("{file}:{line}: {reason}")]
    At {
        /// The file.
        file: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The mistake at byte `offset` of `text`, the content of `file`.
    pub fn at(file: &Path, text: &str, offset: usize, reason: String) -> ConfigError {
        ConfigError::At {
            file: file.to_owned(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            reason,
        }
    }
}
