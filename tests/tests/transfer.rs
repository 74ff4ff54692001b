//! A folder crosses a lossy one-way link: the real sender, simulator and receiver over loopback UDP.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use checkvalve_tests::{Rig, digest_tree, make_tree};

const RATE: &str = "400M";

/// Sends `tree` through a simulator configured with `sim`, and checks the output byte for byte.
fn assert_identical_through(sim: &[&str]) {
    let mut rig = Rig::start(Some(sim), &[]);
    let src = rig.dir.path().join("src");
    let tree = make_tree(&src, "exports", 300, 64 << 20, 42);
    let expected = digest_tree(&src);
    let status = rig.send(&[&tree], &["--rate", RATE], Duration::from_secs(120));
    assert!(status.success(), "sender failed: {status}");
    let outcome = rig.settle(expected.len(), Duration::from_secs(60));
    let counters = rig.stop_sim();
    let got = digest_tree(&rig.out);
    let got: Vec<_> = got
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "files delivered: {}, lost: {:?}\nsim: {counters}\n{}",
        outcome.delivered.len(),
        outcome.lost_named,
        checkvalve_tests::tail(&rig.receiver.log)
    );
    assert!(got == expected, "delivered content differs from the source");
    assert!(outcome.lost_named.is_empty() && outcome.lost_unnamed == 0);
    assert!(rig.receiver.stop().success());
    eprintln!("sim counters: {counters}");
    let log = rig.receiver.log_text();
    eprintln!(
        "{}",
        log.lines().rfind(|l| l.contains(" stats ")).unwrap_or("")
    );
}

#[test]
fn clean_link_delivers_a_tree_byte_identical() {
    assert_identical_through(&[]);
}

#[test]
fn five_percent_random_loss_delivers_a_tree_byte_identical() {
    assert_identical_through(&["--loss", "5%", "--seed", "5"]);
}

#[test]
fn two_percent_bursty_loss_delivers_a_tree_byte_identical() {
    assert_identical_through(&["--loss", "2%", "--burst", "10", "--seed", "6"]);
}

#[test]
fn reordering_duplication_and_corruption_are_absorbed() {
    assert_identical_through(&[
        "--loss",
        "1%",
        "--reorder",
        "5%",
        "--duplicate",
        "2%",
        "--corrupt",
        "1%",
        "--seed",
        "8",
    ]);
}

#[test]
fn forty_percent_loss_publishes_nothing_wrong_and_names_every_loss() {
    let mut rig = Rig::start(
        Some(&["--loss", "40%", "--seed", "40"]),
        &["--object-timeout", "2s"],
    );
    let src = rig.dir.path().join("src");
    let tree = make_tree(&src, "exports", 60, 4 << 20, 7);
    let expected: BTreeMap<String, [u8; 32]> = digest_tree(&src).into_iter().collect();
    let status = rig.send(&[&tree], &["--rate", RATE], Duration::from_secs(120));
    assert!(status.success(), "sender failed: {status}");
    let outcome = rig.settle(expected.len(), Duration::from_secs(60));
    rig.stop_sim();
    assert!(rig.receiver.stop().success());

    // Nothing partial or unverified under a final name.
    let got: BTreeMap<String, [u8; 32]> = digest_tree(&rig.out)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect();
    for (path, digest) in &got {
        assert_eq!(
            expected.get(path),
            Some(digest),
            "{path} differs from its source"
        );
    }
    let tmp = rig.out.join(".checkvalve/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "temporary files left behind"
    );

    // Every file is either delivered or named as lost.
    assert!(
        got.len() < expected.len(),
        "40% loss with default FEC must lose the larger files"
    );
    assert_eq!(outcome.lost_unnamed, 0, "a loss without a name");
    for path in expected.keys() {
        let delivered = got.contains_key(path);
        let named = outcome.lost_named.iter().any(|l| l == path);
        assert!(
            delivered ^ named,
            "{path}: delivered={delivered} named_lost={named}"
        );
    }
}

#[test]
fn single_file_lands_at_the_top_of_the_output() {
    let rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("src");
    checkvalve_tests::write_file(&src.join("a.csv"), 5000, 1);
    let status = rig.send(&[&src.join("a.csv")], &[], Duration::from_secs(60));
    assert!(status.success());
    rig.settle(1, Duration::from_secs(30));
    assert_eq!(
        std::fs::read(rig.out.join("a.csv")).expect("a.csv delivered"),
        std::fs::read(src.join("a.csv")).expect("source")
    );
}

#[test]
fn a_symlink_planted_in_the_output_is_never_followed() {
    let rig = Rig::start(None, &[]);
    let outside = rig.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::create_dir_all(&rig.out).expect("mkdir");
    std::os::unix::fs::symlink(&outside, rig.out.join("evil")).expect("symlink");
    let src = rig.dir.path().join("src");
    checkvalve_tests::write_file(&src.join("evil/owned.txt"), 10, 1);
    checkvalve_tests::write_file(&src.join("fine/ok.txt"), 10, 2);
    let paths: [&Path; 2] = [&src.join("evil"), &src.join("fine")];
    assert!(rig.send(&paths, &[], Duration::from_secs(60)).success());
    let outcome = rig.settle(2, Duration::from_secs(30));
    assert!(rig.out.join("fine/ok.txt").exists());
    assert!(
        !outside.join("owned.txt").exists(),
        "wrote through a symlink"
    );
    assert!(
        outcome.lost_named.iter().any(|p| p == "evil/owned.txt"),
        "{outcome:?}"
    );
}

/// With no rate limit the sender goes as fast as it can, on the same cores as the receiver: the
/// receiver must keep up, or shed only what the parity repairs.
#[test]
fn an_unthrottled_64_mib_file_arrives_intact() {
    let mut rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("src");
    let tree = src.join("unthrottled");
    checkvalve_tests::write_file(&tree.join("historian.bin"), 64 << 20, 64);
    let expected = digest_tree(&src);
    let status = rig.send(&[&tree], &["--rate", "max"], Duration::from_secs(120));
    assert!(status.success(), "sender failed: {status}");
    let outcome = rig.settle(1, Duration::from_secs(60));
    let log = rig.receiver.log_text();
    assert_eq!(
        outcome.delivered.len(),
        1,
        "lost: {:?} {}\n{}",
        outcome.lost_named,
        outcome.lost_unnamed,
        checkvalve_tests::tail(&rig.receiver.log)
    );
    let got: Vec<_> = digest_tree(&rig.out)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect();
    assert_eq!(got, expected, "delivered content differs from the source");
    // The receiver allocates a large file ahead of its writes: nothing of that may outlive them.
    let published = std::fs::metadata(rig.out.join("unthrottled/historian.bin")).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&published) * 512 <= (64 << 20) + (1 << 20),
        "{} bytes allocated for 64 MiB",
        std::os::unix::fs::MetadataExt::blocks(&published) * 512
    );
    assert!(rig.receiver.stop().success());
    eprintln!(
        "{}",
        log.lines().rfind(|l| l.contains(" stats ")).unwrap_or("")
    );
}

/// At 40 % independent loss, for several seeds, a tree of about 200 files: every file is
/// delivered or named lost, in the manifest, the log and the report; none goes unnamed. Heads
/// (and whole small objects) are lost at this rate; the sender's announcements (the name, size
/// and digest of each object, repeated over seconds) name them.
#[test]
fn at_forty_percent_loss_every_lost_file_is_named_in_log_manifest_and_report() {
    for seed in [1u64, 2, 3] {
        let mut rig = Rig::start(Some(&["--loss", "40%", "--seed", &seed.to_string()]), &[]);
        let src = rig.dir.path().join("src");
        let tree = make_tree(&src, "heavy", 190, 1 << 20, 100 + seed);
        let expected: BTreeMap<String, [u8; 32]> = digest_tree(&src).into_iter().collect();
        let status = rig.send(&[&tree], &["--rate", "100M"], Duration::from_secs(120));
        assert!(status.success(), "sender failed: {status}");
        let outcome = rig.settle(expected.len(), Duration::from_secs(60));
        rig.stop_sim();
        assert!(rig.receiver.stop().success());
        assert_eq!(
            outcome.lost_unnamed, 0,
            "seed {seed}: losses without a name: {outcome:?}"
        );
        assert!(
            !outcome.lost_named.is_empty(),
            "seed {seed}: 40 % loss lost nothing?"
        );
        for path in expected.keys() {
            let delivered = outcome.delivered.contains(path);
            let named = outcome.lost_named.contains(path);
            assert!(
                delivered ^ named,
                "seed {seed}: {path}: delivered={delivered} named_lost={named}"
            );
        }
        let log = rig.receiver.log_text();
        let report = std::process::Command::new(checkvalve_tests::bin("checkvalve-receive"))
            .args(["report", "--out", &rig.out.display().to_string()])
            .output()
            .expect("report");
        let report = String::from_utf8_lossy(&report.stdout);
        for path in &outcome.lost_named {
            assert!(
                log.contains(&format!("path={path} ")),
                "seed {seed}: {path} lost but not named in the log"
            );
            assert!(
                report.contains(path.as_str()),
                "seed {seed}: {path} lost but not named in the report:\n{report}"
            );
        }
        eprintln!(
            "seed {seed}: {} delivered, {} lost, all named",
            outcome.delivered.len(),
            outcome.lost_named.len()
        );
    }
}
