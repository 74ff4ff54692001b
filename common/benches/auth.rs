//! Throughput of authenticating datagrams on one core: sealing (sender) and opening (receiver) a
//! 1,400-byte shard datagram, with and without encryption.
//!
//! `cargo bench -p checkvalve-common --bench auth`

#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use checkvalve_common::auth::{Opener, Persisted, Psk, Sealer, session_id};
use checkvalve_common::wire::ShardHeader;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Datagrams per measured batch: enough that one batch's set-up is small beside its work.
const BATCH: u64 = 10_000;

fn datagram() -> Vec<u8> {
    let h = ShardHeader {
        session: session_id(1, 2),
        object: 1,
        block: 0,
        shard: 0,
        data_shards: 64,
        parity_shards: 22,
        shard_len: 1400,
        head_len: 10,
        content_len: 1 << 30,
        stripe: 0,
    };
    let mut plain = Vec::new();
    h.emit(&[0x5a; 1400], &mut plain);
    plain
}

fn auth(c: &mut Criterion) {
    let psk = Psk {
        id: 1,
        key: [7; 32],
    };
    let session = session_id(1, 2);
    let plain = datagram();
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Bytes(plain.len() as u64 * BATCH));
    for encrypt in [false, true] {
        let name = if encrypt {
            "encrypted"
        } else {
            "authenticated"
        };
        let sealer = Sealer::new(&psk, session, encrypt);
        g.bench_function(format!("seal {name}"), |b| {
            b.iter_batched(
                || vec![plain.clone(); BATCH as usize],
                |mut all| {
                    for d in &mut all {
                        sealer.seal(d, 0);
                    }
                    all
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function(format!("open {name}"), |b| {
            b.iter_batched(
                || {
                    // Each datagram sealed once, and a fresh opener: a replay would be refused.
                    let s = Sealer::new(&psk, session, encrypt);
                    let sealed: Vec<Vec<u8>> = (0..BATCH)
                        .map(|_| {
                            let mut d = plain.clone();
                            s.seal(&mut d, 0);
                            d
                        })
                        .collect();
                    (
                        Opener::new(vec![psk.clone()], true, &Persisted::default()),
                        sealed,
                    )
                },
                |(mut o, mut sealed)| {
                    for d in &mut sealed {
                        o.open(d).expect("opens");
                    }
                    sealed
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = auth
}
criterion_main!(benches);
