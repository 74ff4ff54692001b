//! Socket tuning for the forwarding loop.

use std::net::UdpSocket;

use nix::sys::socket::{setsockopt, sockopt};

/// Asks for a large receive buffer (forced past `net.core.rmem_max` when running as root), so the
/// simulator itself does not add loss that the model did not decide.
pub fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) {
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    }
}
