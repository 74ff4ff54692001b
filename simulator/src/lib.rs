//! checkvalve-sim: a lossy one-way link for testers. The model (`link`) is sans-IO so tests can
//! drive it in-process; `forward` is the thin socket loop around it.

pub mod feed;
pub mod forward;
pub mod historian;
pub mod link;
pub mod pcap;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod sweep;

/// The quantity parsers shared with the sender and receiver.
pub use checkvalve_common::units;
