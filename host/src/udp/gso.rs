//! Send side: UDP segmentation offload, many datagrams of one length in one system call.

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};

/// Most datagrams in one segmentation-offload send (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmentation-offload send.
pub const MAX_BYTES: usize = 65_000;

/// Sends `bytes` as datagrams of `segment` bytes (the last may be shorter) in one call.
pub fn send_segments(
    socket: &UdpSocket,
    to: SocketAddr,
    bytes: &[u8],
    segment: usize,
) -> nix::Result<()> {
    let seg = u16::try_from(segment).map_err(|_| Errno::EINVAL)?;
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
    let dest = SockaddrStorage::from(to);
    sendmsg(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&dest),
    )
    .map(|_| ())
}

/// True for the errors that say the kernel or the device cannot segment at all (rather than that
/// this one send failed).
pub fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP
    )
}

/// Datagrams gathered into runs of one length, sent with segmentation offload.
#[derive(Debug, Default)]
pub struct Run {
    bytes: Vec<u8>,
    segment: usize,
    count: usize,
    /// A shorter datagram ends a run.
    closed: bool,
    /// Segmentation offload refused once: one datagram per call from then on.
    no_gso: bool,
}

impl Run {
    /// True if `d` can join the current run.
    pub fn fits(&self, d: &[u8]) -> bool {
        self.count == 0
            || (!self.closed
                && !self.no_gso
                && d.len() <= self.segment
                && self.count < MAX_SEGMENTS
                && self.bytes.len() + d.len() <= MAX_BYTES)
    }

    /// Adds `d` to the run (call [`Self::fits`] first).
    pub fn push(&mut self, d: &[u8]) {
        if self.count == 0 {
            self.segment = d.len();
        } else if d.len() < self.segment {
            self.closed = true;
        }
        self.bytes.extend_from_slice(d);
        self.count += 1;
    }

    /// Sends the run; returns how many datagrams could not be sent.
    pub fn flush(&mut self, socket: &UdpSocket, to: SocketAddr) -> u64 {
        let mut errors = 0;
        if self.count > 1 && !self.no_gso {
            match send_segments(socket, to, &self.bytes, self.segment) {
                Ok(()) => return self.reset(0),
                Err(_) => self.no_gso = true,
            }
        }
        if self.count > 0 {
            for d in self.bytes.chunks(self.segment.max(1)) {
                if socket.send_to(d, to).is_err() {
                    errors += 1;
                }
            }
        }
        self.reset(errors)
    }

    fn reset(&mut self, errors: u64) -> u64 {
        self.bytes.clear();
        self.count = 0;
        self.closed = false;
        errors
    }
}
