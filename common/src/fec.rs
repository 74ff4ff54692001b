//! Reed-Solomon erasure coding over GF(2^8), with one codec kept per `(k, m)` shape.

use std::collections::HashMap;

use reed_solomon_erasure::galois_8::{self, ReedSolomon};
use thiserror::Error;

use crate::wire::MAX_SHARDS_PER_BLOCK;

/// Why a block could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FecError {
    /// `k + m` is 0 or above 256, or `k` is 0.
    #[error("invalid block shape {k}+{m}")]
    BadShape {
        /// Data shards.
        k: usize,
        /// Parity shards.
        m: usize,
    },
    /// Fewer than `k` shards are present.
    #[error("too few shards to decode")]
    TooFewShards,
    /// The equations for the missing shards have no single solution (never for this code's
    /// matrices: a defect, reported rather than delivered wrong).
    #[error("singular decoding matrix")]
    Singular,
    /// The codec refused the input (sizes inconsistent).
    #[error("codec error: {0}")]
    Codec(String),
}

/// Parity is computed on shards padded with zeros to a multiple of this: the codec's vector loop
/// takes 32 or 64 bytes at a time and leaves the rest to a loop a byte at a time, which for
/// 1,400-byte shards costs as much as the other 1,376 bytes. Zeros add nothing to the parity, so
/// its first `L` bytes are the same.
pub(crate) const SIMD_STRIDE: usize = 64;

/// A cache of Reed-Solomon codecs: building one inverts a matrix, so they are reused per shape.
#[derive(Default)]
pub struct Fec {
    codecs: HashMap<(usize, usize), ReedSolomon>,
    /// Per shape, the coefficient of data shard `c` in parity shard `r` at `c * m + r`.
    coefficients: HashMap<(usize, usize), Vec<u8>>,
    /// A block's shards padded to [`SIMD_STRIDE`] for [`Fec::encode`], kept between blocks.
    padded: Vec<u8>,
}

impl std::fmt::Debug for Fec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fec")
            .field("shapes", &self.codecs.len())
            .finish()
    }
}

/// Caching every shape a forged stream names would grow without bound.
const MAX_CACHED_CODECS: usize = 64;

impl Fec {
    fn codec(&mut self, k: usize, m: usize) -> Result<&ReedSolomon, FecError> {
        if k == 0 || m == 0 || k + m > MAX_SHARDS_PER_BLOCK {
            return Err(FecError::BadShape { k, m });
        }
        if !self.codecs.contains_key(&(k, m)) && self.codecs.len() >= MAX_CACHED_CODECS {
            self.codecs.clear();
        }
        match self.codecs.entry((k, m)) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let rs = ReedSolomon::new(k, m).map_err(|e| FecError::Codec(format!("{e:?}")))?;
                Ok(v.insert(rs))
            }
        }
    }

    /// Computes `m` parity shards of `shard_len` bytes for `data` (`k * shard_len` bytes).
    ///
    /// Returns them concatenated; with `m == 0` the result is empty.
    pub fn encode(&mut self, data: &[u8], shard_len: usize, m: usize) -> Result<Vec<u8>, FecError> {
        let k = data.len().checked_div(shard_len).unwrap_or(0);
        if shard_len == 0 || k * shard_len != data.len() || k == 0 {
            return Err(FecError::BadShape { k, m });
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        let stride = shard_len.next_multiple_of(SIMD_STRIDE);
        if stride == shard_len || shard_len < SIMD_STRIDE {
            let mut parity = vec![0u8; m * shard_len];
            code(self.codec(k, m)?, data, &mut parity, shard_len)?;
            return Ok(parity);
        }
        // Copying the data costs less than the byte-at-a-time tail it saves in each of the
        // `k * m` multiplications. Parity byte `i` depends on data bytes `i` only, so whatever
        // a reused buffer holds past `L` in a shard changes nothing the caller gets.
        let mut padded = std::mem::take(&mut self.padded);
        padded.resize((k + m) * stride, 0);
        let (ins, outs) = padded.split_at_mut(k * stride);
        for (to, from) in ins.chunks_mut(stride).zip(data.chunks(shard_len)) {
            to[..shard_len].copy_from_slice(from);
        }
        outs.fill(0);
        code(self.codec(k, m)?, ins, outs, stride)?;
        let mut parity = Vec::with_capacity(m * shard_len);
        for row in outs.chunks(stride) {
            parity.extend_from_slice(&row[..shard_len]);
        }
        self.padded = padded;
        Ok(parity)
    }

    /// Adds data shard `index` of a block of `k` data shards to its `m` parity shards in
    /// `parity` (`m * shard.len()` bytes): shard 0 sets them, each later one is added in, so a
    /// block's parity is computed as its data streams past, in any order that starts with shard 0.
    pub fn encode_one(
        &mut self,
        k: usize,
        index: usize,
        shard: &[u8],
        parity: &mut [u8],
    ) -> Result<(), FecError> {
        let l = shard.len();
        let m = parity.len().checked_div(l).unwrap_or(0);
        if l == 0 || m * l != parity.len() || index >= k {
            return Err(FecError::BadShape { k, m });
        }
        if m == 0 {
            return Ok(());
        }
        let coefficients = self.coefficients(k, m)?;
        for (r, out) in parity.chunks_mut(l).enumerate() {
            let c = coefficients[index * m + r];
            if index == 0 {
                galois_8::mul_slice(c, shard, out);
            } else {
                galois_8::mul_slice_xor(c, shard, out);
            }
        }
        Ok(())
    }

    /// The encoding matrix's parity rows for shape `(k, m)`, read off by encoding unit shards.
    fn coefficients(&mut self, k: usize, m: usize) -> Result<&[u8], FecError> {
        if !self.coefficients.contains_key(&(k, m)) {
            if self.coefficients.len() >= MAX_CACHED_CODECS {
                self.coefficients.clear();
            }
            let mut table = Vec::with_capacity(k * m);
            for c in 0..k {
                let mut unit = vec![0u8; k];
                unit[c] = 1;
                table.extend_from_slice(&self.encode(&unit, 1, m)?);
            }
            self.coefficients.insert((k, m), table);
        }
        Ok(&self.coefficients[&(k, m)])
    }

    /// Rebuilds the missing data shards of a block in place.
    ///
    /// `buf` holds `k + m` shards of `shard_len` bytes; `present[i]` says whether shard `i` arrived.
    /// Only the first `k` shards are guaranteed correct afterwards: parity shards are used as
    /// scratch.
    ///
    /// With `r` data shards missing, only `r` parity shards are used: each is stripped of the
    /// data that arrived (its syndrome), leaving `r` equations in the `r` missing shards, whose
    /// `r x r` matrix (a square part of the code's parity rows, invertible because the code is
    /// MDS) is inverted. That costs `r * k` shard multiplications, as encoding `r` parity shards
    /// does, and no `k x k` inversion: a lossy link makes nearly every block's loss pattern new.
    pub fn reconstruct(
        &mut self,
        k: usize,
        buf: &mut [u8],
        shard_len: usize,
        present: &[bool],
    ) -> Result<(), FecError> {
        let n = present.len();
        let m = n - k.min(n);
        if k == 0 || k > n || buf.len() != n * shard_len || n > MAX_SHARDS_PER_BLOCK {
            return Err(FecError::BadShape { k, m });
        }
        let lost: Vec<usize> = (0..k).filter(|&j| !present[j]).collect();
        if lost.is_empty() {
            return Ok(());
        }
        let rows: Vec<usize> = (0..m)
            .filter(|&r| present[k + r])
            .take(lost.len())
            .collect();
        if rows.len() < lost.len() {
            return Err(FecError::TooFewShards);
        }
        let l = shard_len;
        let coefficients = self.coefficients(k, m)?;
        let (data, parity) = buf.split_at_mut(k * l);
        // Syndromes, in the parity shards' own buffers.
        for j in (0..k).filter(|&j| present[j]) {
            let shard = &data[j * l..(j + 1) * l];
            for &r in &rows {
                let c = coefficients[j * m + r];
                galois_8::mul_slice_xor(c, shard, &mut parity[r * l..(r + 1) * l]);
            }
        }
        let e = lost.len();
        let mut matrix: Vec<u8> = rows
            .iter()
            .flat_map(|&r| lost.iter().map(move |&j| coefficients[j * m + r]))
            .collect();
        let inverse = invert(&mut matrix, e).ok_or(FecError::Singular)?;
        for (u, &j) in lost.iter().enumerate() {
            let out = &mut data[j * l..(j + 1) * l];
            for (t, &r) in rows.iter().enumerate() {
                let syndrome = &parity[r * l..(r + 1) * l];
                if t == 0 {
                    galois_8::mul_slice(inverse[u * e + t], syndrome, out);
                } else {
                    galois_8::mul_slice_xor(inverse[u * e + t], syndrome, out);
                }
            }
        }
        Ok(())
    }
}

/// Computes in `parity` the parity shards of the data shards in `data`, all `stride` bytes long.
fn code(
    codec: &ReedSolomon,
    data: &[u8],
    parity: &mut [u8],
    stride: usize,
) -> Result<(), FecError> {
    let data: Vec<&[u8]> = data.chunks(stride).collect();
    let mut parity: Vec<&mut [u8]> = parity.chunks_mut(stride).collect();
    codec
        .encode_sep(&data, &mut parity)
        .map_err(|e| FecError::Codec(format!("{e:?}")))
}

/// Inverts the `e x e` matrix `a` (row-major) over GF(2^8) by Gauss-Jordan elimination; `None`
/// if it is singular.
fn invert(a: &mut [u8], e: usize) -> Option<Vec<u8>> {
    let mut inv = vec![0u8; e * e];
    for i in 0..e {
        inv[i * e + i] = 1;
    }
    for col in 0..e {
        let pivot = (col..e).find(|&r| a[r * e + col] != 0)?;
        if pivot != col {
            for c in 0..e {
                a.swap(pivot * e + c, col * e + c);
                inv.swap(pivot * e + c, col * e + c);
            }
        }
        let scale = galois_8::div(1, a[col * e + col]);
        for c in 0..e {
            a[col * e + c] = galois_8::mul(a[col * e + c], scale);
            inv[col * e + c] = galois_8::mul(inv[col * e + c], scale);
        }
        for r in (0..e).filter(|&r| r != col) {
            let f = a[r * e + col];
            if f != 0 {
                for c in 0..e {
                    a[r * e + c] ^= galois_8::mul(f, a[col * e + c]);
                    inv[r * e + c] ^= galois_8::mul(f, inv[col * e + c]);
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_built_one_shard_at_a_time_is_the_block_parity() {
        let mut fec = Fec::default();
        let (k, m, l) = (6, 4, 9);
        let data: Vec<u8> = (0..(k * l)).map(|x| (x * 37 % 251) as u8).collect();
        let whole = fec.encode(&data, l, m).unwrap();
        let mut parity = vec![0xEE; m * l];
        for (j, shard) in data.chunks(l).enumerate() {
            fec.encode_one(k, j, shard, &mut parity).unwrap();
        }
        assert_eq!(parity, whole);
    }

    #[test]
    fn padded_parity_is_the_parity_of_the_shards_themselves_block_after_block() {
        let mut fec = Fec::default();
        let (k, m) = (7, 5);
        for (round, l) in [1400, 8900, 100, 1400].into_iter().enumerate() {
            assert_ne!(l % SIMD_STRIDE, 0, "a length the padding changes");
            let data: Vec<u8> = (0..k * l).map(|x| (x * 31 + round * 7) as u8).collect();
            let whole = fec.encode(&data, l, m).unwrap();
            let mut parity = vec![0; m * l];
            for (j, shard) in data.chunks(l).enumerate() {
                fec.encode_one(k, j, shard, &mut parity).unwrap();
            }
            assert_eq!(whole, parity, "round {round}, {l}-byte shards");
        }
        assert_eq!(
            fec.encode(&[1, 2, 3], 0, 2),
            Err(FecError::BadShape { k: 0, m: 2 })
        );
    }

    #[test]
    fn seeded_erasure_patterns_of_every_size_decode_at_the_default_shape() {
        let mut fec = Fec::default();
        let (k, m, l) = (64, 22, 40);
        let data: Vec<u8> = (0..k * l).map(|x| (x * 131 % 253) as u8).collect();
        let mut all = data.clone();
        all.extend_from_slice(&fec.encode(&data, l, m).unwrap());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..400 {
            // Erase `lost` shards anywhere (data and parity alike), up to all m.
            let lost = round % (m + 1);
            let mut present = vec![true; k + m];
            let mut buf = all.clone();
            let mut erased = 0;
            while erased < lost {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % (k + m) as u64) as usize;
                if present[i] {
                    present[i] = false;
                    buf[i * l..(i + 1) * l].fill(0x5A);
                    erased += 1;
                }
            }
            fec.reconstruct(k, &mut buf, l, &present).unwrap();
            assert_eq!(&buf[..k * l], &data[..], "round {round}: {lost} erased");
        }
    }

    #[test]
    fn any_m_erasures_decode() {
        let mut fec = Fec::default();
        let (k, m, l) = (5, 3, 7);
        let data: Vec<u8> = (0..(k * l) as u8).collect();
        let parity = fec.encode(&data, l, m).unwrap();
        let mut all = data.clone();
        all.extend_from_slice(&parity);
        for lost in [[0, 1, 2], [4, 5, 7], [0, 3, 6]] {
            let mut buf = all.clone();
            let mut present = vec![true; k + m];
            for i in lost {
                present[i] = false;
                buf[i * l..(i + 1) * l].fill(0xAA);
            }
            fec.reconstruct(k, &mut buf, l, &present).unwrap();
            assert_eq!(&buf[..k * l], &data[..]);
        }
        let mut present = vec![true; k + m];
        present[..4].fill(false);
        assert_eq!(
            fec.reconstruct(k, &mut all.clone(), l, &present),
            Err(FecError::TooFewShards)
        );
    }
}
