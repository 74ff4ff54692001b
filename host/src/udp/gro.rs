//! Receive side: generic receive offload (the kernel hands over a run of same-sized datagrams as
//! one buffer, one system call for up to 64 of them) and the socket's drop counter.

use std::io::IoSliceMut;
use std::net::UdpSocket;
use std::os::fd::RawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

/// Asks the kernel to coalesce runs of received datagrams; false if it cannot.
pub fn enable_receive_offload(socket: &UdpSocket) -> bool {
    setsockopt(socket, sockopt::UdpGroSegment, &true).is_ok()
}

/// Asks the kernel to tell, with every datagram, how many times it dropped at this socket so far
/// (a coalesced run counts once, as in `RcvbufErrors`); false if it cannot.
pub fn enable_drop_counter(socket: &UdpSocket) -> bool {
    setsockopt(socket, sockopt::RxqOvfl, &1).is_ok()
}

/// Room for the control messages [`receive`] reads.
pub fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(i32, u32)
}

/// What one [`receive`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// When the kernel coalesced several datagrams: the length of each (the last may be shorter).
    pub segment: Option<usize>,
    /// The socket's drop count, when the kernel said.
    pub drops: Option<u32>,
}

impl Received {
    /// The datagrams' ranges in the buffer.
    pub fn datagrams(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (len, step) = (self.len, self.segment.unwrap_or(self.len).max(1));
        (0..len)
            .step_by(step)
            .map(move |at| (at, (at + step).min(len)))
    }
}

/// Receives one datagram, or one coalesced run of them, into `buf`; `cmsg` from
/// [`control_buffer`] (a `Vec`, as nix's `recvmsg` takes it).
#[allow(clippy::ptr_arg)]
pub fn receive(
    fd: RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
    cmsg: &mut Vec<u8>,
) -> nix::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), flags)?;
    let (mut segment, mut drops) = (None, None);
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::UdpGroSegments(size) => {
                    segment = usize::try_from(size).ok().filter(|s| *s > 0);
                }
                ControlMessageOwned::RxqOvfl(n) => drops = Some(n),
                _ => {}
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        segment,
        drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coalesced_run_splits_into_its_datagrams_the_last_shorter() {
        let r = Received {
            len: 2500,
            segment: Some(1000),
            drops: None,
        };
        assert_eq!(
            r.datagrams().collect::<Vec<_>>(),
            [(0, 1000), (1000, 2000), (2000, 2500)]
        );
        let one = Received {
            len: 7,
            segment: None,
            drops: None,
        };
        assert_eq!(one.datagrams().collect::<Vec<_>>(), [(0, 7)]);
    }
}
