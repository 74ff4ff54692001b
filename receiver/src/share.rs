//! The vendor-visible output folder and the receiver's state folder: exclusive temporary files,
//! verification through the descriptor that was written, and atomic publication beneath the share.
//!
//! Every path below the share is resolved relative to a descriptor of the share with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so that no symbolic link or rename planted
//! in the share can send a write elsewhere. A temporary file is created with `O_EXCL` under a name
//! used once, is written, hashed and synced through the one descriptor, and that same file (checked
//! by inode) is what gets renamed into place.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use checkvalve_common::assembler::{ObjectKey, Precedence};
use checkvalve_common::meta::{DIGEST_LEN, Head, STATE_DIR};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{Mode, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::folded::FoldedNames;

/// Paths whose newest published version is remembered, to settle late arrivals of older content.
const REMEMBERED_PATHS: usize = 65_536;

/// Why the share could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// Another receiver holds the state folder's lock.
    #[error("another receiver is using the state folder {0} (its lock file is held)")]
    Locked(PathBuf),
    /// A filesystem error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Why a file could not be published.
#[derive(Debug, Error)]
pub enum PublishError {
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
    SymlinkOnPath(String),
    /// Something on the way is not a folder, or the target is a folder.
    #[error("{0} is in the way")]
    InTheWay(String),
    /// The path lies in a folder a record channel writes.
    #[error("{0}/ is a record channel's folder")]
    ChannelFolder(String),
    /// The folder holds a name that differs only by case, which Windows readers could not tell apart.
    #[error("{existing:?} already exists in that folder and differs only by case")]
    CaseClash {
        /// The name already there.
        existing: String,
    },
    /// Newer content for the same path (by the senders' order) was already published.
    #[error("superseded: newer content for this path was already published")]
    Superseded,
    /// The temporary file was replaced between verification and rename.
    #[error("temporary file replaced under the verifier")]
    Replaced,
    /// Any other filesystem error.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<Errno> for PublishError {
    fn from(e: Errno) -> Self {
        PublishError::Io(io::Error::from(e))
    }
}

/// What publishing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The file is now in the share at this path.
    New(PathBuf),
    /// The share already held exactly this content under this path: nothing changed.
    Repeat,
}

/// A temporary file in the state folder, created exclusively and used once.
#[derive(Debug)]
pub struct Temp {
    /// The open file: every write, the hash and the sync go through it.
    pub file: File,
    name: String,
}

/// Newest published precedence and content digest per path, bounded.
#[derive(Debug, Default)]
struct Newest {
    map: HashMap<String, (Precedence, [u8; DIGEST_LEN])>,
    order: VecDeque<String>,
}

impl Newest {
    fn get(&self, path: &str) -> Option<(Precedence, [u8; DIGEST_LEN])> {
        self.map.get(path).copied()
    }

    fn set(&mut self, path: &str, p: Precedence, digest: [u8; DIGEST_LEN]) {
        let p = self.get(path).map_or(p, |(old, _)| old.max(p));
        if self.map.insert(path.to_owned(), (p, digest)).is_none() {
            self.order.push_back(path.to_owned());
            while self.order.len() > REMEMBERED_PATHS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The output folder and the state folder.
#[derive(Debug)]
pub struct Share {
    root: PathBuf,
    root_dir: OwnedFd,
    state: PathBuf,
    tmp_dir: OwnedFd,
    nonce: u64,
    next_temp: AtomicU64,
    /// Serialises the precedence check with the rename it allows.
    newest: Mutex<Newest>,
    /// Names of recently used folders, for case clashes (taken only under `newest`).
    folded: Mutex<FoldedNames>,
    /// Permissions given to a file as it is published.
    file_mode: u32,
    /// Group given to published files and the folders made for them, if not the receiver's.
    group: Option<nix::unistd::Gid>,
    /// Folders written by record channels (lower case): no file is published into them.
    channels: Mutex<std::collections::HashSet<String>>,
    _lock: File,
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn open_dir_beneath(dir: BorrowedFd<'_>, name: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(beneath());
    openat2(dir, name, how)
}

fn open_dir(path: &Path) -> Result<OwnedFd, OpenError> {
    let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
    openat2(nix::fcntl::AT_FDCWD, path, how).map_err(|e| OpenError::Io {
        path: path.to_owned(),
        source: e.into(),
    })
}

impl Share {
    /// Opens (creating if needed) the output folder `root` and the state folder (default
    /// `root/.checkvalve`), takes the state folder's lock, and deletes temporary files left by a
    /// previous run, which can never complete now. Returns the share and how many were deleted.
    pub fn open(root: &Path, state: Option<&Path>) -> Result<(Self, usize), OpenError> {
        let io_at = |path: &Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { path, source }
        };
        fs::create_dir_all(root).map_err(io_at(root))?;
        let root = fs::canonicalize(root).map_err(io_at(root))?;
        let state = state.map_or_else(|| root.join(STATE_DIR), Path::to_path_buf);
        fs::create_dir_all(&state).map_err(io_at(&state))?;
        let state = fs::canonicalize(&state).map_err(io_at(&state))?;
        let lock_path = state.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(state)),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        let tmp = state.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(io_at(&tmp))?;
        let mut stale = 0;
        for e in fs::read_dir(&tmp).map_err(io_at(&tmp))?.flatten() {
            if fs::remove_file(e.path()).is_ok() {
                stale += 1;
            }
        }
        let share = Share {
            root_dir: open_dir(&root)?,
            tmp_dir: open_dir(&tmp)?,
            root,
            state,
            nonce: rand::random::<u32>().into(),
            next_temp: AtomicU64::new(0),
            newest: Mutex::new(Newest::default()),
            folded: Mutex::new(FoldedNames::default()),
            file_mode: 0o640,
            group: None,
            channels: Mutex::default(),
            _lock: lock,
        };
        Ok((share, stale))
    }

    /// The output folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state folder.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Creates a fresh temporary file for an object; never reuses or truncates an existing one.
    pub fn create_temp(&self, key: ObjectKey) -> io::Result<Temp> {
        loop {
            let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
            let name = format!("{key}-{:08x}-{n}.part", self.nonce);
            let how = OpenHow::new()
                .flags(OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC)
                .mode(Mode::from_bits_truncate(0o600))
                .resolve(beneath());
            match openat2(self.tmp_dir.as_fd(), name.as_str(), how) {
                Ok(fd) => {
                    return Ok(Temp {
                        file: File::from(fd),
                        name,
                    });
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Removes a temporary file.
    pub fn discard(&self, temp: Temp) {
        let _ = unlinkat(
            self.tmp_dir.as_fd(),
            temp.name.as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
    }

    /// Bytes available to this process on the output filesystem.
    pub fn free_bytes(&self) -> Option<u64> {
        nix::sys::statvfs::fstatvfs(self.root_dir.as_fd())
            .ok()
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
    }

    /// Gives published files `mode` from now on (default 0640); the folders made for them get
    /// the same read permissions, with search permission where they can be read.
    pub fn set_file_mode(&mut self, mode: u32) {
        self.file_mode = mode;
    }

    /// Gives published files, and the folders made for them, group `gid` from now on.
    pub fn set_group(&mut self, gid: u32) {
        self.group = Some(nix::unistd::Gid::from_raw(gid));
    }

    /// The mode of a folder made for published files: the owner's full access, and for group and
    /// others read and search where files are readable by them.
    fn folder_mode(&self) -> Mode {
        let read = self.file_mode & 0o044;
        Mode::from_bits_truncate(0o700 | read | (read >> 2))
    }

    /// Publishes the (already verified) temporary file as `head.path`: made durable with the
    /// sender's modification time, and exactly that file renamed into place. Content the share
    /// already holds under that path (a file sent again) is not published twice: `Repeat`. Older
    /// content than what was published is not published: `Superseded`. The temporary file is
    /// removed whenever nothing is published.
    pub fn publish(
        &self,
        temp: Temp,
        head: &Head,
        digest: &[u8; DIGEST_LEN],
        precedence: Precedence,
    ) -> Result<Published, PublishError> {
        // The flushes to disk happen outside the lock, so that publishers of different folders
        // overlap them; the decision and the rename happen under it, checked again after the
        // file's flush in case a newer copy of the path was published meanwhile.
        let decide = |newest: &mut Newest| -> Option<Result<Published, PublishError>> {
            let known = match newest.get(&head.path) {
                Some(k) => Some(k.1),
                None => self.digest_of(&head.path, head.size),
            };
            if known.as_ref() == Some(digest) {
                newest.set(&head.path, precedence, *digest);
                return Some(Ok(Published::Repeat));
            }
            if newest.get(&head.path).is_some_and(|(n, _)| n > precedence) {
                return Some(Err(PublishError::Superseded));
            }
            None
        };
        let lock = || self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            let top = head.path.split('/').next().unwrap_or_default();
            if head.path.contains('/')
                && self
                    .channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&top.to_lowercase())
            {
                return Err(PublishError::ChannelFolder(top.to_owned()));
            }
            if let Some(r) = decide(&mut lock()) {
                return r;
            }
            // Temporary files are private; a published one is readable as the operator chose.
            if let Some(gid) = self.group {
                nix::unistd::fchown(&temp.file, None, Some(gid)).map_err(io::Error::from)?;
            }
            temp.file
                .set_permissions(fs::Permissions::from_mode(self.file_mode))?;
            self.make_durable(&temp.file, head)?;
            let folder = {
                let mut newest = lock();
                if let Some(r) = decide(&mut newest) {
                    return r;
                }
                let folder = self.rename_into_place(&temp, &head.path)?;
                newest.set(&head.path, precedence, *digest);
                folder
            };
            // The rename is durable once its folder is: before the manifest records it.
            fsync(folder.as_ref().map_or(self.root_dir.as_fd(), |d| d.as_fd()))?;
            Ok(Published::New(self.root.join(&head.path)))
        })();
        if !matches!(result, Ok(Published::New(_))) {
            self.discard(temp);
        }
        result
    }

    /// Removes the published file at `rel` (retention), beneath the share and never through a
    /// link, and forgets what was published there; returns its size.
    pub fn remove(&self, rel: &str) -> io::Result<u64> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, rel),
        };
        let dir = match parent {
            Some(p) => open_dir_beneath(self.root_dir.as_fd(), p)?,
            None => open_dir_beneath(self.root_dir.as_fd(), ".")?,
        };
        let st = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(io::Error::other("not a regular file"));
        }
        unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)?;
        newest.map.remove(rel);
        Ok(st.st_size as u64)
    }

    /// SHA-256 of the file the share holds at `rel`, if it is a regular file of `size` bytes
    /// (opened beneath the share, never through a link).
    fn digest_of(&self, rel: &str, size: u64) -> Option<[u8; DIGEST_LEN]> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(beneath());
        let file = File::from(openat2(self.root_dir.as_fd(), rel, how).ok()?);
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() != size {
            return None;
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = file.read_at(&mut buf, at).ok()?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        (at == size).then(|| hasher.finalize().into())
    }

    fn make_durable(&self, file: &File, head: &Head) -> Result<(), PublishError> {
        let len = file.metadata()?.len();
        if len != head.size {
            return Err(PublishError::SizeMismatch {
                expected: head.size,
                actual: len,
            });
        }
        if head.mtime_secs >= 0 {
            let mtime = UNIX_EPOCH
                + Duration::new(head.mtime_secs as u64, head.mtime_nanos.min(999_999_999));
            let _ = file.set_modified(mtime);
        }
        file.sync_all()?;
        Ok(())
    }

    /// Renames the verified file to `rel`, creating folders as needed; returns the folder it is
    /// now in (`None`: the share's root), for the caller to flush.
    fn rename_into_place(&self, temp: &Temp, rel: &str) -> Result<Option<OwnedFd>, PublishError> {
        let parts: Vec<&str> = rel.split('/').collect();
        let (last, folders) = parts
            .split_last()
            .ok_or_else(|| PublishError::InTheWay(rel.to_owned()))?;
        let mut dir: Option<OwnedFd> = None;
        for (i, part) in folders.iter().enumerate() {
            let here = parts[..=i].join("/");
            let parent = dir.as_ref().map_or(self.root_dir.as_fd(), |d| d.as_fd());
            let next = match open_dir_beneath(parent, part) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    self.refuse_case_clash(parent, part)?;
                    let made = match mkdirat(parent, *part, self.folder_mode()) {
                        Ok(()) => {
                            self.folded().added(parent, part);
                            true
                        }
                        Err(Errno::EEXIST) => false,
                        Err(e) => return Err(e.into()),
                    };
                    let fd = open_dir_beneath(parent, part).map_err(|e| classify(e, &here))?;
                    if made {
                        // The umask may have taken bits away; the group is the vendors'.
                        nix::sys::stat::fchmod(&fd, self.folder_mode())?;
                        if let Some(gid) = self.group {
                            nix::unistd::fchown(&fd, None, Some(gid))?;
                        }
                    }
                    fd
                }
                Err(e) => return Err(classify(e, &here)),
            };
            dir = Some(next);
        }
        let parent = dir.as_ref().map_or(self.root_dir.as_fd(), |d| d.as_fd());
        match fstatat(parent, *last, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc_mode::S_IFMT == libc_mode::S_IFDIR => {
                return Err(PublishError::InTheWay(rel.to_owned()));
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => self.refuse_case_clash(parent, last)?,
            Err(e) => return Err(e.into()),
        }
        // Rename exactly the file that was verified: the name must still be that inode.
        let ours = fstat(temp.file.as_fd())?;
        let named = fstatat(
            self.tmp_dir.as_fd(),
            temp.name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if (ours.st_dev, ours.st_ino) != (named.st_dev, named.st_ino) {
            return Err(PublishError::Replaced);
        }
        renameat(self.tmp_dir.as_fd(), temp.name.as_str(), parent, *last)?;
        self.folded().added(parent, last);
        Ok(dir)
    }

    /// Opens `channel/name` for appending (made, with its folder, if missing), beneath the share
    /// like every write; the folder is claimed for the channel, so that no file is published into
    /// it ([`PublishError::ChannelFolder`]).
    pub fn open_channel_file(&self, channel: &str, name: &str) -> io::Result<File> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.to_lowercase());
        let root = self.root_dir.as_fd();
        let dir = match open_dir_beneath(root, channel) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(root, channel, self.folder_mode()) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = open_dir_beneath(root, channel)?;
                nix::sys::stat::fchmod(&fd, self.folder_mode())?;
                if let Some(gid) = self.group {
                    nix::unistd::fchown(&fd, None, Some(gid))?;
                }
                fd
            }
            Err(e) => return Err(e.into()),
        };
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(self.file_mode))
            .resolve(beneath());
        let file = File::from(openat2(dir.as_fd(), name, how)?);
        if let Some(gid) = self.group {
            nix::unistd::fchown(&file, None, Some(gid))?;
        }
        Ok(file)
    }

    /// Reads what a channel file holds (for recovery at start), beneath the share.
    pub fn read_channel_file(&self, channel: &str, name: &str) -> io::Result<Vec<u8>> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(beneath());
        let mut file = File::from(openat2(
            self.root_dir.as_fd(),
            format!("{channel}/{name}").as_str(),
            how,
        )?);
        let mut out = Vec::new();
        io::Read::read_to_end(&mut file, &mut out)?;
        Ok(out)
    }

    fn folded(&self) -> std::sync::MutexGuard<'_, FoldedNames> {
        self.folded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses `name` when `dir` holds another name equal to it but for case, listing the
    /// folder only when what is remembered of it cannot rule a clash out.
    fn refuse_case_clash(&self, dir: BorrowedFd<'_>, name: &str) -> Result<(), PublishError> {
        if self.folded().may_clash(dir, name, || list_names(dir)) {
            refuse_case_clash(dir, name)
        } else {
            Ok(())
        }
    }
}

/// The names in `dir`.
fn list_names(dir: BorrowedFd<'_>) -> nix::Result<Vec<String>> {
    let fd = open_dir_beneath(dir, ".")?;
    let mut listing = nix::dir::Dir::from_fd(fd)?;
    Ok(listing
        .iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .collect())
}

/// File type bits of `st_mode`.
mod libc_mode {
    pub const S_IFMT: u32 = 0o170_000;
    pub const S_IFDIR: u32 = 0o040_000;
}

fn classify(e: Errno, here: &str) -> PublishError {
    match e {
        Errno::ELOOP => PublishError::SymlinkOnPath(here.to_owned()),
        Errno::ENOTDIR | Errno::EXDEV => PublishError::InTheWay(here.to_owned()),
        e => e.into(),
    }
}

/// Refuses `name` when the folder holds another name equal to it but for case.
fn refuse_case_clash(dir: BorrowedFd<'_>, name: &str) -> Result<(), PublishError> {
    let folded = name.to_lowercase();
    let fd = open_dir_beneath(dir, ".")?;
    let mut listing = nix::dir::Dir::from_fd(fd)?;
    for entry in listing.iter().flatten() {
        let Ok(other) = entry.file_name().to_str() else {
            continue;
        };
        if other != name && other.to_lowercase() == folded {
            return Err(PublishError::CaseClash {
                existing: other.to_owned(),
            });
        }
    }
    Ok(())
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

    fn path_of(p: Published) -> PathBuf {
        match p {
            Published::New(p) => p,
            Published::Repeat => panic!("a repeat"),
        }
    }

    fn key(object: u64) -> ObjectKey {
        ObjectKey { session: 1, object }
    }

    fn order(object: u64) -> Precedence {
        Precedence {
            session_ordinal: 0,
            object,
        }
    }

    fn temp(share: &Share, k: ObjectKey, data: &[u8]) -> Temp {
        let mut t = share.create_temp(k).unwrap();
        t.file.write_all(data).unwrap();
        t
    }

    fn tmp_count(share: &Share) -> usize {
        fs::read_dir(share.state().join("tmp")).unwrap().count()
    }

    #[test]
    fn publishes_files_and_refuses_a_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        let (h, d) = head("a/b/c.txt", b"hello");
        let p = path_of(
            share
                .publish(temp(&share, key(1), b"hello"), &h, &d, order(1))
                .unwrap(),
        );
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(p, share.root().join("a/b/c.txt"));
        // The same content again (a sender restarted, a repeat): not published twice.
        let again = share.publish(temp(&share, key(7), b"hello"), &h, &d, order(7));
        assert!(matches!(again, Ok(Published::Repeat)), "{again:?}");
        assert_eq!(tmp_count(&share), 0);

        let (h, d) = head("x.txt", b"hello");
        let r = share.publish(temp(&share, key(2), b"hell"), &h, &d, order(2));
        assert!(matches!(r, Err(PublishError::SizeMismatch { .. })));
        assert!(!share.root().join("x.txt").exists());
        assert_eq!(tmp_count(&share), 0);
    }

    #[test]
    fn content_already_in_the_share_from_an_earlier_run_is_a_repeat() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        fs::write(dir.path().join("logs/a.log"), b"same").unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        let (h, d) = head("logs/a.log", b"same");
        let r = share.publish(temp(&share, key(1), b"same"), &h, &d, order(1));
        assert!(matches!(r, Ok(Published::Repeat)), "{r:?}");
        let (h, d) = head("logs/a.log", b"diff");
        let r = share.publish(temp(&share, key(2), b"diff"), &h, &d, order(2));
        assert!(matches!(r, Ok(Published::New(_))), "{r:?}");
        assert_eq!(fs::read(dir.path().join("logs/a.log")).unwrap(), b"diff");
    }

    #[test]
    fn temporary_files_are_never_shared_between_objects() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        // The same object twice (a session recreated, a late re-decode): two distinct files.
        let a = temp(&share, key(5), b"first");
        let b = share.create_temp(key(5)).unwrap();
        assert_ne!(a.name, b.name);
        let (h, d) = head("f.txt", b"first");
        share.discard(b);
        share.publish(a, &h, &d, order(5)).unwrap();
        assert_eq!(fs::read(share.root().join("f.txt")).unwrap(), b"first");
    }

    #[test]
    fn a_temporary_file_swapped_after_verification_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        let t = temp(&share, key(6), b"good");
        // Replace the name with another file: the verified descriptor no longer matches it.
        let path = share.state().join("tmp").join(&t.name);
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"evil").unwrap();
        let (h, d) = head("g.txt", b"good");
        assert!(matches!(
            share.publish(t, &h, &d, order(6)),
            Err(PublishError::Replaced)
        ));
        assert!(!share.root().join("g.txt").exists());
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        std::os::unix::fs::symlink(outside.path(), share.root().join("evil")).unwrap();
        fs::create_dir_all(share.root().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), share.root().join("a/deeper")).unwrap();
        for (i, p) in ["evil/owned.txt", "a/deeper/x/owned.txt"]
            .iter()
            .enumerate()
        {
            let (h, d) = head(p, b"x");
            let r = share.publish(
                temp(&share, key(10 + i as u64), b"x"),
                &h,
                &d,
                order(i as u64),
            );
            assert!(
                matches!(r, Err(PublishError::SymlinkOnPath(_))),
                "{p}: {r:?}"
            );
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn older_content_never_replaces_newer() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        let (h_new, d_new) = head("same.csv", b"new");
        let (h_old, d_old) = head("same.csv", b"old");
        share
            .publish(temp(&share, key(9), b"new"), &h_new, &d_new, order(9))
            .unwrap();
        let r = share.publish(temp(&share, key(3), b"old"), &h_old, &d_old, order(3));
        assert!(matches!(r, Err(PublishError::Superseded)));
        assert_eq!(fs::read(share.root().join("same.csv")).unwrap(), b"new");
        let later = Precedence {
            session_ordinal: 1,
            object: 0,
        };
        share
            .publish(temp(&share, key(0), b"old"), &h_old, &d_old, later)
            .unwrap();
        assert_eq!(fs::read(share.root().join("same.csv")).unwrap(), b"old");
    }

    #[test]
    fn names_differing_only_by_case_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        let (h, d) = head("Logs/Pump.csv", b"a");
        share
            .publish(temp(&share, key(1), b"a"), &h, &d, order(1))
            .unwrap();
        for p in ["Logs/pump.CSV", "logs/other.csv"] {
            let (h, d) = head(p, b"b");
            let r = share.publish(temp(&share, key(2), b"b"), &h, &d, order(2));
            assert!(
                matches!(r, Err(PublishError::CaseClash { .. })),
                "{p}: {r:?}"
            );
        }
    }

    #[test]
    fn a_second_receiver_on_the_same_state_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(dir.path(), None).unwrap();
        let t = temp(&share, key(1), b"in progress");
        assert!(matches!(
            Share::open(dir.path(), None),
            Err(OpenError::Locked(_))
        ));
        assert_eq!(
            tmp_count(&share),
            1,
            "the first receiver's temporary file was deleted"
        );
        share.discard(t);
    }
}
