//! Sender side of a striped object: content goes out in file order, each stripe group's parity is
//! built as its data passes, and follows it.
//!
//! In a stripe group of `D_g` blocks, content shard `c` is data shard `c / D_g` of block
//! `c mod D_g` (see [`crate::layout`]), so sending the content in file order spreads every block's
//! data shards evenly over the group's data, and sending the parity in column order (parity shard
//! 0 of every block, then parity shard 1, ...) spreads its parity over the group's parity. A burst
//! of `B` datagrams then costs a block at most `ceil(B / D_g) + 1` shards. The sender holds only
//! the group's parity (`D_g * m * L` bytes) and reads the file once; the receiver writes the data
//! shards where they belong as they arrive.
//!
//! The head block's shards are spread over the first group's data, the digest's over the last
//! group's parity, so that a burst anywhere costs them as little as it costs a content block.

use sha2::{Digest, Sha256};

use crate::auth::Sealer;
use crate::fec::{Fec, SIMD_STRIDE};
use crate::interleave::{Batch, Spares};
use crate::layout::Geometry;
use crate::meta::{DIGEST_LEN, Head};
use crate::object::{FecParams, ObjectEncoder, ObjectError};
use crate::wire::{MAX_SHARDS_PER_BLOCK, ShardHeader};

/// Rows of a stripe group pushed at a time (see [`StripedEncoder::read_size`]).
const ROWS: usize = 4;

/// Parity for a block of `k` data shards in a group of `span` datagrams: `m`, raised for a group
/// shorter than `min_span` so that a burst at the tail is no more dangerous than one elsewhere.
fn boosted(m: usize, k: usize, span: usize, min_span: usize) -> usize {
    if m == 0 || span >= min_span {
        return m;
    }
    (m * min_span.div_ceil(span.max(1))).min(MAX_SHARDS_PER_BLOCK - k)
}

/// A small block (head or digest) with its parity, sent a shard at a time between others.
#[derive(Debug)]
struct Lone {
    header: ShardHeader,
    shards: Vec<u8>,
    next: usize,
}

impl Lone {
    fn new(
        fec: &mut Fec,
        header: ShardHeader,
        mut data: Vec<u8>,
        m: usize,
        min_span: usize,
    ) -> Result<Self, ObjectError> {
        let l = usize::from(header.shard_len);
        let k = data.len().div_ceil(l);
        data.resize(k * l, 0);
        let m = boosted(m, k, k + m, min_span);
        let parity = fec
            .encode(&data, l, m)
            .map_err(|_| ObjectError::BadParams("cannot encode a block"))?;
        data.extend_from_slice(&parity);
        Ok(Lone {
            header: ShardHeader {
                parity_shards: m as u8,
                ..header
            },
            shards: data,
            next: 0,
        })
    }

    fn len(&self) -> usize {
        self.shards.len() / usize::from(self.header.shard_len)
    }

    fn left(&self) -> usize {
        self.len() - self.next
    }

    /// Emits the next shard, if any is left.
    fn emit_next(&mut self, sealer: Option<&Sealer>, out: &mut Sink<'_>) {
        if self.next < self.len() {
            let l = usize::from(self.header.shard_len);
            let header = ShardHeader {
                shard: self.next as u8,
                ..self.header
            };
            emit(
                sealer,
                out,
                header,
                &self.shards[self.next * l..(self.next + 1) * l],
            );
            self.next += 1;
        }
    }
}

fn emit(sealer: Option<&Sealer>, out: &mut Sink<'_>, header: ShardHeader, payload: &[u8]) {
    out.batch.push_with(|buf| {
        let start = buf.len();
        header.emit(payload, buf);
        if let Some(s) = sealer {
            s.seal(buf, start);
        }
    });
    if out.batch.byte_len() >= out.limit {
        out.hand_over();
    }
}

/// Where a striped object's datagrams go: batches of about `limit` bytes, each handed to `send`
/// as soon as it is full, so that a sender holds little more than its parity.
pub struct Sink<'a> {
    batch: Batch,
    limit: usize,
    send: &'a mut dyn FnMut(Batch) -> bool,
    stopped: bool,
    spares: Spares,
}

impl<'a> Sink<'a> {
    /// Batches of about `limit` bytes handed to `send`, which returns false to stop.
    pub fn new(limit: usize, send: &'a mut dyn FnMut(Batch) -> bool) -> Self {
        Sink {
            batch: Batch::default(),
            limit,
            send,
            stopped: false,
            spares: Spares::default(),
        }
    }

    /// Takes its batches from `spares`, where the transmitter gives them back once sent.
    pub fn reusing(mut self, spares: Spares) -> Self {
        self.batch = spares.take();
        self.spares = spares;
        self
    }

    fn hand_over(&mut self) {
        let batch = std::mem::replace(&mut self.batch, self.spares.take());
        if !self.stopped && !(self.send)(batch) {
            self.stopped = true;
        }
    }

    /// Hands over what is left, marked as completing objects below `complete_end` (0: none);
    /// false if `send` asked to stop at any point.
    pub fn finish(mut self, complete_end: u64) -> bool {
        if !self.batch.is_empty() || complete_end > 0 {
            let mut batch = std::mem::take(&mut self.batch);
            batch.complete_end = complete_end;
            if !self.stopped && !(self.send)(batch) {
                self.stopped = true;
            }
        }
        !self.stopped
    }

    fn check(&self) -> Result<(), ObjectError> {
        if self.stopped {
            Err(ObjectError::Stopped)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Sink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("queued", &self.batch.len())
            .field("stopped", &self.stopped)
            .finish()
    }
}

/// Encodes one object as stripe groups, streaming: content in, datagrams out.
#[derive(Debug)]
pub struct StripedEncoder {
    template: ShardHeader,
    geometry: Geometry,
    fec: Fec,
    /// `None` when the caller hashes the content (on another thread) and gives the digest to
    /// [`StripedEncoder::finish_with_digest`].
    hasher: Option<Sha256>,
    pushed: u64,
    base_parity: usize,
    min_span: usize,
    /// First content block (from 0) of the group being sent.
    first: u64,
    /// Blocks in the group (`D_g`).
    width: u64,
    /// Data shards in the group.
    shards: u64,
    /// Next data shard of the group to send.
    next: u64,
    /// Parity shards per block of the group.
    m: usize,
    /// The group's parity, block after block, `m` shards each, every shard `padded.len()` bytes.
    parity: Vec<u8>,
    /// A data shard copied into the shard length rounded up to [`SIMD_STRIDE`], its tail zero.
    padded: Vec<u8>,
    /// Content of a shard not yet complete.
    partial: Vec<u8>,
    head: Lone,
    /// One head shard goes out after every this many data shards of the first group.
    head_every: u64,
}

impl StripedEncoder {
    /// Starts object `object` of `session` with stripe groups of `2^stripe` blocks; `min_span` is
    /// the interleaver's shortest group, below which parity is raised.
    pub fn new(
        session: u64,
        object: u64,
        head: &Head,
        params: FecParams,
        stripe: u8,
        min_span: usize,
    ) -> Result<Self, ObjectError> {
        if stripe == 0 || stripe > crate::wire::MAX_STRIPE_LOG2 {
            return Err(ObjectError::BadParams("stripe out of range (1 to 12)"));
        }
        let (enc, head_block) = ObjectEncoder::new(session, object, head, params)?;
        let template = ShardHeader {
            stripe,
            ..enc.header()
        };
        let geometry = Geometry::from_header(&template)
            .map_err(|_| ObjectError::BadParams("object too large for 32-bit block numbers"))?;
        if geometry.content_blocks() == 0 {
            return Err(ObjectError::BadParams("an empty object is not striped"));
        }
        let mut fec = Fec::default();
        let base_parity = usize::from(params.parity_shards);
        let head = Lone::new(
            &mut fec,
            ShardHeader {
                block: 0,
                ..template
            },
            head_block.data,
            base_parity,
            min_span,
        )?;
        let mut enc = StripedEncoder {
            template,
            geometry,
            fec,
            hasher: Some(Sha256::new()),
            pushed: 0,
            base_parity,
            min_span,
            first: 0,
            width: 0,
            shards: 0,
            next: 0,
            m: 0,
            parity: Vec::new(),
            padded: vec![0; usize::from(template.shard_len).next_multiple_of(SIMD_STRIDE)],
            partial: Vec::with_capacity(usize::from(template.shard_len)),
            head,
            head_every: 1,
        };
        enc.start_group(0);
        enc.head_every = (enc.shards / enc.head.len() as u64).max(1);
        Ok(enc)
    }

    /// Leaves hashing to the caller, who can then do it beside the encoding: the digest is given
    /// to [`StripedEncoder::finish_with_digest`].
    #[must_use]
    pub fn hashed_by_caller(mut self) -> Self {
        self.hasher = None;
        self
    }

    fn start_group(&mut self, first: u64) {
        let g = &self.geometry;
        let (first, width, shards) = g.stripe_shards(first);
        let k_max = shards.div_ceil(width) as usize;
        let span = shards as usize + width as usize * self.base_parity;
        let mut m = self.base_parity;
        if first > 0 && width < g.stripe_width() {
            // The last of several groups is narrower: more parity per block lets it survive the
            // same burst as a full group (as far as 256 shards per block allow).
            m = (m * g.stripe_width() as usize).div_ceil(width as usize);
            m = m.min(MAX_SHARDS_PER_BLOCK - k_max);
        }
        self.m = boosted(self.base_parity, k_max, span, self.min_span).max(m);
        (self.first, self.width, self.shards, self.next) = (first, width, shards, 0);
        self.parity.clear();
        self.parity
            .resize(width as usize * self.m * self.padded.len(), 0);
    }

    /// Content to push at a time: a few rows of the group (a row is one shard of each block), so
    /// that each block's parity stays in cache while several of its shards are added to it.
    pub fn read_size(&self) -> usize {
        let row = self.geometry.stripe_width() as usize * usize::from(self.template.shard_len);
        (ROWS * row).max(1 << 20)
    }

    /// Feeds content in file order; datagrams ready to send are appended to `out`.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        sealer: Option<&Sealer>,
        out: &mut Sink<'_>,
    ) -> Result<(), ObjectError> {
        let announced = self.geometry.content_len;
        if self.pushed + bytes.len() as u64 > announced {
            return Err(ObjectError::TooLong { announced });
        }
        self.pushed += bytes.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        let l = usize::from(self.template.shard_len);
        if !self.partial.is_empty() {
            let take = (l - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == l {
                let shard = std::mem::take(&mut self.partial);
                self.data_shards(&shard, sealer, out)?;
                self.partial = shard;
                self.partial.clear();
            }
        }
        while bytes.len() >= l {
            let n = (bytes.len() / l).min((self.shards - self.next) as usize);
            self.data_shards(&bytes[..n * l], sealer, out)?;
            bytes = &bytes[n * l..];
        }
        self.partial.extend_from_slice(bytes);
        if self.pushed == announced && !self.partial.is_empty() {
            let mut shard = std::mem::take(&mut self.partial);
            shard.resize(l, 0);
            self.data_shards(&shard, sealer, out)?;
        }
        out.check()
    }

    /// Sends consecutive data shards of the group (`run`: whole shards, none past the group's
    /// end) and adds each to its block's parity.
    fn data_shards(
        &mut self,
        run: &[u8],
        sealer: Option<&Sealer>,
        out: &mut Sink<'_>,
    ) -> Result<(), ObjectError> {
        let l = usize::from(self.template.shard_len);
        let (start, width) = (self.next, self.width);
        let count = (run.len() / l) as u64;
        let block_of = |c: u64| ((c % width) as usize, c / width);
        for (x, shard) in run.chunks(l).enumerate() {
            let c = start + x as u64;
            let (i, j) = block_of(c);
            let header = ShardHeader {
                block: (1 + self.first + i as u64) as u32,
                shard: j as u8,
                parity_shards: self.m as u8,
                ..self.template
            };
            emit(sealer, out, header, shard);
            if self.first == 0 && (c + 1).is_multiple_of(self.head_every) {
                self.head.emit_next(sealer, out);
            }
        }
        // Block after block, so that a block's parity is loaded once for all its shards here.
        let span = self.m * self.padded.len();
        for x0 in 0..width.min(count) {
            let (i, _) = block_of(start + x0);
            let k = (self.shards - i as u64).div_ceil(width) as usize;
            let parity = &mut self.parity[i * span..(i + 1) * span];
            for x in (x0..count).step_by(width as usize) {
                let (_, j) = block_of(start + x);
                self.padded[..l].copy_from_slice(&run[x as usize * l..(x as usize + 1) * l]);
                self.fec
                    .encode_one(k, j as usize, &self.padded, parity)
                    .map_err(|_| ObjectError::BadParams("cannot encode a block"))?;
            }
        }
        self.next += count;
        if self.next == self.shards {
            while self.head.left() > 0 {
                self.head.emit_next(sealer, out);
            }
            let end = self.first + self.width;
            if end < self.geometry.content_blocks() {
                self.emit_parity(sealer, out, None);
                self.start_group(end);
            }
        }
        Ok(())
    }

    /// Sends the group's parity in column order, with `lone`'s shards spread among it.
    fn emit_parity(
        &mut self,
        sealer: Option<&Sealer>,
        out: &mut Sink<'_>,
        mut lone: Option<&mut Lone>,
    ) {
        let l = usize::from(self.template.shard_len);
        let (m, width) = (self.m, self.width as usize);
        let total = m * width;
        let every = lone
            .as_ref()
            .map_or(usize::MAX, |d| (total / d.len()).max(1));
        let mut sent = 0;
        for r in 0..m {
            for i in 0..width {
                let k = (self.shards - i as u64).div_ceil(self.width) as usize;
                let header = ShardHeader {
                    block: (1 + self.first + i as u64) as u32,
                    shard: (k + r) as u8,
                    parity_shards: m as u8,
                    ..self.template
                };
                let at = (i * m + r) * self.padded.len();
                emit(sealer, out, header, &self.parity[at..at + l]);
                sent += 1;
                if sent % every == 0
                    && let Some(d) = lone.as_deref_mut()
                {
                    d.emit_next(sealer, out);
                }
            }
        }
        if let Some(d) = lone {
            while d.left() > 0 {
                d.emit_next(sealer, out);
            }
        }
    }

    /// Ends the object: the last group's parity, with the digest block spread among it unless
    /// `withhold_digest` (the file changed while read: the receiver must never verify it).
    pub fn finish(
        mut self,
        withhold_digest: bool,
        sealer: Option<&Sealer>,
        out: &mut Sink<'_>,
    ) -> Result<[u8; DIGEST_LEN], ObjectError> {
        let Some(hasher) = self.hasher.take() else {
            return Err(ObjectError::DigestNotGiven);
        };
        let digest: [u8; DIGEST_LEN] = hasher.finalize().into();
        self.finish_with_digest(digest, withhold_digest, sealer, out)?;
        Ok(digest)
    }

    /// Like [`StripedEncoder::finish`], with the SHA-256 of the content computed by the caller
    /// (see [`StripedEncoder::hashed_by_caller`]).
    pub fn finish_with_digest(
        mut self,
        digest: [u8; DIGEST_LEN],
        withhold_digest: bool,
        sealer: Option<&Sealer>,
        out: &mut Sink<'_>,
    ) -> Result<(), ObjectError> {
        if self.pushed != self.geometry.content_len {
            return Err(ObjectError::TooShort {
                got: self.pushed,
                announced: self.geometry.content_len,
            });
        }
        let header = ShardHeader {
            block: (self.geometry.content_blocks() + 1) as u32,
            ..self.template
        };
        let mut lone = Lone::new(
            &mut self.fec,
            header,
            digest.to_vec(),
            self.base_parity,
            self.min_span,
        )?;
        let lone = (!withhold_digest).then_some(&mut lone);
        self.emit_parity(sealer, out, lone);
        out.check()?;
        Ok(())
    }
}
