//! Record streams (`docs/protocol.md` §2.5, §4.1): batches of one channel's records carried as
//! objects of kind `Records`, the sender's batching, and the receiver's order with exact gaps.

pub mod batch;
pub mod batcher;
pub mod order;
pub mod spool;

/// The bit that tells a sender's record streams' session from its file session: the streams'
/// session id is the file session's with this bit flipped (the id's random half), so that a
/// receiver knows the two for one sender.
pub const STREAM_SESSION_BIT: u64 = 2;

/// The record streams' session of the sender whose file session is `files`.
pub fn stream_session(files: u64) -> u64 {
    files ^ STREAM_SESSION_BIT
}

/// Whether `a` and `b` are the two sessions of one sender.
pub fn same_sender(a: u64, b: u64) -> bool {
    a ^ b == STREAM_SESSION_BIT
}
