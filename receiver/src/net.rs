//! The link socket and the thread that drains it. Receive-only by design: nothing here can send.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{MsgFlags, getsockopt, recv, setsockopt, sockopt};
use tracing::{info, warn};

/// Datagrams moved per hand-off, so the channel costs little per datagram.
const CHUNK_DATAGRAMS: usize = 64;
/// Largest UDP payload.
const MAX_UDP: usize = 65_535;

/// A run of received datagrams in one buffer; recycled between the threads.
#[derive(Debug, Default)]
pub struct Chunk {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Chunk {
    /// The datagrams in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.buf[s..e])
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }
}

/// Binds the link socket and asks for a large receive buffer.
pub fn bind(addr: SocketAddr, want_rcvbuf: usize) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    // As root, SO_RCVBUFFORCE may exceed net.core.rmem_max; otherwise the plain request is capped.
    if setsockopt(&socket, sockopt::RcvBufForce, &want_rcvbuf).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &want_rcvbuf);
    }
    // Linux reports twice the usable size it granted.
    let granted = getsockopt(&socket, sockopt::RcvBuf).unwrap_or(0) / 2;
    if granted < want_rcvbuf {
        warn!(
            granted,
            wanted = want_rcvbuf,
            "receive buffer smaller than asked: bursts may overflow it; run `sysctl -w net.core.rmem_max={}` (and persist it in /etc/sysctl.d)",
            want_rcvbuf
        );
    } else {
        info!(bytes = granted, "receive buffer");
    }
    Ok(socket)
}

/// Drains the socket into chunks until `stop`; counts datagrams dropped because the assembler lags.
pub fn drain(
    socket: UdpSocket,
    tx: SyncSender<Chunk>,
    recycled: Receiver<Chunk>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let fd = socket.as_raw_fd();
    let mut scratch = vec![0u8; MAX_UDP];
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let mut chunk = recycled.try_recv().unwrap_or_default();
        chunk.clear();
        // The first read waits (up to the socket timeout); the rest only take what is queued.
        let mut flags = MsgFlags::empty();
        while chunk.ends.len() < CHUNK_DATAGRAMS {
            match recv(fd, &mut scratch, flags) {
                Ok(n) => {
                    chunk.buf.extend_from_slice(&scratch[..n]);
                    chunk.ends.push(chunk.buf.len());
                    flags = MsgFlags::MSG_DONTWAIT;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if chunk.ends.is_empty() {
            continue;
        }
        match tx.try_send(chunk) {
            Ok(()) => {}
            Err(TrySendError::Full(c)) => {
                dropped.fetch_add(c.ends.len() as u64, Ordering::Relaxed);
                if !warned {
                    warn!("assembler falling behind: dropping datagrams (counted in the stats)");
                    warned = true;
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}
