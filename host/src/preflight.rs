//! What `--check` asks of the host before a program is started for real: that the folders it
//! will write in are usable by this user, and that the address it will listen on can be bound.
//! Nothing is created or left behind.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};
use thiserror::Error;

/// Why the host is not ready for a program's configuration.
#[derive(Debug, Error)]
pub enum PreflightError {
    /// A folder the program writes in exists as something else, or cannot be made or written.
    #[error("{what} {path}: {reason}")]
    Folder {
        /// Which folder (`output folder`, `state folder`, `spool of channel "x"`...).
        what: String,
        /// Where.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// The address to listen on cannot be bound (in use, or not an address of this host).
    #[error(
        "cannot bind {addr}: {source} (is another program, or a receiver already running, on it?)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error of the test bind.
        source: std::io::Error,
    },
}

/// Checks that `path` can be written in by this user: a folder that exists and is writable and
/// searchable, or one whose nearest existing parent is (the program creates the rest).
pub fn folder(what: &str, path: &Path) -> Result<(), PreflightError> {
    let fail = |reason: String| PreflightError::Folder {
        what: what.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if !m.is_dir() => {
                return Err(fail(format!("{} is not a folder", at.display())));
            }
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => return Err(fail("no existing parent folder".into())),
                }
            }
            Err(e) => return Err(fail(format!("{}: {e}", at.display()))),
        }
    }
    access(at, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        let made = if at == path {
            String::new()
        } else {
            format!(" (to make it in {})", at.display())
        };
        fail(format!("not writable by this user{made}: {e}"))
    })
}

/// Binds a UDP socket on `addr` and closes it again.
pub fn bind_udp(addr: SocketAddr) -> Result<(), PreflightError> {
    UdpSocket::bind(addr)
        .map(drop)
        .map_err(|source| PreflightError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_usable_when_they_or_their_nearest_parent_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        folder("output folder", dir.path()).unwrap();
        folder("output folder", &dir.path().join("not/yet/made")).unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = folder("output folder", &file.join("below")).unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
    }

    #[test]
    fn an_address_in_use_does_not_bind() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(matches!(bind_udp(addr), Err(PreflightError::Bind { .. })));
        drop(taken);
        bind_udp(addr).unwrap();
    }
}
