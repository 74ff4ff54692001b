//! Sender side of an object: cuts a head and a content stream into data blocks and hashes the content.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::layout::Geometry;
use crate::meta::{DIGEST_LEN, Head, MetaError};
use crate::wire::{
    MAX_SHARD_LEN, MAX_SHARDS_PER_BLOCK, MIN_SHARD_LEN, RESERVED_OBJECT, ShardHeader,
};

/// FEC shape chosen by the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecParams {
    /// Data shards per content block (`K`).
    pub data_shards: u8,
    /// Parity shards per block (`m`).
    pub parity_shards: u8,
    /// Largest shard length; small objects use shorter shards.
    pub shard_len: u16,
}

impl Default for FecParams {
    /// 64 + 22 shards of 1,400 bytes: see `docs/protocol.md` for the arithmetic.
    fn default() -> Self {
        FecParams {
            data_shards: 64,
            parity_shards: 22,
            shard_len: 1400,
        }
    }
}

impl FecParams {
    /// Checks that blocks of this shape fit the wire format.
    pub fn validate(&self) -> Result<(), ObjectError> {
        let (k, m) = (
            usize::from(self.data_shards),
            usize::from(self.parity_shards),
        );
        if k == 0 || k + m > MAX_SHARDS_PER_BLOCK {
            return Err(ObjectError::BadParams(
                "data shards must be >= 1 and K + M <= 256",
            ));
        }
        if !(MIN_SHARD_LEN..=MAX_SHARD_LEN).contains(&usize::from(self.shard_len)) {
            return Err(ObjectError::BadParams(
                "shard length out of range (32 to 65,459)",
            ));
        }
        Ok(())
    }
}

/// Why an object could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ObjectError {
    /// The metadata could not be encoded (for example an unsafe path).
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// FEC parameters out of range.
    #[error("bad FEC parameters: {0}")]
    BadParams(&'static str),
    /// More content was pushed than the head announced.
    #[error("content longer than announced ({announced} bytes)")]
    TooLong {
        /// Announced size.
        announced: u64,
    },
    /// Whoever takes the datagrams stopped taking them.
    #[error("the transmitter stopped")]
    Stopped,
    /// Fewer content bytes were pushed than the head announced.
    #[error("content shorter than announced: {got} of {announced} bytes")]
    TooShort {
        /// Bytes pushed.
        got: u64,
        /// Announced size.
        announced: u64,
    },
    /// A striped object whose content the caller hashes was finished without its digest.
    #[error("the content was hashed by the caller, who did not give the digest")]
    DigestNotGiven,
}

/// One block's data shards (zero-padded), waiting for its parity and a transmission slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataBlock {
    /// Header of the block's shards; `shard` and `parity_shards` are set when scheduled.
    pub header: ShardHeader,
    /// `k_b * L` bytes.
    pub data: Vec<u8>,
}

impl DataBlock {
    /// Number of data shards.
    pub fn data_shards(&self) -> usize {
        self.data.len() / usize::from(self.header.shard_len)
    }

    fn new(template: ShardHeader, block: u32, mut data: Vec<u8>) -> Self {
        let l = usize::from(template.shard_len);
        data.resize(data.len().div_ceil(l) * l, 0);
        DataBlock {
            header: ShardHeader { block, ..template },
            data,
        }
    }
}

/// Cuts one object into data blocks while hashing its content.
#[derive(Debug)]
pub struct ObjectEncoder {
    template: ShardHeader,
    geometry: Geometry,
    hasher: Sha256,
    buf: Vec<u8>,
    pushed: u64,
    next_block: u32,
}

impl ObjectEncoder {
    /// Starts object `object` of `session`; returns the encoder and the head block.
    ///
    /// The content length is `head.size`; shards are shortened for small objects so that a tiny
    /// file does not cost full-size datagrams.
    pub fn new(
        session: u64,
        object: u64,
        head: &Head,
        params: FecParams,
    ) -> Result<(Self, DataBlock), ObjectError> {
        params.validate()?;
        if object == RESERVED_OBJECT {
            return Err(ObjectError::BadParams("object number 2^64-1 is reserved"));
        }
        let head_bytes = head.encode()?;
        let widest = (head_bytes.len() as u64)
            .max(DIGEST_LEN as u64)
            .max(head.size);
        let shard_len = u64::from(params.shard_len).min(widest) as u16;
        let template = ShardHeader {
            session,
            object,
            block: 0,
            shard: 0,
            data_shards: params.data_shards,
            parity_shards: params.parity_shards,
            shard_len,
            head_len: head_bytes.len() as u16,
            content_len: head.size,
            stripe: 0,
        };
        let geometry = Geometry::from_header(&template)
            .map_err(|_| ObjectError::BadParams("object too large for 32-bit block numbers"))?;
        let stride = geometry.block_stride() as usize;
        let enc = ObjectEncoder {
            template,
            geometry,
            hasher: Sha256::new(),
            buf: Vec::with_capacity(stride.min(head.size as usize)),
            pushed: 0,
            next_block: 1,
        };
        let head_block = DataBlock::new(template, 0, head_bytes);
        Ok((enc, head_block))
    }

    /// The header every shard of the object repeats (block and shard aside).
    pub fn header(&self) -> ShardHeader {
        self.template
    }

    /// Content bytes per full content block: push in multiples of it to avoid copying.
    pub fn block_stride(&self) -> usize {
        self.geometry.block_stride() as usize
    }

    /// Feeds content; every completed content block is appended to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<DataBlock>) -> Result<(), ObjectError> {
        let announced = self.geometry.content_len;
        if self.pushed + bytes.len() as u64 > announced {
            return Err(ObjectError::TooLong { announced });
        }
        self.pushed += bytes.len() as u64;
        self.hasher.update(bytes);
        let stride = self.block_stride();
        while !bytes.is_empty() {
            let take = (stride - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == stride {
                let data = std::mem::replace(&mut self.buf, Vec::with_capacity(stride));
                out.push(DataBlock::new(self.template, self.next_block, data));
                self.next_block += 1;
            }
        }
        Ok(())
    }

    /// Ends the object: appends the last partial content block and the digest block to `out`.
    pub fn finish(mut self, out: &mut Vec<DataBlock>) -> Result<[u8; DIGEST_LEN], ObjectError> {
        if self.pushed != self.geometry.content_len {
            return Err(ObjectError::TooShort {
                got: self.pushed,
                announced: self.geometry.content_len,
            });
        }
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            out.push(DataBlock::new(self.template, self.next_block, data));
            self.next_block += 1;
        }
        let digest: [u8; DIGEST_LEN] = self.hasher.finalize().into();
        out.push(DataBlock::new(
            self.template,
            self.next_block,
            digest.to_vec(),
        ));
        Ok(digest)
    }
}
