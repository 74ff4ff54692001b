//! The kernel's UDP features the programs use, one file per concern (as quinn-udp keeps them):
//! socket buffers ([`buffers`]), receive offload and the socket's drop counter ([`gro`]), and
//! segmentation offload ([`gso`]). Linux only; each feature degrades to one datagram per system
//! call where the kernel refuses it.
//!
//! Nothing here decides a direction: the receiver only ever calls [`gro::receive`], the sender and
//! the simulator's outbound side only [`gso`], and each program's seccomp filter enforces it.

pub mod buffers;
pub mod gro;
pub mod gso;

/// Largest UDP payload.
pub const MAX_UDP: usize = 65_535;
