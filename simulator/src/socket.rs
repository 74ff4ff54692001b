//! Socket tuning for the forwarding loop.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};

/// Most datagrams in one segmentation-offload send (the kernel's UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmentation-offload send.
const GSO_MAX_BYTES: usize = 65_000;

/// Asks for a large receive buffer (forced past `net.core.rmem_max` when running as root), so the
/// simulator itself does not add loss that the model did not decide.
pub fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) {
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    }
}

/// Asks the kernel to coalesce runs of received datagrams (one system call for many).
pub fn enable_receive_offload(socket: &UdpSocket) -> bool {
    setsockopt(socket, sockopt::UdpGroSegment, &true).is_ok()
}

/// Receives one datagram, or one coalesced run of them; returns its length and the segment size
/// when the kernel coalesced several.
pub fn receive(
    fd: RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
    cmsg: &mut [u8],
) -> nix::Result<(usize, Option<usize>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), flags)?;
    let mut segment = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(size) = c {
                segment = usize::try_from(size).ok().filter(|s| *s > 0);
            }
        }
    }
    Ok((msg.bytes, segment))
}

/// Forwarded datagrams gathered into runs of one length, sent with segmentation offload.
#[derive(Debug, Default)]
pub struct Outgoing {
    bytes: Vec<u8>,
    segment: usize,
    count: usize,
    /// A shorter datagram ends a run.
    closed: bool,
    /// Segmentation offload refused once: one datagram per call from then on.
    no_gso: bool,
}

impl Outgoing {
    /// True if `d` can join the current run.
    pub fn fits(&self, d: &[u8]) -> bool {
        self.count == 0
            || (!self.closed
                && !self.no_gso
                && d.len() <= self.segment
                && self.count < GSO_MAX_SEGMENTS
                && self.bytes.len() + d.len() <= GSO_MAX_BYTES)
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
            let seg = u16::try_from(self.segment).unwrap_or(u16::MAX);
            let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
            let iov = [IoSlice::new(&self.bytes)];
            let dest = SockaddrStorage::from(to);
            match sendmsg(
                socket.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&dest),
            ) {
                Ok(_) => return self.reset(0),
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
