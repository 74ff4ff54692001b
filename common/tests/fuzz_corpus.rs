//! The fuzzers' corpora (`fuzz/corpus/*`, seeded from the test vectors, plus every input a fuzzer
//! ever found interesting or failing) replayed as ordinary tests.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        run(&data);
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}

#[test]
fn datagram_corpus() {
    replay("datagram", checkvalve_common::fuzz::datagram);
}

#[test]
fn metadata_corpus() {
    replay("metadata", checkvalve_common::fuzz::metadata);
}

#[test]
fn assembler_corpus() {
    replay("assembler", checkvalve_common::fuzz::assembler);
}
