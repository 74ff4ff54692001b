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
    /// The buffer, for the next [`Repair::rebuild`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

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
    /// the content at `offset`) and rebuilds the missing ones, in `buf` (reused: a
    /// [`Rebuilt::into_buffer`] of an earlier block saves an allocation per block).
    pub fn rebuild(
        &self,
        fec: &mut Fec,
        mut buf: Vec<u8>,
        mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<()>,
    ) -> Result<Rebuilt, RepairError> {
        let (k, m, l) = (self.data_shards, self.parity_shards, self.shard_len);
        let n = k + m;
        if n > MAX_SHARDS_PER_BLOCK || l == 0 || self.parity.len() != self.held.len() * l {
            return Err(FecError::BadShape { k, m }.into());
        }
        // Every byte the decode reads is written below (a shard cut by the end of the content
        // is padded with zeros), so old bytes of a reused buffer need no clearing.
        buf.resize(n * l, 0);
        let mut flags = [false; MAX_SHARDS_PER_BLOCK];
        for j in 0..k {
            if self.has(j) {
                let (at, len) = self.place(j);
                read_at(&mut buf[j * l..j * l + len], at)?;
                buf[j * l + len..(j + 1) * l].fill(0);
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
        Ok(Rebuilt { buf, shards })
    }
}

/// Neighbouring blocks of one stripe group read together: data shard `j` of blocks `b, b+1, ...`
/// lie side by side in the file, so one read per row serves every block of the batch instead of
/// one read per shard. Blocks become repairable in waves (as each parity row arrives, in block
/// order), so the repairs handed out together are usually neighbours.
#[derive(Debug)]
pub struct Rows {
    base: u64,
    step: u64,
    width: usize,
    buf: Vec<u8>,
    /// Bytes of each row actually read (the file may end before a row does).
    filled: Vec<usize>,
}

impl Rows {
    /// Most blocks one batch spans: `k` rows of this many shards are held at once (2.9 MB at
    /// 64 x 1,400 bytes).
    pub const MAX_BLOCKS: usize = 32;

    /// How many of `repairs`, from the first, one batch serves: neighbours of one stripe group,
    /// in order of offset, spanning at most [`Self::MAX_BLOCKS`] blocks, dense enough that
    /// reading whole rows costs less than reading their shards one by one.
    pub fn batch_len(repairs: &[Repair]) -> usize {
        let Some(first) = repairs.first() else {
            return 0;
        };
        let l = first.shard_len as u64;
        let same = |r: &Repair| {
            (r.step, r.shard_len, r.data_shards, r.content_len)
                == (
                    first.step,
                    first.shard_len,
                    first.data_shards,
                    first.content_len,
                )
        };
        let mut n = 1;
        let mut last = first.offset;
        for r in &repairs[1..] {
            let span = (r.offset.saturating_sub(first.offset)) / l.max(1) + 1;
            if !same(r) || r.offset <= last || span > Self::MAX_BLOCKS as u64 {
                break;
            }
            last = r.offset;
            n += 1;
        }
        // Shrink until at least one block in four of the span is repaired.
        while n > 1 {
            let span = (repairs[n - 1].offset - first.offset) / l.max(1) + 1;
            if span <= 4 * n as u64 {
                break;
            }
            n -= 1;
        }
        n
    }

    /// Reads the rows `batch` (from [`Self::batch_len`], two or more) needs through
    /// `read_at(buf, offset)`, which returns how many bytes it read (fewer at the end of the file).
    pub fn read(
        batch: &[Repair],
        mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
    ) -> io::Result<Rows> {
        let (first, last) = match (batch.first(), batch.last()) {
            (Some(f), Some(l)) => (f, l),
            _ => return Err(io::Error::other("empty batch")),
        };
        let width = usize::try_from(last.offset - first.offset)
            .unwrap_or(usize::MAX)
            .saturating_add(first.shard_len);
        let rows = first.data_shards;
        let mut buf = vec![0u8; rows * width];
        let mut filled = Vec::with_capacity(rows);
        for (j, row) in buf.chunks_mut(width).enumerate() {
            let at = first.offset + j as u64 * first.step;
            let want = usize::try_from(first.content_len.saturating_sub(at))
                .unwrap_or(usize::MAX)
                .min(width);
            let mut got = 0;
            while got < want {
                match read_at(&mut row[got..want], at + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            filled.push(got);
        }
        Ok(Rows {
            base: first.offset,
            step: first.step,
            width,
            buf,
            filled,
        })
    }

    /// Fills `out` with the content at `at` if these rows hold all of it.
    pub fn get(&self, out: &mut [u8], at: u64) -> bool {
        let Some(rel) = at.checked_sub(self.base) else {
            return false;
        };
        let (row, within) = (rel / self.step, rel % self.step);
        let (Ok(row), Ok(within)) = (usize::try_from(row), usize::try_from(within)) else {
            return false;
        };
        match self.filled.get(row) {
            Some(&filled) if within + out.len() <= filled => {
                let start = row * self.width + within;
                out.copy_from_slice(&self.buf[start..start + out.len()]);
                true
            }
            _ => false,
        }
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
            .rebuild(&mut fec, Vec::new(), |buf, at| {
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
        // A buffer reused from another block, full of its bytes, rebuilds the same shards.
        let again = repair
            .rebuild(&mut fec, vec![0xA5; 4096], |buf, at| {
                buf.copy_from_slice(&content[at as usize..at as usize + buf.len()]);
                Ok(())
            })
            .unwrap();
        let same: Vec<(u64, Vec<u8>)> = again.shards().map(|(a, s)| (a, s.to_vec())).collect();
        assert_eq!(same, got);
    }

    #[test]
    fn neighbouring_blocks_are_read_row_by_row_and_rebuilt_alike() {
        // A stripe group of 8 blocks of 4 data shards of 8 bytes (step 64) in 230 bytes: the last
        // row ends early. Blocks 1, 2 and 4 lost a shard each; block 7 is too far to batch.
        let (k, m, l, d) = (4, 2, 8usize, 8u64);
        let content: Vec<u8> = (0..230u32).map(|x| (x * 13 % 251) as u8).collect();
        let mut fec = Fec::default();
        let step = d * l as u64;
        let repair = |b: u64, lost: usize| {
            let mut data = vec![0u8; k * l];
            for j in 0..k {
                let at = (b * l as u64 + j as u64 * step) as usize;
                if at < content.len() {
                    let len = (content.len() - at).min(l);
                    data[j * l..j * l + len].copy_from_slice(&content[at..at + len]);
                }
            }
            let parity = Fec::default().encode(&data, l, m).unwrap();
            let mut present = [0u64; 4];
            present[0] = ((1u64 << (k + m)) - 1) & !(1 << lost) & !(1 << (k + 1));
            Repair {
                offset: b * l as u64,
                step,
                content_len: content.len() as u64,
                shard_len: l,
                data_shards: k,
                parity_shards: m,
                present,
                parity: parity[..l].to_vec(),
                held: vec![k as u8],
            }
        };
        let all = [repair(1, 0), repair(2, 3), repair(4, 1), repair(7, 2)];
        assert_eq!(Rows::batch_len(&all), 4);
        // Two repairs nine blocks apart: reading whole rows would cost more than the shards.
        let far = Repair {
            offset: 9 * l as u64,
            ..all[0].clone()
        };
        assert_eq!(Rows::batch_len(&[all[0].clone(), far]), 1);
        assert_eq!(
            Rows::batch_len(&[all[1].clone(), all[0].clone()]),
            1,
            "out of order"
        );
        let mut reads = 0;
        let rows = Rows::read(&all[..3], |buf, at| {
            reads += 1;
            let from = (at as usize).min(content.len());
            let n = buf.len().min(content.len() - from);
            buf[..n].copy_from_slice(&content[from..from + n]);
            Ok(n)
        })
        .unwrap();
        assert_eq!(reads, k, "one read per row");
        for r in &all[..3] {
            let rebuilt = r
                // Old bytes in the buffer: a shard cut by the end of the content is still
                // padded with zeros, as the sender encoded it.
                .rebuild(&mut fec, vec![0xA5; 1024], |buf, at| {
                    assert!(rows.get(buf, at), "shard at {at} not in the rows");
                    Ok(())
                })
                .unwrap();
            for (at, bytes) in rebuilt.shards() {
                assert_eq!(bytes, &content[at as usize..at as usize + bytes.len()]);
            }
        }
        let mut out = [0u8; 8];
        assert!(
            !rows.get(&mut out, 7 * 8),
            "block 7 is outside the rows of blocks 1 to 4"
        );
    }
}
