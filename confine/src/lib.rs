//! One direction enforced by the kernel, and the filesystem confined: the sender may not receive
//! on any socket and the receiver may not send or connect (seccomp), and each may write only in its
//! own folders (Landlock, where the kernel supports it).
//!
//! Both are installed after start-up (sockets bound, logging set up, keys read), for every thread
//! of the process. A forbidden system call fails with `EPERM`; the process logs the error it gets
//! and goes on (the sender never needs to receive, the receiver never needs to send, so in normal
//! operation nothing ever hits the filter). `io_uring` is forbidden in both: it would bypass the
//! filter.

use std::collections::BTreeMap;
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use thiserror::Error;

/// Why confinement could not be installed.
#[derive(Debug, Error)]
pub enum ConfineError {
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// The Landlock ruleset could not be built or installed.
    #[error("landlock: {0}")]
    Landlock(String),
}

/// Which end of the link this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends only: every receiving call is forbidden.
    Sender,
    /// Receives only: every sending and connecting call is forbidden.
    Receiver,
}

/// The system calls forbidden to `role`.
pub fn forbidden(role: Role) -> Vec<(&'static str, i64)> {
    let mut calls = vec![
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
    ];
    match role {
        Role::Sender => calls.extend([
            ("recvfrom", libc::SYS_recvfrom),
            ("recvmsg", libc::SYS_recvmsg),
            ("recvmmsg", libc::SYS_recvmmsg),
            ("accept", libc::SYS_accept),
            ("accept4", libc::SYS_accept4),
            ("listen", libc::SYS_listen),
        ]),
        Role::Receiver => calls.extend([
            ("sendto", libc::SYS_sendto),
            ("sendmsg", libc::SYS_sendmsg),
            ("sendmmsg", libc::SYS_sendmmsg),
            ("connect", libc::SYS_connect),
            ("accept", libc::SYS_accept),
            ("accept4", libc::SYS_accept4),
            ("listen", libc::SYS_listen),
        ]),
    }
    calls
}

fn program(role: Role) -> Result<BpfProgram, ConfineError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = forbidden(role)
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| ConfineError::Seccomp(format!("{e:?}")))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string()))
}

/// Installs the one-direction filter of `role` on every thread of the process.
pub fn one_direction(role: Role) -> Result<(), ConfineError> {
    let prog = program(role)?;
    seccompiler::apply_filter_all_threads(&prog).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Installs the one-direction filter of `role` on the calling thread only (tests).
pub fn one_direction_this_thread(role: Role) -> Result<(), ConfineError> {
    let prog = program(role)?;
    seccompiler::apply_filter(&prog).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Reads a secret (a key file), refusing one that others than its owner could read.
pub fn read_private(path: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "readable by others than its owner (mode {:o}): chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    std::fs::read_to_string(path)
}

/// How far Landlock could be enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    /// Every requested restriction.
    Fully,
    /// Some (an older kernel).
    Partially,
    /// None: the kernel has no Landlock (or it is disabled).
    Not,
}

/// Restricts the process's filesystem access: writing anywhere but beneath `writable` is refused;
/// with `readable` given, reading anywhere but beneath it (and `writable`) is refused too.
pub fn filesystem(
    writable: &[PathBuf],
    readable: Option<&[PathBuf]>,
) -> Result<Enforced, ConfineError> {
    let abi = ABI::V3;
    let err = |e: &dyn std::fmt::Display| ConfineError::Landlock(e.to_string());
    let handled = match readable {
        Some(_) => AccessFs::from_all(abi),
        None => AccessFs::from_write(abi),
    };
    let mut ruleset = Ruleset::default()
        .handle_access(handled)
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?;
    for dir in writable {
        let fd = PathFd::new(dir).map_err(|e| err(&e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, handled))
            .map_err(|e| err(&e))?;
    }
    for path in readable.unwrap_or_default() {
        let fd = PathFd::new(path).map_err(|e| err(&e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::from_read(abi)))
            .map_err(|e| err(&e))?;
    }
    let status = ruleset.restrict_self().map_err(|e| err(&e))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_confined_sender_thread_cannot_receive_and_a_receiver_thread_cannot_send() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            one_direction_this_thread(Role::Sender).unwrap();
            s.send_to(b"allowed", to).expect("a sender may send");
            let e = s
                .recv_from(&mut [0u8; 16])
                .expect_err("a sender may not receive");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        })
        .join()
        .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"allowed");
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            one_direction_this_thread(Role::Receiver).unwrap();
            let e = s.send_to(b"no", to).expect_err("a receiver may not send");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            let e = s.connect(to).expect_err("nor connect");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            let e = s.recv_from(&mut [0u8; 16]).expect_err("nothing to receive");
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "receiving stays allowed"
            );
        })
        .join()
        .unwrap();
        // This thread is not confined.
        peer.send_to(b"x", to).unwrap();
    }

    #[test]
    fn a_confined_thread_writes_only_beneath_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (inside, outside) = (dir.path().join("share"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let (i, o) = (inside.clone(), outside.clone());
        let enforced = std::thread::spawn(move || {
            let enforced = filesystem(std::slice::from_ref(&i), None).unwrap();
            std::fs::write(i.join("ok"), b"1").expect("writing beneath the share");
            let refused = std::fs::write(o.join("no"), b"1").is_err();
            (enforced, refused)
        })
        .join()
        .unwrap();
        match enforced {
            (Enforced::Not, _) => eprintln!("SKIPPED: this kernel has no Landlock"),
            (_, refused) => {
                assert!(refused, "wrote outside the share");
                assert!(!outside.join("no").exists());
            }
        }
        assert!(inside.join("ok").exists());
        std::fs::write(outside.join("this-thread"), b"1").expect("other threads are free");
        // Reading confined too: only beneath `readable` (and `writable`).
        let (i, o) = (inside.clone(), outside.clone());
        let read = std::thread::spawn(move || {
            let enforced = filesystem(&[], Some(std::slice::from_ref(&i))).unwrap();
            let inside_ok = std::fs::read(i.join("ok")).is_ok();
            let outside_refused = std::fs::read(o.join("this-thread")).is_err();
            let write_refused = std::fs::write(i.join("new"), b"1").is_err();
            (enforced, inside_ok, outside_refused, write_refused)
        })
        .join()
        .unwrap();
        if read.0 != Enforced::Not {
            assert_eq!(read, (read.0, true, true, true));
        }
    }
}
