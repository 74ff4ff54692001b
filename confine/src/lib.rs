//! One direction enforced by the kernel, and the filesystem confined: the sender may not receive
//! on any socket and the receiver may not send or connect (seccomp), and each may write only in its
//! own folders (Landlock, where the kernel supports it).
//!
//! Both are installed after start-up (sockets bound, logging set up, keys read), for every thread
//! of the process. The seccomp filter is an allowlist ([`allowed`]): a system call not on it fails
//! with `EPERM`; the process logs the error it gets and goes on (in normal operation nothing ever
//! hits the filter). Neither program can create a socket once confined, so a library inside it
//! cannot open a receiving socket in the sender, nor a raw one in the receiver; the sender's own
//! socket is made deaf ([`deaf`]) so that not even `read()` gets anything from it.

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
    /// The sender's stream inputs' process: it listens, accepts and connects (an MQTT broker),
    /// over IPv4 and IPv6 only; it never starts a program, traces one or opens a raw socket.
    Inputs,
}

/// System calls both programs may make once confined: memory, threads, time, signals, and files
/// (never creating, binding, connecting or configuring a socket). Gathered by tracing both
/// programs through transfers, the spool service, SIGHUP and a stop; what is not here fails with
/// `EPERM`.
const COMMON: &[(&str, i64)] = &[
    // Memory and threads.
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mprotect", libc::SYS_mprotect),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("membarrier", libc::SYS_membarrier),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("futex", libc::SYS_futex),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("get_robust_list", libc::SYS_get_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_yield", libc::SYS_sched_yield),
    ("prctl", libc::SYS_prctl),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("getppid", libc::SYS_getppid),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("getgroups", libc::SYS_getgroups),
    ("prlimit64", libc::SYS_prlimit64),
    ("getrandom", libc::SYS_getrandom),
    ("uname", libc::SYS_uname),
    ("sysinfo", libc::SYS_sysinfo),
    // Time.
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("gettimeofday", libc::SYS_gettimeofday),
    // Signals (a panic's abort raises one at itself).
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    ("restart_syscall", libc::SYS_restart_syscall),
    // Waiting (the sender's folder watch).
    ("ppoll", libc::SYS_ppoll),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("eventfd2", libc::SYS_eventfd2),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    // Files.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("lseek", libc::SYS_lseek),
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("close", libc::SYS_close),
    ("close_range", libc::SYS_close_range),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("fcntl", libc::SYS_fcntl),
    ("flock", libc::SYS_flock),
    ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat),
    ("statx", libc::SYS_statx),
    ("statfs", libc::SYS_statfs),
    ("fstatfs", libc::SYS_fstatfs),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("readlinkat", libc::SYS_readlinkat),
    ("getcwd", libc::SYS_getcwd),
    ("getdents64", libc::SYS_getdents64),
    ("mkdirat", libc::SYS_mkdirat),
    ("unlinkat", libc::SYS_unlinkat),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("linkat", libc::SYS_linkat),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("utimensat", libc::SYS_utimensat),
    ("ftruncate", libc::SYS_ftruncate),
    ("fallocate", libc::SYS_fallocate),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("copy_file_range", libc::SYS_copy_file_range),
    // Landlock only ever narrows access (the sender confines files after this filter).
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
    ("landlock_add_rule", libc::SYS_landlock_add_rule),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    // Reading a socket's options and address (the receiver's drop counter): no change.
    ("getsockopt", libc::SYS_getsockopt),
    ("getsockname", libc::SYS_getsockname),
];

/// The older calls of x86-64 that glibc may still use there (other architectures lack them).
#[cfg(target_arch = "x86_64")]
const LEGACY: &[(&str, i64)] = &[
    ("open", libc::SYS_open),
    ("stat", libc::SYS_stat),
    ("lstat", libc::SYS_lstat),
    ("access", libc::SYS_access),
    ("readlink", libc::SYS_readlink),
    ("mkdir", libc::SYS_mkdir),
    ("rmdir", libc::SYS_rmdir),
    ("unlink", libc::SYS_unlink),
    ("rename", libc::SYS_rename),
    ("link", libc::SYS_link),
    ("chmod", libc::SYS_chmod),
    ("dup2", libc::SYS_dup2),
    ("poll", libc::SYS_poll),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("time", libc::SYS_time),
    ("arch_prctl", libc::SYS_arch_prctl),
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[(&str, i64)] = &[];

/// What only the sender may do: send on the socket it already holds.
const SENDER: &[(&str, i64)] = &[
    ("sendto", libc::SYS_sendto),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendmmsg", libc::SYS_sendmmsg),
    // Whether the stream inputs' process (started before the confinement) still runs.
    ("wait4", libc::SYS_wait4),
];

/// What only the receiver may do: receive on the socket it already holds.
const RECEIVER: &[(&str, i64)] = &[
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmsg", libc::SYS_recvmsg),
    ("recvmmsg", libc::SYS_recvmmsg),
];

/// What only the stream inputs' process may do: take records from the network, its sockets
/// (made by `socket` for IPv4 and IPv6 only, [`program`]) its own.
const INPUTS: &[(&str, i64)] = &[
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("shutdown", libc::SYS_shutdown),
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto),
    ("sendmsg", libc::SYS_sendmsg),
    // The MQTT client's runtime wakes itself through a pair of connected Unix sockets (no name,
    // no way out of the process).
    ("socketpair", libc::SYS_socketpair),
];

/// The system calls `role` may make once confined (an allowlist: everything else fails with
/// `EPERM`). Neither role may create a socket, bind, connect, listen, accept, set a socket's
/// options, shut one down, splice, execute a program or use `io_uring`; the sender may not
/// receive, the receiver may not send.
pub fn allowed(role: Role) -> Vec<(&'static str, i64)> {
    let own = match role {
        Role::Sender => SENDER,
        Role::Receiver => RECEIVER,
        Role::Inputs => INPUTS,
    };
    COMMON.iter().chain(LEGACY).chain(own).copied().collect()
}

fn program(role: Role) -> Result<BpfProgram, ConfineError> {
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed(role)
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    if role == Role::Inputs {
        // Internet sockets only: no packet, netlink or Unix socket.
        let family = |f: i32| {
            seccompiler::SeccompCondition::new(
                0,
                seccompiler::SeccompCmpArgLen::Dword,
                seccompiler::SeccompCmpOp::Eq,
                f as u64,
            )
            .and_then(|c| seccompiler::SeccompRule::new(vec![c]))
            .map_err(|e| ConfineError::Seccomp(e.to_string()))
        };
        rules.insert(
            libc::SYS_socket,
            vec![family(libc::AF_INET)?, family(libc::AF_INET6)?],
        );
    }
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| ConfineError::Seccomp(format!("{e:?}")))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string()))
}

/// Makes `socket` deaf: a socket filter that drops every datagram before it is queued. The
/// sender's link socket is bound, as any UDP socket is, and the seccomp filter cannot tell a
/// `read()` of it from a file's: with this, there is nothing to read. Call it as soon as the
/// socket is bound (the port was unknown to anyone before). Once the seccomp filter is on,
/// `setsockopt` is refused, so the filter stays.
pub fn deaf(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    // Classic BPF: one instruction, "return 0" (keep no byte of the packet).
    let drop_all = socket2::SockFilter::new((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0);
    socket2::SockRef::from(socket).attach_filter(&[drop_all])
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

impl std::fmt::Display for Enforced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Enforced::Fully => "fully",
            Enforced::Partially => "partially",
            Enforced::Not => "not",
        })
    }
}

/// Threads of this process other than the calling one. Landlock confines the calling thread and
/// the threads it starts afterwards, never threads already running (a library's, started before
/// `main`): a caller about to confine files warns when there are any.
pub fn other_threads() -> usize {
    std::fs::read_dir("/proc/thread-self/..")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
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
        /// A socket for raw frames of every protocol.
        fn packet_socket() -> std::io::Result<socket2::Socket> {
            socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(i32::from(
                    (libc::ETH_P_ALL as u16).to_be(),
                ))),
            )
        }
        // The inputs' process: internet sockets only, and no program started.
        std::thread::spawn(|| {
            one_direction_this_thread(Role::Inputs).unwrap();
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("an input's socket");
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                .expect("an input's socket");
            let raw = packet_socket().expect_err("a packet socket");
            assert_eq!(raw.raw_os_error(), Some(libc::EPERM), "{raw}");
            let unix = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
                .expect_err("a Unix socket");
            assert_eq!(unix.raw_os_error(), Some(libc::EPERM), "{unix}");
            let exec = std::process::Command::new("/bin/true")
                .status()
                .expect_err("a program started");
            assert!(
                exec.raw_os_error() == Some(libc::EPERM)
                    || exec.kind() == std::io::ErrorKind::PermissionDenied,
                "{exec}"
            );
        })
        .join()
        .unwrap();
        // Neither role creates a socket once confined: no new receiving socket, no raw frames.
        for role in [Role::Sender, Role::Receiver] {
            std::thread::spawn(move || {
                one_direction_this_thread(role).unwrap();
                let e = UdpSocket::bind("127.0.0.1:0").expect_err("a new socket");
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{role:?}: {e}");
                let raw = packet_socket().expect_err("a packet socket");
                assert_eq!(raw.raw_os_error(), Some(libc::EPERM), "{role:?}: {raw}");
                let pair =
                    socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None)
                        .expect_err("a socket pair");
                assert_eq!(pair.raw_os_error(), Some(libc::EPERM), "{role:?}: {pair}");
            })
            .join()
            .unwrap();
        }
        // This thread is not confined.
        peer.send_to(b"x", to).unwrap();
    }

    #[test]
    fn a_deaf_socket_still_sends_and_reads_nothing() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        deaf(&s).unwrap();
        peer.send_to(b"after", s.local_addr().unwrap()).unwrap();
        s.send_to(b"out", peer.local_addr().unwrap())
            .expect("sending works");
        let mut buf = [0u8; 16];
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"out");
        s.set_nonblocking(true).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // read(), which no seccomp filter can tell from a file's, finds nothing either.
        use std::io::Read;
        let mut f = std::fs::File::from(std::os::fd::OwnedFd::from(s.try_clone().unwrap()));
        let e = f.read(&mut buf).expect_err("nothing to read");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        // Once confined, the filter cannot be taken off.
        std::thread::spawn(move || {
            one_direction_this_thread(Role::Sender).unwrap();
            let e = socket2::SockRef::from(&s)
                .detach_filter()
                .expect_err("detached");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        })
        .join()
        .unwrap();
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
