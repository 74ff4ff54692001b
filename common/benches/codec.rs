//! Throughput of the protocol core on one core: sender-side encoding and receiver-side reassembly.
//!
//! `cargo bench -p checkvalve-common`

#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use std::time::Instant;

use checkvalve_common::assembler::{Assembler, AssemblerConfig, Event};
use checkvalve_common::interleave::{InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 16 << 20;

fn encode(data: &[u8]) -> Vec<Vec<u8>> {
    let head = Head {
        path: "bench.bin".into(),
        size: data.len() as u64,
        mtime_secs: 0,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    };
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
        b.iter(|| {
            let mut asm = Assembler::new(AssemblerConfig::default(), Instant::now());
            let now = Instant::now();
            let mut done = false;
            for d in &lossy {
                let _ = asm.handle_datagram(now, d);
                while let Some(ev) = asm.poll_event() {
                    done |= matches!(ev, Event::Complete { .. });
                }
            }
            assert!(done);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
