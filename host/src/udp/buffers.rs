//! Socket buffers: a receiver that falls behind for a moment loses what its buffer cannot hold.

use std::net::UdpSocket;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

/// Asks for a receive buffer of `bytes`, past `net.core.rmem_max` when the process may
/// (`SO_RCVBUFFORCE`, CAP_NET_ADMIN); returns what the kernel granted.
pub fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    }
    // Linux reports twice the usable size it granted.
    getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) / 2
}
