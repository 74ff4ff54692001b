//! One object in progress, and the striped content gathered for one write.

use std::collections::HashMap;
use std::time::Instant;

use crate::layout::Geometry;
use crate::meta::{DIGEST_LEN, Head};
use crate::ranges::RangeMap;

use super::block::Pending;

/// One object in progress.
#[derive(Debug)]
pub(crate) struct Object {
    pub(crate) geometry: Geometry,
    pub(crate) blocks: HashMap<u32, Pending>,
    pub(crate) done: RangeMap<()>,
    pub(crate) done_count: u64,
    pub(crate) head: Option<Head>,
    pub(crate) digest: Option<[u8; DIGEST_LEN]>,
    pub(crate) last_activity: Instant,
    pub(crate) first_datagram: Instant,
    /// Data shards rebuilt from parity so far.
    pub(crate) repaired: u64,
    /// Bytes charged for the object itself and its ranges of decoded blocks.
    pub(crate) charged: usize,
    /// Striped content gathered for one write.
    pub(crate) run: Option<Run>,
}

/// Consecutive content of a striped object, gathered from data shards for one write.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) offset: u64,
    pub(crate) buf: Vec<u8>,
    pub(crate) charged: usize,
}
