//! The vendor-visible output folder: temporary files in a hidden state folder, verification, and
//! atomic publication under the final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use checkvalve_common::assembler::ObjectKey;
use checkvalve_common::meta::{DIGEST_LEN, Head, STATE_DIR};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a file could not be published.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The content does not hash to the digest the sender computed.
    #[error("SHA-256 mismatch: content is not what was sent")]
    DigestMismatch,
    /// The temporary file does not have the announced size.
    #[error("size {actual} differs from the announced {expected}")]
    SizeMismatch {
        /// Announced.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// A folder on the way is a symbolic link (it could lead outside the output folder).
    #[error("{0} is a symbolic link: refusing to write through it")]
    SymlinkOnPath(PathBuf),
    /// Something on the way is not a folder, or the target is a folder.
    #[error("{0} is in the way")]
    InTheWay(PathBuf),
    /// Any other filesystem error.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The output folder and its hidden state folder.
#[derive(Debug, Clone)]
pub struct Share {
    root: PathBuf,
    tmp: PathBuf,
}

impl Share {
    /// Opens (creating if needed) `root` and its state folder; deletes temporary files left by a
    /// previous run, which can never complete now.
    pub fn open(root: &Path) -> io::Result<(Self, usize)> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let tmp = root.join(STATE_DIR).join("tmp");
        fs::create_dir_all(&tmp)?;
        let mut stale = 0;
        for e in fs::read_dir(&tmp)?.flatten() {
            if fs::remove_file(e.path()).is_ok() {
                stale += 1;
            }
        }
        Ok((Share { root, tmp }, stale))
    }

    /// The output folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Temporary path of an object in progress.
    pub fn temp_path(&self, key: ObjectKey) -> PathBuf {
        self.tmp.join(format!("{key}.part"))
    }

    /// Creates the temporary file of an object.
    pub fn create_temp(&self, key: ObjectKey) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.temp_path(key))
    }

    /// Removes an object's temporary file, if any.
    pub fn discard(&self, key: ObjectKey) {
        let _ = fs::remove_file(self.temp_path(key));
    }

    /// Bytes available to this process on the output filesystem.
    pub fn free_bytes(&self) -> Option<u64> {
        nix::sys::statvfs::statvfs(&self.root)
            .ok()
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
    }

    /// Verifies the temporary file against `digest`, makes it durable, and renames it into place.
    ///
    /// Returns the final path. On error the temporary file is removed and nothing is published.
    pub fn publish(
        &self,
        key: ObjectKey,
        head: &Head,
        digest: &[u8; DIGEST_LEN],
    ) -> Result<PathBuf, PublishError> {
        let result = self.verify_and_rename(key, head, digest);
        if result.is_err() {
            self.discard(key);
        }
        result
    }

    fn verify_and_rename(
        &self,
        key: ObjectKey,
        head: &Head,
        digest: &[u8; DIGEST_LEN],
    ) -> Result<PathBuf, PublishError> {
        // An empty file never had content written, so its temporary file may not exist yet.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.temp_path(key))?;
        file.set_len(head.size)?;
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        if total != head.size {
            return Err(PublishError::SizeMismatch {
                expected: head.size,
                actual: total,
            });
        }
        if hasher.finalize().as_slice() != digest {
            return Err(PublishError::DigestMismatch);
        }
        if head.mtime_secs >= 0 {
            let mtime = UNIX_EPOCH
                + Duration::new(head.mtime_secs as u64, head.mtime_nanos.min(999_999_999));
            let _ = file.set_modified(mtime);
        }
        file.sync_all()?;
        drop(file);
        let target = self.prepare_target(&head.path)?;
        fs::rename(self.temp_path(key), &target)?;
        if let Some(parent) = target.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(target)
    }

    /// Creates the folders leading to `rel` without following any symbolic link.
    ///
    /// `rel` was already checked for `..`, absolute paths and the like by the protocol core; this
    /// guards against links planted inside the output folder.
    fn prepare_target(&self, rel: &str) -> Result<PathBuf, PublishError> {
        let mut dir = self.root.clone();
        let mut parts = rel.split('/').peekable();
        while let Some(part) = parts.next() {
            let path = dir.join(part);
            let last = parts.peek().is_none();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() && !last => {
                    return Err(PublishError::SymlinkOnPath(path));
                }
                Ok(m) if m.is_dir() && last => return Err(PublishError::InTheWay(path)),
                Ok(m) if !m.is_dir() && !last && !m.file_type().is_symlink() => {
                    return Err(PublishError::InTheWay(path));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !last {
                        match fs::create_dir(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
            dir = path;
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use checkvalve_common::meta::ObjectKind;
    use std::io::Write;

    fn head(path: &str, data: &[u8]) -> (Head, [u8; 32]) {
        (
            Head {
                path: path.into(),
                size: data.len() as u64,
                mtime_secs: 1_600_000_000,
                mtime_nanos: 0,
                kind: ObjectKind::File,
            },
            Sha256::digest(data).into(),
        )
    }

    fn write_temp(share: &Share, key: ObjectKey, data: &[u8]) -> File {
        let mut f = share.create_temp(key).unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn publishes_verified_files_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path()).unwrap();
        let key = ObjectKey {
            session: 1,
            object: 1,
        };
        let (h, d) = head("a/b/c.txt", b"hello");
        let f = write_temp(&share, key, b"hello");
        let p = {
            drop(f);
            share.publish(key, &h, &d)
        }
        .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(p, share.root().join("a/b/c.txt"));

        let key2 = ObjectKey {
            session: 1,
            object: 2,
        };
        let f = write_temp(&share, key2, b"hellp");
        let (h, d) = head("x.txt", b"hello");
        assert!(matches!(
            {
                drop(f);
                share.publish(key2, &h, &d)
            },
            Err(PublishError::DigestMismatch)
        ));
        assert!(!share.root().join("x.txt").exists());
        assert!(!share.temp_path(key2).exists());
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), share.root().join("evil")).unwrap();
        let key = ObjectKey {
            session: 1,
            object: 3,
        };
        let (h, d) = head("evil/owned.txt", b"x");
        let f = write_temp(&share, key, b"x");
        assert!(matches!(
            {
                drop(f);
                share.publish(key, &h, &d)
            },
            Err(PublishError::SymlinkOnPath(_))
        ));
        assert!(!outside.path().join("owned.txt").exists());
    }
}
