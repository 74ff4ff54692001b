//! Object geometry: how an object is cut into blocks and blocks into shards.
//!
//! An object is three sections, each cut into its own blocks so that the small ones get the full
//! parity of a block to themselves:
//! block 0 holds the metadata head, blocks `1..=C` the content (`K * L` bytes each, the last one
//! shorter), and block `C + 1` the 32-byte SHA-256 digest of the content.
//!
//! A striped object (`stripe > 0`) spreads each content block over a whole stripe group of
//! `D = 2^stripe` blocks: the group's content is cut into shards dealt round-robin to its blocks,
//! so that content in file order is every block's shard 0, then every block's shard 1, and so on.
//! Sent in file order, each block's data shards are spread over the whole group, and a receiver
//! writes them where they belong as they arrive.

use crate::meta::DIGEST_LEN;
use crate::wire::{MAX_SHARDS_PER_BLOCK, MAX_STRIPE_LOG2, ShardHeader, WireError};

/// The per-object constants every shard header repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Nominal data shards of a content block (`K`).
    pub data_shards: u8,
    /// Shard length (`L`).
    pub shard_len: u16,
    /// Encoded head length.
    pub head_len: u16,
    /// Content length.
    pub content_len: u64,
    /// Blocks per stripe group, as a power of two (`0`: unstriped).
    pub stripe: u8,
}

/// Which section of the object a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The metadata head.
    Head,
    /// Content: data shard `j` holds the content bytes from `offset + j * step`.
    Content {
        /// Offset of the block's first shard within the content.
        offset: u64,
        /// Distance between two data shards of the block in the content (`L` unless striped).
        step: u64,
    },
    /// The SHA-256 of the content.
    Digest,
}

/// One block's place in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    /// Section the block belongs to.
    pub section: Section,
    /// Bytes of real data in the block (the last shard is zero-padded beyond it).
    pub len: usize,
    /// Data shards of this block (`k_b = ceil(len / L)`).
    pub data_shards: usize,
}

impl Geometry {
    /// Takes the geometry from a shard header, checking that the object fits the block numbering.
    pub fn from_header(h: &ShardHeader) -> Result<Self, WireError> {
        let g = Geometry {
            data_shards: h.data_shards,
            shard_len: h.shard_len,
            head_len: h.head_len,
            content_len: h.content_len,
            stripe: h.stripe,
        };
        if g.stripe > MAX_STRIPE_LOG2 {
            return Err(WireError::InvalidHeader("stripe out of range"));
        }
        if g.data_shards == 0 || g.shard_len == 0 || g.head_len == 0 {
            return Err(WireError::InvalidHeader("zero geometry field"));
        }
        if g.block_count() > u64::from(u32::MAX) {
            return Err(WireError::InvalidHeader("object has too many blocks"));
        }
        Ok(g)
    }

    /// Bytes of content per full content block (`S = K * L`).
    pub fn block_stride(&self) -> u64 {
        u64::from(self.data_shards) * u64::from(self.shard_len)
    }

    /// Number of content blocks (`C`).
    pub fn content_blocks(&self) -> u64 {
        self.content_len.div_ceil(self.block_stride())
    }

    /// Total blocks: head, content and digest.
    pub fn block_count(&self) -> u64 {
        self.content_blocks().saturating_add(2)
    }

    /// Where block `b` sits, or `None` if the object has no such block.
    pub fn block(&self, b: u32) -> Option<BlockSpan> {
        let b = u64::from(b);
        let c = self.content_blocks();
        let (section, len) = if b == 0 {
            (Section::Head, usize::from(self.head_len))
        } else if b <= c {
            return Some(self.content_block(b - 1));
        } else if b == c + 1 {
            (Section::Digest, DIGEST_LEN)
        } else {
            return None;
        };
        Some(BlockSpan {
            section,
            len,
            data_shards: len.div_ceil(usize::from(self.shard_len)),
        })
    }

    /// Blocks per stripe group (`D`).
    pub fn stripe_width(&self) -> u64 {
        1 << self.stripe
    }

    /// The content blocks (numbered from 0 here) of the stripe group that holds content block
    /// `i`: its first one and how many there are (`D_g`, fewer than `D` only in the last group).
    pub fn stripe_group(&self, i: u64) -> (u64, u64) {
        let d = self.stripe_width();
        let first = i / d * d;
        (first, d.min(self.content_blocks() - first))
    }

    /// The stripe group holding content block `i`: its first block, its width `D_g` and its
    /// data shard count `N_g`.
    pub fn stripe_shards(&self, i: u64) -> (u64, u64, u64) {
        let (first, width) = self.stripe_group(i);
        let base = first * self.block_stride();
        let group_len = (self.content_len - base).min(width * self.block_stride());
        (first, width, group_len.div_ceil(u64::from(self.shard_len)))
    }

    /// Content block `i` (block `i + 1` of the object).
    fn content_block(&self, i: u64) -> BlockSpan {
        let l = u64::from(self.shard_len);
        let (first, width, shards) = self.stripe_shards(i);
        let base = first * self.block_stride();
        let at = i - first;
        let k = (shards - at).div_ceil(width);
        let offset = base + at * l;
        let step = width * l;
        let last = offset + (k - 1) * step;
        let len = (k - 1) * l + (self.content_len - last).min(l);
        BlockSpan {
            section: Section::Content { offset, step },
            len: len as usize,
            data_shards: k as usize,
        }
    }

    /// Checks that a shard of block `b` with `parity` parity shards and index `shard` can exist.
    pub fn check_shard(&self, b: u32, parity: u8, shard: u8) -> Result<BlockSpan, WireError> {
        let span = self
            .block(b)
            .ok_or(WireError::InvalidHeader("block number beyond the object"))?;
        let n = span.data_shards + usize::from(parity);
        if n > MAX_SHARDS_PER_BLOCK {
            return Err(WireError::InvalidHeader("more than 256 shards in a block"));
        }
        if usize::from(shard) >= n {
            return Err(WireError::InvalidHeader("shard index beyond the block"));
        }
        Ok(span)
    }
}

/// The stripe (as a power of two) whose groups hold at most `span` bytes of content, for blocks
/// of `stride` bytes: at least 1, at most the wire's limit.
pub fn stripe_for(span: u64, stride: u64) -> u8 {
    let mut stripe = 1;
    while stripe < crate::wire::MAX_STRIPE_LOG2 && (stride << (stripe + 1)) <= span {
        stripe += 1;
    }
    stripe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The content section at `offset`, shards `step` bytes apart.
    fn content(offset: u64, step: u64) -> Section {
        Section::Content { offset, step }
    }

    #[test]
    fn stripe_for_fits_the_span() {
        assert_eq!(stripe_for(96 << 20, 64 * 1400), 10);
        assert_eq!(stripe_for(96 << 20, 64 * 8900), 7);
        assert_eq!(stripe_for(1, 64 * 1400), 1);
        assert_eq!(stripe_for(u64::MAX, 1), crate::wire::MAX_STRIPE_LOG2);
    }

    #[test]
    fn blocks_cover_the_object() {
        let g = Geometry {
            data_shards: 4,
            shard_len: 10,
            head_len: 25,
            content_len: 95,
            stripe: 0,
        };
        assert_eq!(g.content_blocks(), 3);
        assert_eq!(g.block_count(), 5);
        let b0 = g.block(0).unwrap();
        assert_eq!((b0.section, b0.len, b0.data_shards), (Section::Head, 25, 3));
        let b3 = g.block(3).unwrap();
        assert_eq!(b3.section, content(80, 10));
        assert_eq!((b3.len, b3.data_shards), (15, 2));
        let b4 = g.block(4).unwrap();
        assert_eq!((b4.section, b4.data_shards), (Section::Digest, 4));
        assert!(g.block(5).is_none());
    }

    #[test]
    fn stripes_deal_shards_round_robin_and_cover_the_content_once() {
        // 4 shards of 10 bytes per block, 4 blocks per group: groups of 160 bytes; 395 bytes make
        // two full groups and a last one of 75 bytes over 2 blocks (8 shards, 4 in each block,
        // the last of 5 bytes).
        let g = Geometry {
            data_shards: 4,
            shard_len: 10,
            head_len: 25,
            content_len: 395,
            stripe: 2,
        };
        assert_eq!(g.content_blocks(), 10);
        let b1 = g.block(1).unwrap();
        assert_eq!(b1.section, content(0, 40));
        assert_eq!((b1.len, b1.data_shards), (40, 4));
        let b10 = g.block(10).unwrap();
        assert_eq!(b10.section, content(330, 20));
        assert_eq!((b10.len, b10.data_shards), (35, 4));
        let mut owner = vec![0u32; 395];
        for b in 1..=10 {
            let span = g.block(b).unwrap();
            let Section::Content { offset, step } = span.section else {
                panic!("block {b} is content")
            };
            let mut len = 0;
            for j in 0..span.data_shards as u64 {
                let start = offset + j * step;
                let end = (start + 10).min(395);
                for x in &mut owner[start as usize..end as usize] {
                    assert_eq!(*x, 0, "byte covered twice");
                    *x = b;
                }
                len += end - start;
            }
            assert_eq!(len as usize, span.len, "block {b}");
        }
        assert!(owner.iter().all(|x| *x != 0));
        // Shard j of the blocks of a group, in file order: block 1 shard 0, block 2 shard 0, ...
        assert_eq!(
            &owner[..50],
            &[[1; 10], [2; 10], [3; 10], [4; 10], [1; 10]].concat()[..]
        );
    }

    #[test]
    fn absurd_sizes_are_refused_without_overflow() {
        let h = ShardHeader {
            session: 1,
            object: 0,
            block: 0,
            shard: 0,
            data_shards: 1,
            parity_shards: 0,
            shard_len: 1,
            head_len: 1,
            content_len: u64::MAX,
            stripe: 0,
        };
        assert!(Geometry::from_header(&h).is_err());
    }

    #[test]
    fn empty_content_has_no_content_block() {
        let g = Geometry {
            data_shards: 64,
            shard_len: 1400,
            head_len: 40,
            content_len: 0,
            stripe: 0,
        };
        assert_eq!(g.block_count(), 2);
        assert_eq!(g.block(1).unwrap().section, Section::Digest);
    }
}
