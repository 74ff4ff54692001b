//! Throughput of sealing and opening (run: cargo test --release -p checkvalve-common --test
//! auth_speed -- --ignored --nocapture).

use std::time::Instant;

use checkvalve_common::auth::{Opener, Persisted, Psk, Sealer, session_id};
use checkvalve_common::wire::ShardHeader;

#[test]
#[ignore = "a measurement, not a test"]
fn seal_and_open_throughput() {
    let psk = Psk {
        id: 1,
        key: [7; 32],
    };
    let session = session_id(1, 2);
    let h = ShardHeader {
        session,
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
    for encrypt in [false, true] {
        let s = Sealer::new(&psk, session, encrypt);
        let n = 200_000;
        let mut sealed = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            let mut d = plain.clone();
            s.seal(&mut d, 0);
            sealed.push(d);
        }
        let seal = t.elapsed().as_secs_f64();
        let mut o = Opener::new(vec![psk.clone()], true, &Persisted::default());
        let t = Instant::now();
        for d in &mut sealed {
            o.open(d).unwrap();
        }
        let open = t.elapsed().as_secs_f64();
        let bytes = (n * plain.len()) as f64;
        println!(
            "encrypt={encrypt}: seal {:.0} MB/s, open {:.0} MB/s",
            bytes / seal / 1e6,
            bytes / open / 1e6
        );
    }
}
