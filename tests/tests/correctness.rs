//! Never wrong, never silent: files that change under the sender, sender restarts, concurrent
//! senders, the same path from two sessions, and a second receiver on one state folder.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, Rig, Status, bin, digest_tree, make_tree, write_file};
use sha2::{Digest, Sha256};

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Published files (the state folder left out) with their digests.
fn published(out: &Path) -> Vec<(String, [u8; 32])> {
    digest_tree(out)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect()
}

#[test]
fn a_file_appended_while_it_is_sent_is_never_published_mixed() {
    let rig = Rig::start(None, &["--object-timeout", "2s"]);
    let src = rig.dir.path().join("src");
    let path = src.join("growing/historian.log");
    write_file(&path, 48 << 20, 11);
    // The sender reads a few groups ahead of the link: at 80 Mbit/s, reading 48 MiB takes more
    // than two seconds, so the appends land while the file is being read.
    let mut sender = rig.start_sender("sender", &[&src.join("growing")], &["--rate", "80M"]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    for i in 0..10u8 {
        std::thread::sleep(Duration::from_millis(100));
        f.write_all(&[i; 4096]).expect("append");
    }
    drop(f);
    let status = sender.wait(Duration::from_secs(120));
    let log = sender.log_text();
    assert!(
        log.contains("while being read"),
        "the change went unnoticed:\n{log}"
    );
    let final_digest: [u8; 32] = Sha256::digest(std::fs::read(&path).expect("source")).into();
    let outcome = rig.settle(2, Duration::from_secs(30));
    // Whatever was published is the whole, final file, verified as such.
    for (p, d) in published(&rig.out) {
        assert_eq!(p, "growing/historian.log");
        assert_eq!(
            d, final_digest,
            "published content is not the file as it ended"
        );
    }
    for r in outcome
        .records
        .iter()
        .filter(|r| r.status == Status::Delivered)
    {
        assert_eq!(r.sha256, Some(hex(&final_digest)));
    }
    if status.success() {
        assert_eq!(outcome.delivered, ["growing/historian.log"], "{outcome:?}");
    } else {
        assert!(outcome.delivered.is_empty(), "{outcome:?}");
    }
    // The attempts cut short were never verifiable: the receiver names them lost.
    assert!(!outcome.lost_named.is_empty(), "{outcome:?}");
}

#[test]
fn a_sender_killed_mid_tree_and_restarted_delivers_everything() {
    let rig = Rig::start(None, &["--object-timeout", "2s"]);
    let src = rig.dir.path().join("src");
    let tree = make_tree(&src, "exports", 80, 4 << 20, 21);
    let expected = digest_tree(&src);
    let mut first = rig.start_sender("sender-1", &[&tree], &["--rate", "40M"]);
    // Kill it once something has been delivered, in the middle of the tree.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.outcome().delivered.len() < 10 {
        assert!(Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = first.pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = first.wait(Duration::from_secs(10));
    let before = rig.outcome();
    assert!(
        before.delivered.len() < expected.len(),
        "the kill came too late"
    );
    assert!(
        rig.send(&[&tree], &["--rate", "400M"], Duration::from_secs(120))
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while published(&rig.out).len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        published(&rig.out) == expected,
        "the share differs from the source"
    );
    // Let the cut-off objects of the first run time out: each gets exactly one record.
    std::thread::sleep(Duration::from_secs(4));
    let outcome = rig.outcome();
    for (path, _) in &expected {
        assert!(
            outcome.delivered.contains(path),
            "{path} has no delivered record"
        );
    }
    let log = rig.receiver.log_text();
    assert_eq!(log.matches("new sender session").count(), 2, "{log}");
}

#[test]
fn two_senders_at_once_both_arrive_whole() {
    let rig = Rig::start(Some(&["--loss", "2%", "--seed", "3"]), &[]);
    let src = rig.dir.path().join("src");
    let a = make_tree(&src, "plant-a", 40, 2 << 20, 31);
    let b = make_tree(&src, "plant-b", 40, 2 << 20, 32);
    let expected = digest_tree(&src);
    let mut sa = rig.start_sender("sender-a", &[&a], &["--rate", "150M"]);
    let mut sb = rig.start_sender("sender-b", &[&b], &["--rate", "150M"]);
    assert!(sa.wait(Duration::from_secs(120)).success());
    assert!(sb.wait(Duration::from_secs(120)).success());
    let outcome = rig.settle(expected.len(), Duration::from_secs(60));
    assert_eq!(outcome.delivered.len(), expected.len(), "{outcome:?}");
    assert!(published(&rig.out) == expected);
}

#[test]
fn the_newer_content_of_a_path_wins_whatever_finishes_last() {
    let rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("src");
    // The older run sends a large version slowly; a later run sends a small one that finishes
    // first. The older one must not overwrite it when it completes.
    write_file(&src.join("old/x/report.bin"), 6 << 20, 41);
    write_file(&src.join("new/x/report.bin"), 10_000, 42);
    let mut old = rig.start_sender("sender-old", &[&src.join("old/x")], &["--rate", "20M"]);
    checkvalve_tests::wait_for_log(&rig.receiver, "new sender session", Duration::from_secs(20));
    assert!(
        rig.send(&[&src.join("new/x")], &[], Duration::from_secs(60))
            .success()
    );
    assert!(old.wait(Duration::from_secs(60)).success());
    let outcome = rig.settle(2, Duration::from_secs(30));
    assert_eq!(outcome.delivered, ["x/report.bin"], "{outcome:?}");
    assert_eq!(outcome.superseded, ["x/report.bin"], "{outcome:?}");
    assert_eq!(
        std::fs::read(rig.out.join("x/report.bin")).expect("published"),
        std::fs::read(src.join("new/x/report.bin")).expect("source"),
        "older content replaced newer"
    );
}

#[test]
fn a_second_receiver_on_the_same_folder_refuses_to_start() {
    let rig = Rig::start(None, &[]);
    let args: Vec<String> = ["--bind", "127.0.0.1:0", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([rig.out.display().to_string()])
        .chain(
            rig.key
                .iter()
                .flat_map(|k| ["--key".to_string(), k.display().to_string()]),
        )
        .collect();
    // Something in progress for the first receiver.
    let tmp = rig.out.join(".checkvalve/tmp");
    let marker = tmp.join("in-progress.part");
    std::fs::write(&marker, b"x").expect("marker");
    let mut second = Proc::start(
        rig.dir.path(),
        "receiver-2",
        &bin("checkvalve-receive"),
        &args,
    );
    let status = second.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    assert!(
        second.log_text().contains("another receiver"),
        "{}",
        second.log_text()
    );
    assert!(
        marker.exists(),
        "the second receiver deleted the first one's files"
    );
}

#[test]
fn objects_in_progress_when_the_receiver_stops_are_recorded() {
    let mut rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("src");
    write_file(&src.join("slow/big.bin"), 16 << 20, 51);
    // 16 MiB at 20 Mbit/s: still in progress when the receiver is stopped.
    let _sender = rig.start_sender("sender", &[&src.join("slow")], &["--rate", "20M"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rig.receiver.log_text().contains("new sender session") {
        assert!(Instant::now() < deadline, "sender not heard");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(rig.receiver.stop().success());
    let outcome = rig.outcome();
    assert_eq!(outcome.lost_named, ["slow/big.bin"], "{outcome:?}");
    assert!(
        outcome.records[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("receiver stopped")),
        "{outcome:?}"
    );
    assert!(published(&rig.out).is_empty());
}

#[test]
fn a_sender_whose_datagrams_are_refused_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("a.csv");
    write_file(&src, 10_000, 61);
    // Sending to the broadcast address without SO_BROADCAST: the kernel refuses every datagram.
    // No receiver: the kernel's refusals are the subject, so no key is needed.
    let args: Vec<String> = ["--to", "255.255.255.255:9", "--allow-unauthenticated"]
        .iter()
        .map(|s| s.to_string())
        .chain([src.display().to_string()])
        .collect();
    let mut sender = Proc::start(dir.path(), "sender", &bin("checkvalve-send"), &args);
    let status = sender.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", sender.log_text());
    assert!(
        sender.log_text().contains("refused by the kernel"),
        "{}",
        sender.log_text()
    );
}

#[test]
fn a_tree_sent_twice_is_published_once_and_the_repeats_recorded() {
    let rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("src");
    let tree = make_tree(&src, "exports", 20, 1 << 20, 71);
    let expected = digest_tree(&src);
    assert!(rig.send(&[&tree], &[], Duration::from_secs(60)).success());
    rig.settle(expected.len(), Duration::from_secs(30));
    let first: Vec<_> = published(&rig.out);
    assert!(rig.send(&[&tree], &[], Duration::from_secs(60)).success());
    let outcome = rig.settle(2 * expected.len(), Duration::from_secs(30));
    assert_eq!(outcome.delivered.len(), expected.len(), "{outcome:?}");
    assert_eq!(outcome.repeats.len(), expected.len(), "{outcome:?}");
    assert!(published(&rig.out) == first && first == expected);
}

#[test]
fn published_files_are_group_readable_by_default_and_as_the_operator_sets() {
    use std::os::unix::fs::PermissionsExt;
    for (extra, want) in [(None, 0o640), (Some("0600"), 0o600)] {
        let args: Vec<&str> = extra.map(|m| vec!["--file-mode", m]).unwrap_or_default();
        let rig = Rig::start(None, &args);
        let src = rig.dir.path().join("report.csv");
        write_file(&src, 20_000, 71);
        assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
        rig.settle(1, Duration::from_secs(20));
        let mode = std::fs::metadata(rig.out.join("report.csv"))
            .expect("published")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, want, "{extra:?}: {mode:o}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = Proc::start(
        dir.path(),
        "receiver",
        &bin("checkvalve-receive"),
        &[
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--out".into(),
            dir.path().join("out").display().to_string(),
            "--allow-unauthenticated".into(),
            "--file-mode".into(),
            "0666".into(),
        ],
    );
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(2));
    assert!(
        p.log_text().contains("writable by others"),
        "{}",
        p.log_text()
    );
}

/// With `--group`, published files and the folders made for them belong to the vendors' group,
/// and folders are searchable by it (not by others, as the files are not readable by them).
#[test]
fn published_files_and_their_folders_get_the_group_the_operator_names() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Any group the receiver may give files to: as root, the catch-all group.
    let gid = 65534u32;
    let gid_text = gid.to_string();
    let rig = Rig::start(None, &["--group", &gid_text]);
    let src = rig.dir.path().join("src");
    write_file(&src.join("exports/daily/report.csv"), 20_000, 72);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    rig.settle(1, Duration::from_secs(20));
    let file = rig.out.join("src/exports/daily/report.csv");
    let meta = std::fs::metadata(&file).expect("published");
    assert_eq!(
        (meta.gid(), meta.permissions().mode() & 0o777),
        (gid, 0o640)
    );
    for folder in ["src", "src/exports", "src/exports/daily"] {
        let m = std::fs::metadata(rig.out.join(folder)).expect("folder");
        assert_eq!(
            (m.gid(), m.permissions().mode() & 0o777),
            (gid, 0o750),
            "{folder}"
        );
    }
}

/// The name policy: `portable` (the default) refuses names Windows cannot open, and records the
/// file lost by name; `posix` publishes them.
#[test]
fn names_windows_cannot_open_cross_only_under_the_posix_policy() {
    for (policy, published) in [(None, false), (Some("posix"), true)] {
        let args: Vec<&str> = policy.map(|p| vec!["--names", p]).unwrap_or_default();
        let rig = Rig::start(None, &args);
        let src = rig.dir.path().join("plc");
        write_file(&src.join("trend 12:00.csv"), 5_000, 73);
        write_file(&src.join("COM1.log"), 5_000, 74);
        // The sender sends POSIX names: the share's policy is the receiver's to apply.
        assert!(
            rig.send(&[&src], &["--names", "posix"], Duration::from_secs(60))
                .success()
        );
        let outcome = rig.settle(2, Duration::from_secs(20));
        for name in ["plc/trend 12:00.csv", "plc/COM1.log"] {
            assert_eq!(rig.out.join(name).exists(), published, "{policy:?}: {name}");
            if !published {
                assert!(
                    outcome.lost_named.iter().any(|l| l == name),
                    "{policy:?}: {name} not recorded lost by name: {outcome:?}"
                );
            }
        }
    }
}
