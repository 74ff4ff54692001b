//! The names of recently used folders of the share, folded to lower case, so that a new name is
//! checked for a case clash without listing its folder each time: a listing per file made
//! publishing into a folder of `n` files cost `O(n)` per file, under the share's lock.
//!
//! A folder's names are trusted only while its modification time is the one seen when they were
//! listed or when this process last added a name: anything else that changes the folder
//! (retention, an operator) makes the next check list it again. Only hashes are kept, so memory
//! stays small and bounded; a hash that matches is confirmed by listing.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::stat::{FileStat, fstat};

/// Most names remembered, over all folders (about 1 MiB of hashes).
const MAX_NAMES: usize = 1 << 16;
/// Most folders remembered.
const MAX_FOLDERS: usize = 16;

/// Folded names of recently used folders, the most recently used last.
#[derive(Debug, Default)]
pub struct FoldedNames {
    folders: Vec<Folder>,
}

#[derive(Debug)]
struct Folder {
    id: (u64, u64),
    mtime: (i64, i64),
    names: HashSet<u64>,
}

fn identity(st: &FileStat) -> ((u64, u64), (i64, i64)) {
    ((st.st_dev, st.st_ino), (st.st_mtime, st.st_mtime_nsec))
}

fn folded(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.to_lowercase().hash(&mut h);
    h.finish()
}

impl FoldedNames {
    /// False when `dir` certainly holds no name equal to `name` but for case; true when it may
    /// (the caller lists the folder to be sure). `list` lists the folder's names, called only
    /// when what is remembered of it is missing or out of date.
    pub fn may_clash(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &str,
        list: impl FnOnce() -> nix::Result<Vec<String>>,
    ) -> bool {
        let Ok(st) = fstat(dir.as_fd()) else {
            return true;
        };
        let (id, mtime) = identity(&st);
        let at = match self.folders.iter().position(|f| f.id == id) {
            Some(i) if self.folders[i].mtime == mtime => i,
            found => {
                if let Some(i) = found {
                    self.folders.remove(i);
                }
                let Ok(names) = list() else {
                    return true;
                };
                if names.len() > MAX_NAMES {
                    return true;
                }
                while self.folders.len() >= MAX_FOLDERS
                    || self.len() + names.len() > MAX_NAMES && !self.folders.is_empty()
                {
                    self.folders.remove(0);
                }
                self.folders.push(Folder {
                    id,
                    mtime,
                    names: names.iter().map(|n| folded(n)).collect(),
                });
                self.folders.len() - 1
            }
        };
        let folder = self.folders.remove(at);
        let clash = folder.names.contains(&folded(name));
        self.folders.push(folder);
        clash
    }

    /// Remembers that this process added `name` to `dir` (renamed a file or made a folder).
    pub fn added(&mut self, dir: BorrowedFd<'_>, name: &str) {
        let Ok(st) = fstat(dir.as_fd()) else {
            return;
        };
        let (id, mtime) = identity(&st);
        let total = self.len();
        let Some(f) = self.folders.iter_mut().find(|f| f.id == id) else {
            return;
        };
        if total >= MAX_NAMES {
            // Full: forget the folder rather than grow; it is listed again when next used.
            self.folders.retain(|f| f.id != id);
            return;
        }
        f.names.insert(folded(name));
        f.mtime = mtime;
    }

    fn len(&self) -> usize {
        self.folders.iter().map(|f| f.names.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn names(dir: &std::path::Path) -> nix::Result<Vec<String>> {
        Ok(std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect())
    }

    #[test]
    fn a_folder_is_listed_once_and_its_case_variants_are_still_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("Report.csv"), b"x").unwrap();
        let mut idx = FoldedNames::default();
        let listings = std::cell::Cell::new(0);
        let check = |idx: &mut FoldedNames, name: &str| {
            idx.may_clash(dir.as_fd(), name, || {
                listings.set(listings.get() + 1);
                names(tmp.path())
            })
        };
        assert!(check(&mut idx, "report.CSV"));
        assert!(!check(&mut idx, "other.csv"));
        // This process adds a name: remembered without listing again.
        std::fs::write(tmp.path().join("other.csv"), b"x").unwrap();
        idx.added(dir.as_fd(), "other.csv");
        assert!(check(&mut idx, "OTHER.csv"));
        assert!(!check(&mut idx, "third.csv"));
        assert_eq!(listings.get(), 1);
    }

    #[test]
    fn a_folder_changed_by_someone_else_is_listed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let mut idx = FoldedNames::default();
        assert!(!idx.may_clash(dir.as_fd(), "a.txt", || names(tmp.path())));
        // Another process adds a name: the folder's modification time moves on.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(tmp.path().join("A.TXT"), b"x").unwrap();
        assert!(idx.may_clash(dir.as_fd(), "a.txt", || names(tmp.path())));
    }
}
