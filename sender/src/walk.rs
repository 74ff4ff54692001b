//! Turns the PATH arguments into the list of regular files to send, with their names at the receiver.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use checkvalve_common::meta::{NamePolicy, check_path_as};
use tracing::{error, warn};

/// A regular file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where to read it.
    pub source: PathBuf,
    /// Its `/`-separated path at the receiver, relative to the output folder.
    pub name: String,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Files to send, in a stable order (arguments in order, directory entries sorted by name).
    pub entries: Vec<Entry>,
    /// Entries refused (unreadable folders, names that are not UTF-8 or not safe).
    pub failed: usize,
}

/// Lists the files under each path; a file lands under its path relative to the argument's parent.
pub fn walk(paths: &[PathBuf], names: NamePolicy) -> Result<Walk> {
    let mut w = Walk::default();
    for arg in paths {
        let abs =
            fs::canonicalize(arg).with_context(|| format!("cannot open {}", arg.display()))?;
        let Some(base) = abs.file_name().and_then(|n| n.to_str()) else {
            bail!("{} has no usable name to send it under", arg.display());
        };
        visit(&abs, base.to_owned(), names, &mut w);
    }
    Ok(w)
}

fn visit(path: &Path, name: String, names: NamePolicy, w: &mut Walk) {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            error!(path = %path.display(), "cannot stat: {e}");
            w.failed += 1;
            return;
        }
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        warn!(path = %path.display(), "skipping symbolic link (links are not followed)");
    } else if ft.is_file() {
        match check_path_as(&name, names) {
            Ok(()) => w.entries.push(Entry {
                source: path.to_owned(),
                name,
            }),
            Err(e) => {
                error!(path = %path.display(), "refused: {e}");
                w.failed += 1;
            }
        }
    } else if ft.is_dir() {
        let mut children: Vec<_> = match fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
            Err(e) => {
                error!(path = %path.display(), "cannot list folder: {e}");
                w.failed += 1;
                return;
            }
        };
        children.sort();
        for child in children {
            let child_path = path.join(&child);
            match child.to_str() {
                Some(c) => visit(&child_path, format!("{name}/{c}"), names, w),
                None => {
                    error!(path = %child_path.display(), "refused: name is not valid UTF-8");
                    w.failed += 1;
                }
            }
        }
    } else {
        warn!(path = %path.display(), "skipping special file (only regular files are sent)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_to_the_argument_parent() {
        let dir = std::env::temp_dir().join(format!("cv-walk-{}", std::process::id()));
        fs::create_dir_all(dir.join("exports/sub")).unwrap();
        fs::write(dir.join("exports/b.csv"), b"b").unwrap();
        fs::write(dir.join("exports/sub/a.csv"), b"a").unwrap();
        fs::write(dir.join("single.txt"), b"s").unwrap();
        let w = walk(
            &[dir.join("exports"), dir.join("single.txt")],
            NamePolicy::Portable,
        )
        .unwrap();
        let names: Vec<_> = w.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["exports/b.csv", "exports/sub/a.csv", "single.txt"]);
        fs::remove_dir_all(dir).unwrap();
    }
}
