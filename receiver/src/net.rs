//! The link socket and the thread that drains it. Receive-only by design: nothing here can send.
//!
//! Datagrams are received straight into a fixed set of chunk buffers that circulate between this
//! thread and the assembler, so the queue between them is bounded in bytes by construction. When
//! every chunk is in use the assembler is behind: datagrams are then read and counted as dropped,
//! so that the kernel buffer keeps draining and the loss stays visible.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::Duration;

use anyhow::{Context, Result};
use checkvalve_common::{shed, wire};
use checkvalve_host::udp::{self, MAX_UDP};
use nix::sys::socket::MsgFlags;
use tracing::{info, warn};

use crate::ratelimit::Limiter;

/// Bytes of one chunk buffer: room for hundreds of ordinary datagrams per hand-off.
pub const CHUNK_BYTES: usize = 512 << 10;

/// A run of received datagrams in one fixed buffer; recycled between the threads.
#[derive(Debug)]
pub struct Chunk {
    buf: Vec<u8>,
    len: usize,
    /// Where each kept datagram lies in `buf` (a datagram dropped early leaves a hole).
    ranges: Vec<(usize, usize)>,
}

impl Chunk {
    /// An empty chunk with its buffer allocated once.
    pub fn new() -> Self {
        Chunk {
            buf: vec![0; CHUNK_BYTES],
            len: 0,
            ranges: Vec::with_capacity(1024),
        }
    }

    /// The datagrams in arrival order, writable (authentication rewrites them in place).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        let mut rest: &mut [u8] = &mut self.buf;
        let mut at = 0;
        self.ranges.iter().map(move |&(s, e)| {
            // Ranges are in order and disjoint: each is carved off what follows the previous one.
            let tail = std::mem::take(&mut rest);
            let (_, from_s) = tail.split_at_mut(s - at);
            let (d, after) = from_s.split_at_mut(e - s);
            rest = after;
            at = e;
            d
        })
    }

    fn clear(&mut self) {
        self.len = 0;
        self.ranges.clear();
    }
}

/// Early drop: once the queue is more than half full, parity shards are dropped, a growing share
/// of them up to the most the link's loss allows when it is full. Data shards are never dropped
/// early: a block whose data shards all arrive needs no decode at all, so shedding parity sheds
/// work without costing a block. On a clean link up to three in four parity shards go (a fifth of
/// the datagrams at the default 64:22), and the quarter kept still repairs about 6 % of loss; on a
/// lossy link every block needs some parity, so the share shed shrinks with the loss measured
/// (`shed::shed_limit`), to none at 10 % with the default shape. Which parity shards go is
/// decided by a golden-ratio sequence: evenly spread, and in step with no stride of the sender's
/// interleaving.
#[derive(Debug, Default)]
struct EarlyDrop {
    n: u64,
    /// The last limit computed: (data shards, parity shards, loss in millionths) and the limit.
    limit: Option<((u8, u8, u32), f64)>,
}

impl EarlyDrop {
    /// The fractional part of the golden ratio.
    const STEP: f64 = 0.618_033_988_749_894_9;

    /// True if `datagram` should be dropped, with `queued` of `total` chunks in use and the link
    /// losing `loss_ppm` millionths of the datagrams.
    fn drop(&mut self, datagram: &[u8], queued: usize, total: usize, loss_ppm: u32) -> bool {
        let fill = queued as f64 / total.max(1) as f64;
        let ramp = ((fill - 0.5) * 2.0).clamp(0.0, 1.0);
        if ramp == 0.0 || !is_parity(datagram) {
            return false;
        }
        let shape = (datagram[29], datagram[30], loss_ppm);
        let limit = match self.limit {
            Some((s, limit)) if s == shape => limit,
            _ => {
                let limit = shed::shed_limit(
                    usize::from(shape.0),
                    usize::from(shape.1),
                    f64::from(loss_ppm) / 1e6,
                );
                self.limit = Some((shape, limit));
                limit
            }
        };
        let fraction = ramp * limit;
        if fraction == 0.0 {
            return false;
        }
        self.n = self.n.wrapping_add(1);
        (self.n as f64 * Self::STEP).fract() < fraction
    }
}

/// A shard datagram whose index is at least the object's nominal data shard count: parity in any
/// block (short blocks have fewer data shards, never more). Read from the header without checking
/// the CRC: a corrupt datagram dropped here would have been rejected anyway.
fn is_parity(d: &[u8]) -> bool {
    d.len() >= wire::SHARD_OVERHEAD && d[..4] == wire::MAGIC && d[5] == 1 && d[28] >= d[29]
}

/// Binds the link socket and asks for a large receive buffer; returns it with its bound address.
pub fn bind(addr: SocketAddr, want_rcvbuf: usize) -> Result<(UdpSocket, SocketAddr)> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    let local = socket.local_addr()?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let granted = udp::buffers::grow_receive_buffer(&socket, want_rcvbuf);
    if !udp::gro::enable_receive_offload(&socket) {
        info!("UDP receive offload unavailable: one datagram per system call");
    }
    if !udp::gro::enable_drop_counter(&socket) {
        info!("socket drop counter unavailable: the kernel's drops are not reported");
    }
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
    Ok((socket, local))
}

/// What the net thread and the receive loop tell each other besides the chunks: counters and the
/// link's measured loss, as atomics.
#[derive(Debug, Default)]
pub struct NetState {
    /// Datagrams the net thread dropped early.
    pub dropped: AtomicU64,
    /// Drops at the socket (its buffer full), as the kernel last counted them: one per datagram,
    /// but one per coalesced run of up to 64 datagrams (UDP receive offload).
    pub kernel_overflows: AtomicU64,
    /// The link's loss as the receive loop last measured it, in millionths: it bounds how much
    /// parity the net thread may shed.
    pub link_loss_ppm: AtomicU32,
}

impl NetState {
    /// NetState before anything was measured: the link is assumed to lose `assumed_loss`.
    pub fn new(assumed_loss: f64) -> Self {
        let s = NetState::default();
        s.set_link_loss(assumed_loss);
        s
    }

    /// Publishes the link's measured loss.
    pub fn set_link_loss(&self, loss: f64) {
        let ppm = (loss.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.link_loss_ppm.store(ppm, Ordering::Relaxed);
    }
}

/// The chunk pool: `count` chunks ready to be filled.
pub fn chunk_pool(count: usize) -> (Sender<Chunk>, Receiver<Chunk>) {
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..count.max(2) {
        let _ = tx.send(Chunk::new());
    }
    (tx, rx)
}

/// Drains the socket into free chunks until `stop`; counts datagrams dropped early, spread out,
/// once half the `total` chunks are queued (the assembler is behind). When none is free the
/// datagrams wait in the kernel's buffer. `queued` counts chunks handed over and not yet taken.
pub fn drain(
    socket: UdpSocket,
    full: Sender<Chunk>,
    free: Receiver<Chunk>,
    total: usize,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    signals: Arc<NetState>,
) {
    let mut early = EarlyDrop::default();
    let fd = socket.as_raw_fd();
    let mut behind = Limiter::new(Duration::from_secs(10), 1);
    let mut spare = None;
    let mut cmsg = udp::gro::control_buffer();
    while !stop.load(Ordering::Relaxed) {
        let next = match spare.take() {
            Some(c) => Ok(c),
            None => free.try_recv(),
        };
        let mut chunk = match next {
            Ok(c) => c,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                // Every chunk is queued: leave the datagrams in the kernel's buffer (64 MiB by
                // default) until one comes back, rather than reading them only to drop them.
                match free.recv_timeout(Duration::from_millis(100)) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        chunk.clear();
        // A chunk goes as soon as the socket is empty if the assembler is waiting for it; while
        // the assembler is busy with earlier chunks, this one keeps filling (waiting at most the
        // socket timeout), so that the bounded set of chunks is not spent a few datagrams each.
        while chunk.buf.len() - chunk.len >= MAX_UDP {
            let busy = queued.load(Ordering::Acquire) > 0;
            let flags = if chunk.ranges.is_empty() || busy {
                MsgFlags::empty()
            } else {
                MsgFlags::MSG_DONTWAIT
            };
            match udp::gro::receive(fd, &mut chunk.buf[chunk.len..], flags, &mut cmsg) {
                Ok(got) => {
                    if let Some(d) = got.drops {
                        signals
                            .kernel_overflows
                            .store(u64::from(d), Ordering::Relaxed);
                    }
                    let start = chunk.len;
                    chunk.len += got.len;
                    let in_use = queued.load(Ordering::Acquire);
                    let loss_ppm = signals.link_loss_ppm.load(Ordering::Relaxed);
                    for (at, end) in got.datagrams() {
                        let (at, end) = (start + at, start + end);
                        if early.drop(&chunk.buf[at..end], in_use, total, loss_ppm) {
                            let all = signals.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            if let Some(suppressed) = behind.allow() {
                                warn!(
                                    dropped_total = all,
                                    queued_chunks = in_use,
                                    link_loss_percent = f64::from(loss_ppm) / 1e4,
                                    suppressed,
                                    "receiver falling behind: dropping parity shards early, spread out"
                                );
                            }
                        } else {
                            chunk.ranges.push((at, end));
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        if chunk.ranges.is_empty() {
            spare = Some(chunk);
            continue;
        }
        queued.fetch_add(1, Ordering::AcqRel);
        if full.send(chunk).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(index: u8) -> Vec<u8> {
        let h = wire::ShardHeader {
            session: 1,
            object: 0,
            block: 1,
            shard: index,
            data_shards: 64,
            parity_shards: 22,
            shard_len: 32,
            head_len: 40,
            content_len: 1 << 20,
            stripe: 0,
        };
        let mut d = Vec::new();
        h.emit(&[0; 32], &mut d);
        d
    }

    #[test]
    fn early_drop_takes_only_parity_and_spreads_it() {
        let (data, parity) = (shard(3), shard(70));
        assert!(!is_parity(&data) && is_parity(&parity));
        let mut e = EarlyDrop::default();
        let drops =
            |e: &mut EarlyDrop, d: &[u8], q| (0..1000).filter(|_| e.drop(d, q, 100, 0)).count();
        assert_eq!(drops(&mut e, &parity, 50), 0);
        assert_eq!(
            drops(&mut e, &data, 100),
            0,
            "a data shard was dropped early"
        );
        assert!((370..=380).contains(&drops(&mut e, &parity, 75)));
        assert!((745..=755).contains(&drops(&mut e, &parity, 100)));
        assert_eq!(drops(&mut e, b"garbage", 100), 0);
    }

    #[test]
    fn early_drop_keeps_parity_for_every_block_of_a_column_ordered_group() {
        // 64 blocks of 22 parity shards sent in column order: parity j of block b is the
        // (64 j + b)-th parity datagram. Every block keeps close to a quarter of its parity.
        let parity = shard(70);
        for q in [60, 75, 90, 100] {
            let mut e = EarlyDrop::default();
            let mut kept = [0u32; 64];
            for _group in 0..20 {
                for i in 0..64 * 22 {
                    if !e.drop(&parity, q, 100, 0) {
                        kept[i % 64] += 1;
                    }
                }
            }
            let fewest = kept.iter().min().copied().unwrap_or(0) as f64 / 20.0;
            assert!(
                fewest >= 4.5,
                "fill {q}%: a block kept {fewest} of 22 parity shards"
            );
        }
    }

    #[test]
    fn early_drop_sheds_less_parity_the_more_the_link_loses() {
        let parity = shard(70);
        let shed = |loss_ppm| {
            let mut e = EarlyDrop::default();
            (0..10_000)
                .filter(|_| e.drop(&parity, 100, 100, loss_ppm))
                .count()
        };
        let (clean, two, five, ten) = (shed(0), shed(20_000), shed(50_000), shed(100_000));
        assert!((7_450..=7_550).contains(&clean), "{clean}");
        assert!(
            clean > two && two > five && five > 0,
            "{clean} {two} {five}"
        );
        // At 5 % loss a block of 64 + 22 keeps at least 16 of its parity shards.
        assert!(five <= 10_000 * 6 / 22 + 10, "{five}");
        assert_eq!(ten, 0);
    }
}
