//! Sender core to receiver core, in memory, under seeded loss, reordering, duplication and corruption.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use checkvalve_common::assembler::{Abandon, Assembler, AssemblerConfig, Event, ObjectKey};
use checkvalve_common::fec::Fec;
use checkvalve_common::interleave::{Batch, InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder, ObjectError};
use checkvalve_common::stripe::{Sink, StripedEncoder};
use checkvalve_common::wire::{self, WireError};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::Digest;

const SESSION: u64 = 0xfeed_beef;

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

/// The metadata of a file at `path` holding `data`.
fn file_head(path: &str, data: &[u8]) -> Head {
    Head {
        path: path.to_string(),
        size: data.len() as u64,
        mtime_secs: 1,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    }
}

/// Encodes `files` as one transfer and returns its datagrams in transmission order.
fn encode(files: &[(String, Vec<u8>)], fec: FecParams, il: InterleaveParams) -> Vec<Vec<u8>> {
    encode_as(SESSION, 0, files, fec, il)
}

/// Like [`encode`], as objects `first..` of `session`.
fn encode_as(
    session: u64,
    first: u64,
    files: &[(String, Vec<u8>)],
    fec: FecParams,
    il: InterleaveParams,
) -> Vec<Vec<u8>> {
    let mut inter = Interleaver::new(il);
    let mut out = Vec::new();
    let mut take = |batch: Option<checkvalve_common::interleave::Batch>| {
        if let Some(b) = batch {
            out.extend(b.iter().map(<[u8]>::to_vec));
        }
    };
    for (i, (path, data)) in files.iter().enumerate() {
        let head = file_head(path, data);
        let (mut enc, head_block) =
            ObjectEncoder::new(session, first + i as u64, &head, fec).unwrap();
        let mut blocks = vec![head_block];
        for chunk in data.chunks(10_000) {
            enc.push(chunk, &mut blocks).unwrap();
        }
        enc.finish(&mut blocks).unwrap();
        for b in blocks {
            take(inter.push(b).unwrap());
        }
    }
    take(inter.flush().unwrap());
    out
}

/// Encodes one file as a striped object (object 0 of [`SESSION`]) with groups of `2^stripe`
/// blocks, and returns its datagrams in transmission order.
fn encode_striped(path: &str, data: &[u8], fec: FecParams, stripe: u8) -> Vec<Vec<u8>> {
    let head = file_head(path, data);
    let mut enc = StripedEncoder::new(SESSION, 0, &head, fec, stripe, 256).unwrap();
    let mut out = Vec::new();
    let mut send = |b: Batch| {
        out.extend(b.iter().map(<[u8]>::to_vec));
        true
    };
    let mut sink = Sink::new(100_000, &mut send);
    for chunk in data.chunks(enc.read_size() / 3 + 1) {
        enc.push(chunk, None, &mut sink).unwrap();
    }
    let digest = enc.finish(false, None, &mut sink).unwrap();
    assert!(sink.finish(1));
    assert_eq!(digest, <[u8; 32]>::from(sha2::Sha256::digest(data)));
    out
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// Path to SHA-256 of what was delivered (byte identity is checked through the digest).
    delivered: HashMap<String, [u8; 32]>,
    lost: Vec<(ObjectKey, Option<String>)>,
    missing: Vec<(u64, u64)>,
}

/// Feeds datagrams to an assembler, then lets every timeout expire.
fn receive(datagrams: &[Vec<u8>], config: AssemblerConfig) -> (Outcome, Assembler) {
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, Instant::now());
    let mut files: HashMap<ObjectKey, Vec<u8>> = HashMap::new();
    let mut out = Outcome::default();
    let mut fec = Fec::default();
    let mut drain = |asm: &mut Assembler, out: &mut Outcome| {
        while let Some(ev) = asm.poll_event() {
            match ev {
                Event::Content { key, offset, data } => {
                    let f = files.entry(key).or_default();
                    let end = offset as usize + data.len();
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[offset as usize..end].copy_from_slice(&data);
                }
                Event::Repair { key, repair } => {
                    let f = files.entry(key).or_default();
                    f.resize(f.len().max(repair.content_len as usize), 0);
                    let rebuilt = repair
                        .rebuild(&mut fec, Vec::new(), |buf, at| {
                            let at = at as usize;
                            buf.copy_from_slice(&f[at..at + buf.len()]);
                            Ok(())
                        })
                        .expect("a repair the assembler hands out rebuilds");
                    for (at, bytes) in rebuilt.shards() {
                        f[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
                    }
                }
                Event::Complete {
                    key, head, digest, ..
                } => {
                    let mut f = files.remove(&key).unwrap_or_default();
                    f.resize(head.size as usize, 0);
                    let actual: [u8; 32] = sha2::Sha256::digest(&f).into();
                    assert_eq!(actual, digest, "digest mismatch for {}", head.path);
                    out.delivered.insert(head.path, actual);
                }
                Event::Abandoned { key, path, .. } => {
                    files.remove(&key);
                    out.lost.push((key, path));
                }
                Event::Missing { first, last, .. } => out.missing.push((first, last)),
                _ => {}
            }
        }
    };
    for (i, d) in datagrams.iter().enumerate() {
        let now = t0 + Duration::from_micros(i as u64);
        let _ = asm.handle_datagram(now, d);
        drain(&mut asm, &mut out);
    }
    asm.handle_timeout(t0 + Duration::from_secs(3600));
    drain(&mut asm, &mut out);
    (out, asm)
}

fn sample_files() -> Vec<(String, Vec<u8>)> {
    let l = 1400;
    let block = 64 * l;
    [
        0,
        1,
        l - 1,
        l,
        l + 1,
        block - 1,
        block,
        block + 1,
        5 * block + 17,
        300_000,
    ]
    .iter()
    .enumerate()
    .map(|(i, &n)| (format!("dir/ñ-{i}.bin"), content(i as u64, n)))
    .collect()
}

fn expected(files: &[(String, Vec<u8>)]) -> HashMap<String, [u8; 32]> {
    files
        .iter()
        .map(|(p, d)| (p.clone(), sha2::Sha256::digest(d).into()))
        .collect()
}

/// Applies seeded loss, duplication and local reordering.
fn impair(datagrams: &[Vec<u8>], seed: u64, loss: f64, dup: f64, reorder: f64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for d in datagrams {
        if rng.random_bool(loss) {
            continue;
        }
        out.push(d.clone());
        if rng.random_bool(dup) {
            out.push(d.clone());
        }
        if out.len() > 1 && rng.random_bool(reorder) {
            let back = rng.random_range(1..out.len().min(9));
            let n = out.len();
            out.swap(n - 1, n - 1 - back);
        }
    }
    out
}

#[test]
fn clean_transfer_is_byte_identical() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let (out, asm) = receive(&dg, AssemblerConfig::default());
    assert_eq!(out.delivered, expected(&files));
    assert!(out.lost.is_empty() && out.missing.is_empty());
    assert_eq!(asm.pending_bytes(), 0);
    assert_eq!(asm.objects_in_progress(), 0);
}

#[test]
fn five_percent_loss_with_reordering_and_duplicates_is_byte_identical() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    for seed in 0..5 {
        let (out, _) = receive(
            &impair(&dg, seed, 0.05, 0.02, 0.05),
            AssemblerConfig::default(),
        );
        assert_eq!(out.delivered, expected(&files), "seed {seed}");
    }
}

#[test]
fn shuffled_order_decodes() {
    let files = sample_files();
    let mut dg = encode(&files, FecParams::default(), InterleaveParams::default());
    dg.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
    let (out, _) = receive(&dg, AssemblerConfig::default());
    assert_eq!(out.delivered, expected(&files));
}

#[test]
fn a_burst_of_depth_times_parity_less_one_datagrams_is_survived() {
    let files: Vec<_> = vec![("big".to_string(), content(1, 64 * 1400 * 128))];
    let il = InterleaveParams::default();
    let dg = encode(&files, FecParams::default(), il);
    let burst = il.depth * (usize::from(FecParams::default().parity_shards) - 1);
    for start in [0, 1000, dg.len() / 2] {
        let mut cut = dg.clone();
        cut.drain(start..start + burst);
        let (out, _) = receive(&cut, AssemblerConfig::default());
        assert_eq!(out.delivered, expected(&files), "burst at {start}");
    }
}

/// Default FEC with short shards, so that a stripe of 1,024 blocks fits a test.
fn short_shards() -> FecParams {
    FecParams {
        shard_len: 100,
        ..FecParams::default()
    }
}

#[test]
fn a_striped_object_hashed_by_the_caller_sends_the_same_datagrams_and_needs_its_digest() {
    let data = content(14, 64 * 100 * 70 + 5);
    let expected = encode_striped("big", &data, short_shards(), 6);
    let head = file_head("big", &data);
    let encode = |digest: Option<[u8; 32]>| {
        let mut out = Vec::new();
        let mut send = |b: Batch| {
            out.extend(b.iter().map(<[u8]>::to_vec));
            true
        };
        let mut sink = Sink::new(100_000, &mut send);
        let mut enc = StripedEncoder::new(SESSION, 0, &head, short_shards(), 6, 256)
            .unwrap()
            .hashed_by_caller();
        for chunk in data.chunks(enc.read_size() / 3 + 1) {
            enc.push(chunk, None, &mut sink).unwrap();
        }
        let ended = match digest {
            Some(d) => enc.finish_with_digest(d, false, None, &mut sink),
            None => enc.finish(false, None, &mut sink).map(|_| ()),
        };
        assert!(sink.finish(1));
        ended.map(|()| out)
    };
    let digest: [u8; 32] = sha2::Sha256::digest(&data).into();
    assert_eq!(encode(Some(digest)).unwrap(), expected);
    assert!(matches!(encode(None), Err(ObjectError::DigestNotGiven)));
}

#[test]
fn a_striped_object_survives_twenty_thousand_consecutive_losses_anywhere() {
    // Two and a half stripe groups of 1,024 blocks of 64 x 100 bytes: about 246,000 datagrams.
    let data = content(7, 64 * 100 * 1024 * 5 / 2 + 77);
    let files = vec![("big".to_string(), data.clone())];
    let dg = encode_striped("big", &data, short_shards(), 10);
    let burst = 20_000;
    // The first group's data (with the head's shards), a group boundary, the first group's
    // parity, the middle, and the very end (the last group's parity and the digest).
    let bounds = [
        0,
        40_000,
        65_536 - 10_000,
        65_536 + 10_000,
        dg.len() / 2,
        dg.len() - burst,
    ];
    for start in bounds {
        let mut cut = dg.clone();
        cut.drain(start..start + burst);
        let (out, _) = receive(&cut, AssemblerConfig::default());
        assert_eq!(out.delivered, expected(&files), "burst at {start}");
    }
}

#[test]
fn a_striped_object_loses_a_block_to_a_burst_longer_than_its_parity_and_says_so() {
    let data = content(8, 64 * 100 * 64 * 2);
    let dg = encode_striped("big", &data, short_shards(), 6);
    // 64 blocks per group, 22 parity each: 64 * 23 consecutive data shards cost each block 23
    // (one datagram in 17 of the first group is a shard of the head).
    let mut cut = dg.clone();
    cut.drain(1000..1000 + 64 * 23 * 17 / 16 + 64);
    let (out, _) = receive(&cut, AssemblerConfig::default());
    assert!(out.delivered.is_empty());
    assert_eq!(out.lost.len(), 1);
    assert_eq!(out.lost[0].1.as_deref(), Some("big"));
}

#[test]
fn memory_full_of_parity_for_blocks_that_cannot_complete_is_freed_while_nothing_decodes() {
    // A striped object whose first group loses 23 data shards of every block (one more than the
    // parity repairs): its parity fills the budget. Every later block lacks one data shard, so
    // it needs parity that no longer fits, and nothing decodes. The dead blocks must still be
    // found stale (their wait is counted in shards heard, not blocks decoded), so that the
    // object is reported lost while the sender is still sending, and the file after it crosses.
    let dead = content(12, 64 * 100 * 64 * 4);
    let alive = content(13, 64 * 100 * 3);
    let mut dg = encode_striped("dead", &dead, short_shards(), 6);
    let group = 64;
    dg.retain(|d| {
        !matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _))
            if h.block > 0 && (if h.block <= group { h.shard < 23 } else { h.shard == 0 }))
    });
    dg.extend(encode_as(
        SESSION,
        1,
        &[("alive".to_string(), alive.clone())],
        short_shards(),
        InterleaveParams::default(),
    ));
    let config = AssemblerConfig {
        max_pending_bytes: 200 << 10,
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, t0);
    let mut lost_at = None;
    let mut alive_done = false;
    for (i, d) in dg.iter().enumerate() {
        let _ = asm.handle_datagram(t0 + Duration::from_micros(i as u64), d);
        while let Some(ev) = asm.poll_event() {
            match ev {
                Event::Abandoned {
                    key,
                    reason: Abandon::Unrecoverable { waited, .. },
                    ..
                } => {
                    assert_eq!(key.object, 0);
                    assert!(waited >= 128 * 86, "{waited}");
                    lost_at.get_or_insert(i);
                }
                Event::Abandoned { key, reason, .. } => {
                    panic!("object {} lost at datagram {i}: {reason}", key.object)
                }
                Event::Complete { head, digest, .. } => {
                    assert_eq!(head.path, "alive");
                    assert_eq!(digest, <[u8; 32]>::from(sha2::Sha256::digest(&alive)));
                    alive_done = true;
                }
                _ => {}
            }
        }
        assert!(asm.held_bytes() <= 200 << 10);
    }
    assert!(lost_at.is_some(), "the dead object was never given up");
    assert!(alive_done, "the file after the dead object did not cross");
}

#[test]
fn a_striped_object_at_five_percent_loss_with_reordering_is_byte_identical() {
    let data = content(9, 64 * 1400 * 300 + 1234);
    let files = vec![("big".to_string(), data.clone())];
    let dg = encode_striped("big", &data, FecParams::default(), 7);
    let (out, _) = receive(
        &impair(&dg, 11, 0.05, 0.01, 0.02),
        AssemblerConfig::default(),
    );
    assert_eq!(out.delivered, expected(&files));
    assert!(out.lost.is_empty());
}

#[test]
fn heavy_loss_names_what_it_loses_and_delivers_nothing_wrong() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let (out, _) = receive(&impair(&dg, 3, 0.4, 0.0, 0.0), AssemblerConfig::default());
    for (path, data) in &out.delivered {
        assert_eq!(Some(data), expected(&files).get(path));
    }
    assert!(
        out.delivered.len() < files.len(),
        "40% loss should cost files"
    );
    assert_eq!(out.delivered.len() + out.lost.len(), files.len());
    for (key, path) in &out.lost {
        assert_eq!(
            path.as_deref(),
            Some(files[key.object as usize].0.as_str()),
            "lost object must be named"
        );
    }
}

#[test]
fn same_seed_same_outcome() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let a = receive(&impair(&dg, 11, 0.3, 0.05, 0.1), AssemblerConfig::default()).0;
    let b = receive(&impair(&dg, 11, 0.3, 0.05, 0.1), AssemblerConfig::default()).0;
    assert_eq!(a, b);
}

#[test]
fn wholly_lost_objects_are_reported_missing() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    // Drop every datagram of object 2.
    let kept: Vec<Vec<u8>> = dg
        .into_iter()
        .filter(|d| !matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _)) if h.object == 2))
        .collect();
    let (out, _) = receive(&kept, AssemblerConfig::default());
    assert_eq!(out.missing, vec![(2, 2)]);
    assert_eq!(out.delivered.len(), files.len() - 1);
}

#[test]
fn memory_bound_holds_under_a_flood_of_block_starts() {
    let files: Vec<_> = vec![("big".to_string(), content(1, 64 * 1400 * 40))];
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    // Only parity shards: no block ever decodes, every block stays pending.
    let parity_only: Vec<Vec<u8>> = dg
        .into_iter()
        .filter(|d| matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _)) if h.shard >= 64))
        .collect();
    let config = AssemblerConfig {
        max_pending_bytes: 1 << 20,
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, Instant::now());
    for d in &parity_only {
        let _ = asm.handle_datagram(t0, d);
        assert!(asm.held_bytes() <= 1 << 20);
    }
    assert!(asm.counters().over_budget > 0);
    asm.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(asm.pending_bytes(), 0);
    let lost = std::iter::from_fn(|| asm.poll_event())
        .filter(|e| {
            matches!(
                e,
                Event::Abandoned {
                    reason: Abandon::Timeout { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(lost, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any `m` or fewer erasures in every block decode.
    #[test]
    fn up_to_m_erasures_per_block_decode(
        len in 0usize..200_000,
        k in 1u8..=32,
        m in 1u8..=16,
        seed in any::<u64>(),
    ) {
        let fec = FecParams { data_shards: k, parity_shards: m, shard_len: 512 };
        let files = vec![("f".to_string(), content(seed, len))];
        let dg = encode(&files, fec, InterleaveParams { depth: 8, min_span: 0, stripe_bytes: 0 });
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut by_block: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, d) in dg.iter().enumerate() {
            if let Ok(wire::Datagram::Shard(h, _)) = wire::parse(d) {
                by_block.entry(h.block).or_default().push(i);
            }
        }
        let mut drop = vec![false; dg.len()];
        for idx in by_block.values_mut() {
            idx.shuffle(&mut rng);
            let erase = rng.random_range(0..=usize::from(m));
            for &i in idx.iter().take(erase) {
                drop[i] = true;
            }
        }
        let kept: Vec<Vec<u8>> = dg.iter().zip(&drop).filter(|(_, d)| !**d).map(|(x, _)| x.clone()).collect();
        let (out, _) = receive(&kept, AssemblerConfig::default());
        prop_assert_eq!(out.delivered, expected(&files));
    }

    /// Every datagram with one to three flipped bits is rejected, never decoded.
    #[test]
    fn corrupted_datagrams_are_rejected(
        which in any::<prop::sample::Index>(),
        bits in prop::collection::vec(any::<prop::sample::Index>(), 1..=3),
    ) {
        let files = vec![("f".to_string(), content(5, 5000))];
        let dg = encode(&files, FecParams::default(), InterleaveParams::default());
        let mut d = which.get(&dg).clone();
        let nbits = d.len() * 8;
        let mut flipped = std::collections::HashSet::new();
        for b in bits {
            let bit = b.index(nbits);
            if flipped.insert(bit) {
                d[bit / 8] ^= 1 << (bit % 8);
            }
        }
        let r = wire::parse(&d);
        prop_assert!(r.is_err(), "corrupt datagram accepted");
        if d[..4] == wire::MAGIC {
            prop_assert_eq!(r, Err(WireError::BadCrc));
        }
    }

    /// Datagrams with a valid CRC but arbitrary header fields (a forging or buggy sender) are
    /// rejected or absorbed without a panic, and state stays within its bounds.
    #[test]
    fn forged_headers_with_valid_crc_are_harmless(
        headers in prop::collection::vec(
            (prop_oneof![any::<u64>(), 0u64..8, Just(u64::MAX), Just(u64::MAX - 1)],
             prop_oneof![any::<u32>(), 0u32..4, Just(u32::MAX)],
             any::<u8>(), any::<u8>(), any::<u8>(),
             prop_oneof![0u16..=64, any::<u16>(), Just(u16::MAX)],
             any::<u16>(),
             prop_oneof![any::<u64>(), 0u64..100_000, Just(u64::MAX)]),
            1..300),
    ) {
        let config = AssemblerConfig { max_pending_bytes: 1 << 20, max_objects: 16, ..AssemblerConfig::default() };
        let mut asm = Assembler::new(config, Instant::now());
        let t0 = Instant::now();
        for (i, (object, block, shard, k, m, l, head_len, content_len)) in headers.into_iter().enumerate() {
            let h = wire::ShardHeader {
                session: (i % 3) as u64,
                object,
                block,
                shard,
                data_shards: k,
                parity_shards: m,
                shard_len: l,
                head_len,
                content_len,
                stripe: 0,
            };
            let mut d = Vec::new();
            h.emit(&vec![i as u8; usize::from(l)], &mut d);
            let _ = asm.handle_datagram(t0, &d);
            while asm.poll_event().is_some() {}
            prop_assert!(asm.held_bytes() <= 1 << 20);
            prop_assert!(asm.objects_in_progress() <= 16);
            prop_assert!(asm.counters().objects_lost < u64::MAX);
        }
        asm.handle_timeout(t0 + Duration::from_secs(60));
        prop_assert_eq!(asm.objects_in_progress(), 0);
        prop_assert_eq!(asm.pending_bytes(), 0);
    }

    /// Random bytes never crash the assembler nor grow its state.
    #[test]
    fn random_datagrams_are_harmless(blobs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1600), 1..200)) {
        let mut asm = Assembler::new(AssemblerConfig::default(), Instant::now());
        let t0 = Instant::now();
        for b in &blobs {
            prop_assert!(asm.handle_datagram(t0, b).is_err());
        }
        prop_assert_eq!(asm.objects_in_progress(), 0);
        prop_assert_eq!(asm.pending_bytes(), 0);
    }
}

/// Events of `asm` so far.
fn events(asm: &mut Assembler) -> Vec<Event> {
    std::iter::from_fn(|| asm.poll_event()).collect()
}

fn completes(evs: &[Event]) -> Vec<ObjectKey> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Complete { key, .. } => Some(*key),
            _ => None,
        })
        .collect()
}

#[test]
fn the_last_object_numbers_complete_once_and_lose_nothing() {
    let files = vec![("edge.bin".to_string(), content(3, 5000))];
    let il = InterleaveParams::default();
    let t0 = Instant::now();
    let mut asm = Assembler::new(AssemblerConfig::default(), t0);
    // u64::MAX - 1 is the highest object number; its datagrams, repeated, complete it once.
    let dg = encode_as(7, u64::MAX - 1, &files, FecParams::default(), il);
    for _ in 0..3 {
        for d in &dg {
            asm.handle_datagram(t0, d).unwrap();
        }
    }
    let evs = events(&mut asm);
    assert_eq!(completes(&evs).len(), 1, "{evs:?}");
    asm.handle_timeout(t0 + Duration::from_secs(3600));
    let evs = events(&mut asm);
    // The objects below it were heard of only through it: they are reported missing once, and
    // the count saturates instead of wrapping.
    let missing: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, Event::Missing { .. }))
        .collect();
    assert!(missing.len() <= 1, "{evs:?}");
    assert!(!evs.iter().any(|e| matches!(e, Event::Abandoned { .. })));
    assert_eq!(asm.pending_bytes(), 0);
    // u64::MAX itself is refused on the wire.
    let mut h = match wire::parse(&dg[0]).unwrap() {
        wire::Datagram::Shard(h, _) => h,
        _ => unreachable!(),
    };
    h.object = u64::MAX;
    let mut d = Vec::new();
    h.emit(&vec![0; usize::from(h.shard_len)], &mut d);
    assert!(matches!(
        asm.handle_datagram(t0, &d),
        Err(WireError::InvalidHeader(_))
    ));
}

#[test]
fn a_flood_of_new_sessions_does_not_evict_one_making_progress() {
    let files = vec![("big.bin".to_string(), content(9, 64 * 1400 * 30))];
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let config = AssemblerConfig {
        max_sessions: 4,
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, t0);
    let junk = encode_as(
        0,
        0,
        &[("junk".to_string(), content(1, 3000))],
        FecParams::default(),
        InterleaveParams::default(),
    );
    let mut delivered = 0;
    for (i, d) in dg.iter().enumerate() {
        let now = t0 + Duration::from_micros(i as u64);
        asm.handle_datagram(now, d).unwrap();
        // After every real datagram, ten from fresh sessions (a valid shard re-labelled).
        for j in 0..10u64 {
            let mut f = junk[1].clone();
            f[8..16].copy_from_slice(&(1_000_000 + i as u64 * 10 + j).to_be_bytes());
            let n = f.len() - 4;
            let crc = crc32fast::hash(&f[..n]);
            f[n..].copy_from_slice(&crc.to_be_bytes());
            let _ = asm.handle_datagram(now, &f);
        }
        delivered += completes(&events(&mut asm)).len();
        assert!(asm.sessions() <= 4);
    }
    assert_eq!(delivered, 1, "the real transfer was lost to the flood");
    assert!(asm.counters().refused_sessions > 0 || asm.counters().evicted_sessions > 0);
}

#[test]
fn no_session_takes_the_budget_from_another() {
    // Session A only ever sends parity of distinct blocks, so its blocks never decode and pile up.
    let big = vec![("a".to_string(), content(2, 64 * 1400 * 200))];
    let hog: Vec<Vec<u8>> = encode_as(
        1,
        0,
        &big,
        FecParams::default(),
        InterleaveParams::default(),
    )
    .into_iter()
    .filter(|d| matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _)) if h.shard >= 64))
    .collect();
    let files = vec![("b".to_string(), content(3, 64 * 1400 * 8))];
    let good = encode_as(
        2,
        0,
        &files,
        FecParams::default(),
        InterleaveParams::default(),
    );
    let config = AssemblerConfig {
        max_pending_bytes: 8 << 20,
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, t0);
    for d in &hog {
        let _ = asm.handle_datagram(t0, d);
    }
    for d in &good {
        asm.handle_datagram(t0, d).unwrap();
    }
    assert_eq!(completes(&events(&mut asm)).len(), 1);
    assert!(asm.held_bytes() <= 8 << 20);
}

#[test]
fn a_huge_heartbeat_interval_cannot_silence_the_alarm() {
    use checkvalve_common::link_state::LinkChange;
    let t0 = Instant::now();
    let mut asm = Assembler::new(AssemblerConfig::default(), t0);
    let hb = wire::Heartbeat {
        session: 5,
        seq: 1_000,
        datagrams_sent: 1,
        objects_sent: 0,
        interval_ms: u32::MAX,
    };
    asm.handle_datagram(t0, &hb.to_bytes()).unwrap();
    asm.handle_timeout(t0 + Duration::from_secs(181));
    let evs = events(&mut asm);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Link(LinkChange::Silent(_)))),
        "{evs:?}"
    );
}

#[test]
fn objects_before_the_first_heard_of_a_session_started_after_us_are_lost() {
    let files: Vec<_> = (0..4)
        .map(|i| (format!("f{i}"), content(i, 2000)))
        .collect();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let t0 = Instant::now();
    let mut asm = Assembler::new(AssemblerConfig::default(), t0);
    // The receiver has listened for a minute; the sender starts, its first two objects are lost.
    let t1 = t0 + Duration::from_secs(60);
    let hb = wire::Heartbeat {
        session: SESSION,
        seq: 2,
        datagrams_sent: 10,
        objects_sent: 4,
        interval_ms: 1000,
    };
    for d in dg
        .iter()
        .filter(|d| matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _)) if h.object >= 2))
    {
        asm.handle_datagram(t1, d).unwrap();
    }
    asm.handle_datagram(t1, &hb.to_bytes()).unwrap();
    asm.handle_timeout(t1 + Duration::from_secs(60));
    let evs = events(&mut asm);
    assert_eq!(completes(&evs).len(), 2);
    assert!(
        evs.iter().any(|e| matches!(
            e,
            Event::Missing {
                first: 0,
                last: 1,
                ..
            }
        )),
        "{evs:?}"
    );

    // A session that was already running when we started: nothing before it is claimed lost.
    let mut asm = Assembler::new(AssemblerConfig::default(), t0);
    let old = wire::Heartbeat { seq: 500, ..hb };
    asm.handle_datagram(t1, &old.to_bytes()).unwrap();
    for d in dg
        .iter()
        .filter(|d| matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _)) if h.object >= 2))
    {
        asm.handle_datagram(t1, d).unwrap();
    }
    asm.handle_timeout(t1 + Duration::from_secs(60));
    let evs = events(&mut asm);
    assert!(
        !evs.iter().any(|e| matches!(e, Event::Missing { .. })),
        "{evs:?}"
    );
}

#[test]
fn stopping_reports_every_object_in_progress() {
    let files: Vec<_> = (0..3)
        .map(|i| (format!("f{i}"), content(i, 200_000)))
        .collect();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let t0 = Instant::now();
    let mut asm = Assembler::new(AssemblerConfig::default(), t0);
    for d in &dg[..dg.len() / 2] {
        asm.handle_datagram(t0, d).unwrap();
    }
    let mut evs = events(&mut asm);
    asm.shutdown();
    evs.extend(events(&mut asm));
    let stopped = evs
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Abandoned {
                    reason: Abandon::ReceiverStopped,
                    ..
                }
            )
        })
        .count();
    assert_eq!(stopped + completes(&evs).len(), 3, "{evs:?}");
    assert!(stopped > 0);
    assert_eq!(asm.objects_in_progress(), 0);
    assert_eq!(asm.pending_bytes(), 0);
}

#[test]
fn when_memory_runs_short_an_object_that_cannot_complete_makes_room_for_one_that_can() {
    // Object 0 loses every shard of its first block but one: it can never complete. Object 1
    // follows in the same session, in a budget that cannot hold both.
    let files = vec![
        ("dead".to_string(), content(1, 64 * 1400 * 400)),
        ("alive".to_string(), content(2, 64 * 1400 * 200)),
    ];
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let kept: Vec<Vec<u8>> = dg
        .into_iter()
        .filter(|d| {
            !matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _))
                if h.object == 0 && h.block % 2 == 1 && h.shard > 0)
        })
        .collect();
    let config = AssemblerConfig {
        max_pending_bytes: 24 << 20,
        ..AssemblerConfig::default()
    };
    let (out, asm) = receive(&kept, config);
    assert!(out.delivered.contains_key("alive"), "{:?}", out.lost);
    assert!(!out.delivered.contains_key("dead"));
    assert!(asm.held_bytes() <= 24 << 20);
}

/// The announcement datagrams of `files` (objects `0..`), every repetition, in the order sent.
fn announcements(files: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    let t0 = Instant::now();
    let mut a = checkvalve_common::announce::Announcer::new(SESSION, 1448);
    for (i, (path, data)) in files.iter().enumerate() {
        a.push(
            wire::Announced {
                object: i as u64,
                size: data.len() as u64,
                digest: sha2::Sha256::digest(data).into(),
                path: path.clone(),
            },
            t0,
        );
    }
    let mut out = Vec::new();
    while let Some(due) = a.next_due() {
        out.extend(a.poll(due));
    }
    out
}

#[test]
fn announced_names_survive_the_loss_of_a_head_and_of_a_whole_object() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    // Nothing of object 2 arrives, nor the head block of object 3; every announcement crosses
    // the same 40 % loss as a lone datagram would.
    let mut kept: Vec<Vec<u8>> = dg
        .into_iter()
        .filter(|d| match wire::parse(d) {
            Ok(wire::Datagram::Shard(h, _)) => h.object != 2 && !(h.object == 3 && h.block == 0),
            _ => true,
        })
        .collect();
    let sent = announcements(&files);
    assert_eq!(sent.len(), checkvalve_common::announce::REPEATS);
    kept.extend(impair(&sent, 5, 0.4, 0.0, 0.0));
    let (out, _) = receive(&kept, AssemblerConfig::default());
    assert!(out.missing.is_empty(), "{:?}", out.missing);
    let lost: Vec<(u64, Option<&str>)> = out
        .lost
        .iter()
        .map(|(k, p)| (k.object, p.as_deref()))
        .collect();
    assert_eq!(
        lost,
        vec![
            (3, Some(files[3].0.as_str())),
            (2, Some(files[2].0.as_str()))
        ],
        "both named by the announcements"
    );
    assert_eq!(out.delivered.len(), files.len() - 2);
}

#[test]
fn without_announcements_the_same_losses_go_unnamed() {
    let files = sample_files();
    let dg = encode(&files, FecParams::default(), InterleaveParams::default());
    let kept: Vec<Vec<u8>> = dg
        .into_iter()
        .filter(|d| match wire::parse(d) {
            Ok(wire::Datagram::Shard(h, _)) => h.object != 2 && !(h.object == 3 && h.block == 0),
            _ => true,
        })
        .collect();
    let (out, _) = receive(&kept, AssemblerConfig::default());
    assert_eq!(out.missing, vec![(2, 2)]);
    assert_eq!(out.lost.len(), 1);
    assert_eq!(out.lost[0].1, None);
}

#[test]
fn malformed_announcements_are_rejected_and_change_nothing() {
    let files = sample_files();
    let good = announcements(&files[..2]).remove(0);
    let fix_crc = |mut d: Vec<u8>| {
        let n = d.len() - 4;
        let crc = crc32fast::hash(&d[..n]);
        d[n..].copy_from_slice(&crc.to_be_bytes());
        d
    };
    let mut count_high = good.clone();
    count_high[17] += 1;
    let mut reserved = good.clone();
    reserved[19] = 1;
    let mut bad_utf8 = good.clone();
    bad_utf8[20 + 50] = 0xff;
    let mut long_path = good.clone();
    long_path[20 + 48] = 0x40;
    for (what, d) in [
        ("count beyond the entries", count_high),
        ("reserved bytes", reserved),
        ("a path that is not UTF-8", bad_utf8),
        ("a path running past the end", long_path),
    ] {
        assert!(
            matches!(
                wire::parse(&fix_crc(d)),
                Err(WireError::InvalidHeader(_) | WireError::TooShort(_))
            ),
            "{what} accepted"
        );
    }
    let parsed = match wire::parse(&good) {
        Ok(wire::Datagram::Announce(a)) => a.entries().count(),
        other => panic!("{other:?}"),
    };
    assert_eq!(parsed, 2);
}

/// 16 forged sessions decoding a 1-byte file every two seconds keep the session table full: a
/// spool service idle (heartbeats only) is never evicted while its heartbeats arrive, and once
/// the forged sessions fall silent a new session is admitted within the silence threshold.
#[test]
fn a_heartbeating_sender_is_never_evicted_and_silent_forgers_give_way() {
    let config = AssemblerConfig {
        max_sessions: 16,
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, t0);
    let idle_sender = 0x7777;
    let heartbeat = |seq: u64| {
        wire::Heartbeat {
            session: idle_sender,
            seq,
            datagrams_sent: seq,
            objects_sent: 0,
            interval_ms: 1000,
        }
        .to_bytes()
    };
    let forged = |session: u64, object: u64| {
        encode_as(
            session,
            object,
            &[(format!("f/{session}-{object}"), vec![1u8])],
            FecParams::default(),
            InterleaveParams {
                min_span: 0,
                ..InterleaveParams::default()
            },
        )
    };
    asm.handle_datagram(t0, &heartbeat(0)).unwrap();
    let mut evicted_sender = false;
    for second in 0..30u64 {
        let now = t0 + Duration::from_secs(second);
        asm.handle_datagram(now, &heartbeat(second)).unwrap();
        // Every two seconds, each of 16 forged sessions completes a tiny file.
        if second % 2 == 0 {
            for f in 0..16u64 {
                for d in forged(0x1000 + f, second) {
                    let _ = asm.handle_datagram(now, &d);
                }
            }
        }
        asm.handle_timeout(now);
        for ev in events(&mut asm) {
            if let Event::Abandoned { key, reason, .. } = ev
                && key.session == idle_sender
            {
                evicted_sender |= matches!(reason, Abandon::SessionEvicted);
            }
        }
        assert!(
            asm.session_stats().iter().any(|s| s.session == idle_sender),
            "the heartbeating sender was evicted at {second} s"
        );
    }
    assert!(!evicted_sender);
    assert!(asm.counters().refused_sessions > 0, "the table was full");
    // The forged sessions stop; a new sender two seconds later is admitted.
    let later = t0 + Duration::from_secs(32);
    asm.handle_datagram(later, &heartbeat(32)).unwrap();
    let newcomer = forged(0x9999, 0);
    for d in &newcomer {
        asm.handle_datagram(later, d).unwrap();
    }
    assert!(
        asm.session_stats().iter().any(|s| s.session == 0x9999),
        "a new session after the forgers fell silent"
    );
}

/// One forged session flooding shards of blocks that never complete, from before a real 20 MB
/// striped file starts and at ten times its rate while it crosses, in the budget a receiver of
/// the default `--max-pending` gives its assembler: the file completes (§7's fair share: the
/// forger's blocks above its share give way, even to the file's first shard, when the forger
/// had filled the budget before it).
#[test]
fn a_greedy_session_flooding_beside_a_striped_transfer_takes_only_its_share() {
    let data = content(4, 20 << 20);
    let good = encode_striped("big.bin", &data, FecParams::default(), 8);
    let huge = vec![("hog".to_string(), content(5, 64 * 1400 * 400))];
    let hog: Vec<Vec<u8>> = encode_as(
        1,
        0,
        &huge,
        FecParams::default(),
        InterleaveParams::default(),
    )
    .into_iter()
    .filter(|d| matches!(wire::parse(d), Ok(wire::Datagram::Shard(h, _)) if h.shard >= 64))
    .collect();
    let config = AssemblerConfig {
        max_pending_bytes: 27 << 20,
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, t0);
    // Half the flood opens a new object with every shard (block 0 of objects never heard of).
    let template = hog[0].clone();
    let mut fresh = 1_000u64..;
    let mut forged_object = move || {
        let mut d = template.clone();
        d[16..24].copy_from_slice(&fresh.next().expect("endless").to_be_bytes());
        let n = d.len() - 4;
        let crc = crc32fast::hash(&d[..n]);
        d[n..].copy_from_slice(&crc.to_be_bytes());
        d
    };
    let mut hog = hog.iter().cycle();
    let mut done = 0;
    let mut lost = Vec::new();
    // The flood fills the budget before the file starts: its first shard must still get room.
    for _ in 0..2_000 {
        let _ = asm.handle_datagram(t0, &forged_object());
        let _ = asm.handle_datagram(t0, hog.next().expect("cycle"));
    }
    assert!(asm.held_bytes() > 26 << 20, "the flood filled the budget");
    for (i, d) in good.iter().enumerate() {
        let now = t0 + Duration::from_micros(i as u64 * 10);
        asm.handle_datagram(now, d).unwrap();
        for j in 0..10 {
            if j % 2 == 0 {
                let _ = asm.handle_datagram(now, hog.next().expect("cycle"));
            } else {
                let _ = asm.handle_datagram(now, &forged_object());
            }
        }
        for ev in events(&mut asm) {
            match ev {
                Event::Complete { key, .. } if key.session == SESSION => done += 1,
                Event::Abandoned { key, reason, .. } if key.session == SESSION => lost.push(reason),
                _ => {}
            }
        }
        assert!(asm.held_bytes() <= 27 << 20);
    }
    assert_eq!((done, lost), (1, vec![]), "counters: {:?}", asm.counters());
}
