//! Rebuilding a block of a striped object whose data shards went to disk as they arrived.
//!
//! The receiver writes a striped block's data shards straight into the object's file and keeps
//! only its parity shards. When a data shard is missing, the block is handed out as a [`Repair`]:
//! whoever holds the file reads back the data shards that did arrive, decodes, and writes the
//! rebuilt ones. The reading is the caller's: this module does no I/O.

use std::io;

use thiserror::Error;

use crate::fec::{Fec, FecError};
use crate::wire::MAX_SHARDS_PER_BLOCK;

/// Why a block could not be rebuilt.
#[derive(Debug, Error)]
pub enum RepairError {
    /// A data shard that arrived could not be read back.
    #[error("cannot read back a data shard: {0}")]
    Read(#[from] io::Error),
    /// The codec refused the block.
    #[error(transparent)]
    Fec(#[from] FecError),
}

/// A striped block with missing data shards and enough parity to rebuild them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Content offset of data shard 0.
    pub offset: u64,
    /// Distance in the content between two data shards.
    pub step: u64,
    /// Length of the object's content: the last shard of the object stops there.
    pub content_len: u64,
    /// Shard length `L`.
    pub shard_len: usize,
    /// Data shards of the block.
    pub data_shards: usize,
    /// Parity shards of the block.
    pub parity_shards: usize,
    /// Which shards arrived: data shards (in the file) and parity shards (in `parity`).
    pub present: [u64; MAX_SHARDS_PER_BLOCK / 64],
    /// The parity shards held, `L` bytes each, in the order of `held`.
    pub parity: Vec<u8>,
    /// Index in the block of each parity shard held.
    pub held: Vec<u8>,
}

/// The data shards a [`Repair`] rebuilt, ready to be written.
#[derive(Debug)]
pub struct Rebuilt {
    buf: Vec<u8>,
    shards: Vec<(u64, usize, usize)>,
}

impl Rebuilt {
    /// Each rebuilt shard with its content offset, cut at the end of the content.
    pub fn shards(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.shards
            .iter()
            .map(|&(offset, start, len)| (offset, &self.buf[start..start + len]))
    }
}

impl Repair {
    fn has(&self, i: usize) -> bool {
        self.present[i / 64] & (1 << (i % 64)) != 0
    }

    /// Content offset and real length of data shard `j`.
    fn place(&self, j: usize) -> (u64, usize) {
        let at = self.offset + j as u64 * self.step;
        let len = (self.content_len.saturating_sub(at)).min(self.shard_len as u64);
        (at, len as usize)
    }

    /// Data shards that did not arrive.
    pub fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.data_shards).filter(|&j| !self.has(j))
    }

    /// Reads the data shards that arrived through `read_at(buf, offset)` (which fills `buf` from
    /// the content at `offset`) and rebuilds the missing ones.
    pub fn rebuild(
        &self,
        fec: &mut Fec,
        mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<()>,
    ) -> Result<Rebuilt, RepairError> {
        let (k, m, l) = (self.data_shards, self.parity_shards, self.shard_len);
        let n = k + m;
        if n > MAX_SHARDS_PER_BLOCK || l == 0 || self.parity.len() != self.held.len() * l {
            return Err(FecError::BadShape { k, m }.into());
        }
        let mut buf = vec![0u8; n * l];
        let mut flags = [false; MAX_SHARDS_PER_BLOCK];
        for j in 0..k {
            if self.has(j) {
                let (at, len) = self.place(j);
                read_at(&mut buf[j * l..j * l + len], at)?;
                flags[j] = true;
            }
        }
        for (shard, &i) in self.parity.chunks(l).zip(&self.held) {
            let i = usize::from(i);
            if (k..n).contains(&i) {
                buf[i * l..(i + 1) * l].copy_from_slice(shard);
                flags[i] = true;
            }
        }
        fec.reconstruct(k, &mut buf, l, &flags[..n])?;
        let shards = self
            .missing()
            .map(|j| {
                let (at, len) = self.place(j);
                (at, j * l, len)
            })
            .collect();
        buf.truncate(k * l);
        Ok(Rebuilt { buf, shards })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_missing_shards_from_the_file_and_the_parity_held() {
        // A block of 4 data shards of 8 bytes at stride 24 in a 90-byte content: its last shard
        // (offset 72) holds 8 bytes, and one at 96 would be beyond the end.
        let (k, m, l) = (4, 3, 8);
        let content: Vec<u8> = (0..90u8).map(|x| x.wrapping_mul(7)).collect();
        let mut data = vec![0u8; k * l];
        for j in 0..k {
            let at = j * 24;
            data[j * l..(j + 1) * l].copy_from_slice(&content[at..at + l]);
        }
        let mut fec = Fec::default();
        let parity = fec.encode(&data, l, m).unwrap();
        let mut present = [0u64; 4];
        present[0] = 0b101_0101; // data 0 and 2, parity 4 and 6
        let repair = Repair {
            offset: 0,
            step: 24,
            content_len: 90,
            shard_len: l,
            data_shards: k,
            parity_shards: m,
            present,
            parity: [&parity[0..8], &parity[16..24]].concat(),
            held: vec![4, 6],
        };
        assert_eq!(repair.missing().collect::<Vec<_>>(), [1, 3]);
        let mut reads = Vec::new();
        let rebuilt = repair
            .rebuild(&mut fec, |buf, at| {
                reads.push(at);
                buf.copy_from_slice(&content[at as usize..at as usize + buf.len()]);
                Ok(())
            })
            .unwrap();
        assert_eq!(reads, [0, 48]);
        let got: Vec<(u64, Vec<u8>)> = rebuilt.shards().map(|(a, s)| (a, s.to_vec())).collect();
        assert_eq!(
            got,
            [
                (24, content[24..32].to_vec()),
                (72, content[72..80].to_vec())
            ]
        );
    }
}
