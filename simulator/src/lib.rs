//! checkvalve-sim: a lossy one-way link for testers. The model is sans-IO so tests can drive it in-process.

pub mod link;
pub mod socket;

/// The quantity parsers shared with the sender and receiver.
pub use checkvalve_common::units;
