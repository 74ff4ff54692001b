//! Throughput of the protocol core on one core: sender-side encoding and receiver-side reassembly.
//!
//! `cargo bench -p checkvalve-common`

#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use std::time::Instant;

use checkvalve_common::assembler::{Assembler, AssemblerConfig, Event};
use checkvalve_common::interleave::{Batch, InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder};
use checkvalve_common::stripe::{Sink, StripedEncoder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 16 << 20;

fn head(len: usize) -> Head {
    Head {
        path: "bench.bin".into(),
        size: len as u64,
        mtime_secs: 0,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    }
}

fn encode(data: &[u8]) -> Vec<Vec<u8>> {
    let head = head(data.len());
    let (mut enc, hb) = ObjectEncoder::new(1, 0, &head, FecParams::default()).unwrap();
    let mut inter = Interleaver::new(InterleaveParams::default());
    let mut blocks = vec![hb];
    let mut out = Vec::new();
    for chunk in data.chunks(enc.block_stride()) {
        enc.push(chunk, &mut blocks).unwrap();
        for b in blocks.drain(..) {
            if let Some(batch) = inter.push(b).unwrap() {
                out.extend(batch.iter().map(<[u8]>::to_vec));
            }
        }
    }
    enc.finish(&mut blocks).unwrap();
    for b in blocks.drain(..) {
        if let Some(batch) = inter.push(b).unwrap() {
            out.extend(batch.iter().map(<[u8]>::to_vec));
        }
    }
    if let Some(batch) = inter.flush().unwrap() {
        out.extend(batch.iter().map(<[u8]>::to_vec));
    }
    out
}

/// The same data as one striped object (one stripe group of 187 blocks).
fn encode_striped(data: &[u8]) -> Vec<Vec<u8>> {
    let head = head(data.len());
    let mut enc = StripedEncoder::new(1, 0, &head, FecParams::default(), 10, 256).unwrap();
    let mut out = Vec::new();
    let mut send = |b: Batch| {
        out.extend(b.iter().map(<[u8]>::to_vec));
        true
    };
    let mut sink = Sink::new(1 << 20, &mut send);
    for chunk in data.chunks(enc.read_size()) {
        enc.push(chunk, None, &mut sink).unwrap();
    }
    enc.finish(false, None, &mut sink).unwrap();
    assert!(sink.finish(1));
    out
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut data = vec![0u8; SIZE];
    rng.fill(&mut data[..]);
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("encode 64:22 (hash + parity + interleave)", |b| {
        b.iter(|| encode(&data))
    });
    let datagrams = encode(&data);
    let lossy: Vec<Vec<u8>> = datagrams
        .iter()
        .filter(|_| !rng.random_bool(0.05))
        .cloned()
        .collect();
    g.bench_function("reassemble 64:22 at 5% loss (parse + decode)", |b| {
        b.iter(|| reassemble(&lossy))
    });
    g.bench_function("encode 64:22 striped (hash + parity in file order)", |b| {
        b.iter(|| encode_striped(&data))
    });
    let lossy: Vec<Vec<u8>> = encode_striped(&data)
        .into_iter()
        .filter(|_| !rng.random_bool(0.05))
        .collect();
    g.bench_function(
        "reassemble 64:22 striped at 5% loss (parse, write-out; rebuilds are the writer's)",
        |b| b.iter(|| reassemble(&lossy)),
    );
    g.finish();
}

fn reassemble(datagrams: &[Vec<u8>]) {
    let mut asm = Assembler::new(AssemblerConfig::default(), Instant::now());
    let now = Instant::now();
    let mut done = false;
    for d in datagrams {
        let _ = asm.handle_datagram(now, d);
        while let Some(ev) = asm.poll_event() {
            done |= matches!(ev, Event::Complete { .. });
        }
    }
    assert!(done);
}

/// The Reed-Solomon codec alone, on one core: parity of full 64:22 blocks, and the decode of a
/// block that lost 22 data shards (the most it can), with the same erasures each time and with new
/// ones each time (a matrix inversion per block).
fn fec(c: &mut Criterion) {
    use checkvalve_common::fec::Fec;
    const K: usize = 64;
    const M: usize = 22;
    const L: usize = 1400;
    const BLOCKS: usize = 64;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut data = vec![0u8; K * L * BLOCKS];
    rng.fill(&mut data[..]);
    let mut fec = Fec::default();
    let mut g = c.benchmark_group("fec");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("encode 64:22 x 1400", |b| {
        b.iter(|| {
            for block in data.chunks(K * L) {
                fec.encode(block, L, M).unwrap();
            }
        })
    });
    let coded: Vec<Vec<u8>> = data
        .chunks(K * L)
        .map(|block| {
            let mut all = block.to_vec();
            all.extend(fec.encode(block, L, M).unwrap());
            all
        })
        .collect();
    let patterns: Vec<Vec<bool>> = (0..BLOCKS)
        .map(|_| {
            let mut present = vec![true; K + M];
            let mut lost = 0;
            while lost < M {
                let i = rng.random_range(0..K);
                if present[i] {
                    present[i] = false;
                    lost += 1;
                }
            }
            present
        })
        .collect();
    for (name, varied) in [
        ("decode 22 erasures, same pattern", false),
        ("decode 22 erasures, new pattern each block", true),
    ] {
        let mut bufs = coded.clone();
        g.bench_function(name, |b| {
            b.iter(|| {
                for (i, buf) in bufs.iter_mut().enumerate() {
                    let present = &patterns[if varied { i } else { 0 }];
                    fec.reconstruct(K, buf, L, present).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, fec);
criterion_main!(benches);
