//! The receiver's evidence: a hash-chained manifest that `verify-manifest` checks (and any edit
//! breaks), the `report`, and link events recorded as they happen.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use checkvalve_tests::{Rig, Status, bin, digest_tree, make_tree};

fn receive_cmd(args: &[&str]) -> Output {
    std::process::Command::new(bin("checkvalve-receive"))
        .args(args)
        .output()
        .expect("run checkvalve-receive")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn manifest_file(out: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(out.join(".checkvalve/manifest"))
        .expect("manifest folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.pop().expect("a manifest file")
}

#[test]
fn at_no_loss_the_manifest_lists_exactly_what_was_sent_and_any_edit_is_named() {
    let mut rig = Rig::start(None, &[]);
    let src = make_tree(rig.dir.path(), "tree", 20, 300_000, 31);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    let sent: Vec<String> = digest_tree(&src)
        .into_iter()
        .map(|(p, _)| format!("tree/{p}"))
        .collect();
    let outcome = rig.settle(sent.len(), Duration::from_secs(30));
    let mut delivered = outcome.delivered.clone();
    delivered.sort();
    assert_eq!(delivered, sent, "{outcome:?}");
    assert!(outcome.lost_named.is_empty() && outcome.lost_unnamed == 0);
    for r in &outcome.records {
        assert!(r.sha256.as_ref().is_some_and(|d| d.len() == 64), "{r:?}");
        assert!(
            r.first_datagram.is_some() && r.last_datagram.is_some(),
            "{r:?}"
        );
        assert_eq!(r.repaired, Some(0), "nothing lost, nothing repaired: {r:?}");
    }
    assert!(rig.receiver.stop().success());
    let out = rig.out.display().to_string();
    let ok = receive_cmd(&["verify-manifest", "--out", &out, "--files"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains(&format!("{} published files match", sent.len())),
        "{}",
        text(&ok)
    );

    let file = manifest_file(&rig.out);
    let original = std::fs::read_to_string(&file).expect("manifest");
    let lines: Vec<&str> = original.lines().collect();
    let delivered_at: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"status\":\"delivered\""))
        .map(|(i, _)| i)
        .collect();
    let (a, b) = (delivered_at[2], delivered_at[3]);
    let write = |ls: &[String]| std::fs::write(&file, ls.join("\n") + "\n").expect("write");
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    let refused = |what: &str, expect: &str| {
        let o = receive_cmd(&["verify-manifest", "--out", &out]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{what} not detected: {}",
            text(&o)
        );
        assert!(text(&o).contains(expect), "{what}: {}", text(&o));
    };
    // One byte of an old record.
    let mut edited = owned.clone();
    edited[a] = edited[a].replacen("\"size\":", "\"size\":1", 1);
    write(&edited);
    refused(
        "an edited record",
        &format!("record {} does not chain", a + 2),
    );
    // A record deleted.
    let mut deleted = owned.clone();
    deleted.remove(a);
    write(&deleted);
    refused(
        "a deleted record",
        &format!("record {} follows record {}", a + 2, a),
    );
    // Two records swapped.
    let mut swapped = owned.clone();
    swapped.swap(a, b);
    write(&swapped);
    refused("two swapped records", "follows record");
    // The newest record removed: the receiver's live state remembers how far it wrote.
    write(&owned[..owned.len() - 1]);
    refused("a removed last record", "the newest records were removed");
    // A published file changed in the share.
    write(&owned);
    let victim = rig.out.join(&sent[5]);
    std::fs::write(&victim, b"tampered").expect("tamper");
    let o = receive_cmd(&["verify-manifest", "--out", &out, "--files"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&sent[5]), "{}", text(&o));
    // A file planted in the share that no record explains is named too, beside the changed one.
    std::fs::write(rig.out.join("tree/planted.exe"), b"MZ").expect("plant");
    let o = receive_cmd(&["verify-manifest", "--out", &out, "--files"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&sent[5]) && text(&o).contains("tree/planted.exe"),
        "{}",
        text(&o)
    );
}

#[test]
fn at_40_percent_loss_what_is_published_is_intact_and_every_loss_is_recorded_and_reported() {
    let mut rig = Rig::start(
        Some(&["--loss", "40%", "--seed", "40"]),
        &["--object-timeout", "2s"],
    );
    let src = make_tree(rig.dir.path(), "lossy", 30, 200_000, 41);
    let sent = digest_tree(&src);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    std::thread::sleep(Duration::from_secs(4));
    let outcome = rig.outcome();
    let published: std::collections::BTreeMap<String, [u8; 32]> = digest_tree(&rig.out)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect();
    for (path, digest) in &published {
        let original = sent
            .iter()
            .find(|(p, _)| format!("lossy/{p}") == *path)
            .unwrap_or_else(|| panic!("{path} was never sent"));
        assert_eq!(&original.1, digest, "{path} published damaged");
    }
    assert!(published.len() < sent.len(), "40% loss lost nothing?");
    // Every file not published is accounted for: by name, or counted among unnamed objects.
    let missing = sent.len() - published.len();
    assert!(
        outcome.lost_named.len() + outcome.lost_unnamed as usize >= missing,
        "{missing} files missing, manifest: {outcome:?}"
    );
    assert_eq!(outcome.delivered.len(), published.len());
    assert!(rig.receiver.stop().success());
    rig.stop_sim();
    let out = rig.out.display().to_string();
    let report = receive_cmd(&["report", "--out", &out, "--format", "json"]);
    assert!(report.status.success(), "{}", text(&report));
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).expect("json report");
    assert_eq!(r["files_delivered"], published.len(), "{r}");
    let reported: Vec<&str> = r["lost"]
        .as_array()
        .expect("lost")
        .iter()
        .filter_map(|l| l["path"].as_str())
        .collect();
    for name in &outcome.lost_named {
        assert!(
            reported.contains(&name.as_str()),
            "{name} not in the report: {r}"
        );
    }
    assert_eq!(
        r["objects_lost"].as_u64(),
        Some(outcome.lost_named.len() as u64 + outcome.lost_unnamed),
        "{r}"
    );
    assert_eq!(r["manifest_verifies"], true, "{r}");
    let page = receive_cmd(&["report", "--out", &out]);
    let page = text(&page);
    assert!(
        page.contains("LOST OBJECTS:") && page.contains("chain verified"),
        "{page}"
    );
}

#[test]
fn link_down_link_up_and_a_sender_restart_are_recorded_as_they_happen() {
    let rig = Rig::start(None, &["--link-down-after", "2s"]);
    let root = rig.dir.path();
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let start = |tag: &str| {
        let p = checkvalve_tests::Proc::start(
            root,
            tag,
            &bin("checkvalve-send"),
            &rig.sender_args(&[
                "--to".into(),
                rig.send_to.clone(),
                "--watch".into(),
                spool.display().to_string(),
                "--heartbeat".into(),
                "1s".into(),
            ]),
        );
        checkvalve_tests::wait_for_log(&p, " watching", Duration::from_secs(20));
        p
    };
    let mut first = start("sender-1");
    std::thread::sleep(Duration::from_secs(3));
    let stopped_at = SystemTime::now();
    assert!(first.stop().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        let o = rig.outcome();
        if let Some(e) = o.events.iter().find(|e| e.status == Status::LinkDown) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no link_down: {:?}", o.events);
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = humantime::parse_rfc3339_weak(&down.time).expect("rfc3339");
    let after = at.duration_since(stopped_at).unwrap_or_default();
    // Threshold (2 s) plus one heartbeat period (1 s).
    assert!(
        after <= Duration::from_secs(3),
        "link down after {after:?}: {down:?}"
    );
    let mut second = start("sender-2");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = rig.outcome();
        let kinds: Vec<Status> = o.events.iter().map(|e| e.status).collect();
        if kinds.contains(&Status::SenderRestart)
            && kinds.iter().filter(|k| **k == Status::LinkUp).count() >= 2
        {
            assert_eq!(kinds.first(), Some(&Status::LinkUp), "{kinds:?}");
            assert!(kinds.contains(&Status::SessionStart), "{kinds:?}");
            break;
        }
        assert!(Instant::now() < deadline, "events: {kinds:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(second.stop().success());
}

#[test]
fn newest_records_removed_then_a_restart_and_one_more_file_still_fail_verification() {
    let mut rig = Rig::start(None, &[]);
    let src = make_tree(rig.dir.path(), "first", 6, 20_000, 41);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    rig.settle(6, Duration::from_secs(30));
    assert!(rig.receiver.stop().success());
    // `head -n -3` of the newest manifest file.
    let file = manifest_file(&rig.out);
    let manifest = std::fs::read_to_string(&file).expect("manifest");
    let lines: Vec<&str> = manifest.lines().collect();
    std::fs::write(&file, lines[..lines.len() - 3].join("\n") + "\n").expect("cut");
    let out = rig.out.display().to_string();
    let key = rig.key.clone().expect("a keyed rig");
    let key = key.display().to_string();
    let mut receiver = checkvalve_tests::Proc::start(
        rig.dir.path(),
        "receiver-again",
        &bin("checkvalve-receive"),
        &[
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--out".into(),
            out.clone(),
            "--key".into(),
            key.clone(),
        ],
    );
    let addr = checkvalve_tests::bound_addr(&receiver, " receiving", Duration::from_secs(20));
    let one = rig.dir.path().join("one-more.csv");
    checkvalve_tests::write_file(&one, 5_000, 42);
    let mut sender = checkvalve_tests::Proc::start(
        rig.dir.path(),
        "sender-again",
        &bin("checkvalve-send"),
        &[
            "--to".into(),
            addr,
            "--key".into(),
            key,
            one.display().to_string(),
        ],
    );
    assert!(sender.wait(Duration::from_secs(60)).success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !rig.out.join("one-more.csv").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the next file never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(receiver.stop().success());
    let log = receiver.log_text();
    assert!(log.contains("newest records were removed"), "{log}");
    let o = receive_cmd(&["verify-manifest", "--out", &out]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("chain_break"), "{}", text(&o));
    assert!(text(&o).contains("missing"), "{}", text(&o));
}
