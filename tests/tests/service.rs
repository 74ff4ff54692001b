//! The sender as a service: spool folders watched, files sent and removed, configuration checked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, Rig, bin, count_files, digest_tree, write_file};
use sha2::Digest;

fn config(dir: &Path, to: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join("send.toml");
    std::fs::write(
        &path,
        format!("to = \"{to}\"\nrate = \"200M\"\nsettle = \"1s\"\n{body}"),
    )
    .expect("config");
    path
}

/// Writes `len` seeded bytes under `staging`, then renames them to `dest` (as producers should);
/// returns their SHA-256.
fn drop_file(staging: &Path, dest: &Path, len: usize, seed: u64) -> [u8; 32] {
    let tmp = staging.join(format!("{seed}.tmp"));
    write_file(&tmp, len, seed);
    let digest: [u8; 32] = sha2::Sha256::digest(std::fs::read(&tmp).expect("read")).into();
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&tmp, dest).expect("rename");
    digest
}

/// Waits until the sender has emptied `spool` (at most `limit`), asserting that it did.
fn wait_until_empty(spool: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while count_files(spool) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count_files(spool), 0, "files left in {}", spool.display());
}

/// Published files and their digests.
fn published(out: &Path) -> BTreeMap<String, [u8; 32]> {
    digest_tree(out)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect()
}

#[test]
fn files_dropped_into_two_channels_arrive_under_their_channel_and_leave_the_spools() {
    let mut rig = Rig::start(Some(&["--loss", "2%", "--seed", "9"]), &[]);
    let spools = rig.dir.path().join("spool");
    let cfg = config(
        rig.dir.path(),
        &rig.send_to,
        &format!(
            "[[channel]]\nname = \"bulk\"\nspool = \"{}\"\n\n[[channel]]\nname = \"alarms\"\nspool = \"{}\"\npriority = 10\n",
            spools.join("bulk").display(),
            spools.join("alarms").display()
        ),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let mut sender = Proc::start(rig.dir.path(), "sender", &bin("checkvalve-send"), &args);
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    // 200 files over about ten seconds, written elsewhere and renamed in, some in subfolders.
    let staging = rig.dir.path().join("staging");
    let mut expected = Vec::new();
    let mut digests = BTreeMap::new();
    for i in 0..200u64 {
        let channel = if i % 4 == 0 { "alarms" } else { "bulk" };
        let rel = format!("d{}/f{i:03}.dat", i % 5);
        let dest = spools.join(channel).join(&rel);
        let digest = drop_file(
            &staging,
            &dest,
            1000 + (i as usize * 7919) % 200_000,
            500 + i,
        );
        digests.insert(format!("{channel}/{rel}"), digest);
        expected.push(format!("{channel}/{rel}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until_empty(&spools, Duration::from_secs(90));
    let outcome = rig.settle(200, Duration::from_secs(30));
    assert_eq!(outcome.delivered.len(), 200, "{:?}", outcome.lost_named);
    let got = published(&rig.out);
    assert!(
        got == digests,
        "the share differs from what was dropped into the spools"
    );
    expected.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), expected);
    let leftover: Vec<_> = std::fs::read_dir(spools.join("bulk"))
        .expect("spool")
        .flatten()
        .collect();
    assert!(leftover.is_empty(), "empty subfolders left: {leftover:?}");
    assert!(sender.stop().success(), "SIGTERM must exit 0");
    assert!(sender.log_text().matches(" sent ").count() >= 200);
    rig.stop_sim();
}

#[test]
fn a_config_with_an_error_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(
        dir.path(),
        "127.0.0.1:9",
        "[[channel]]\nname = \"bulk\"\nspool = \"/tmp/x\"\nafter_send = \"shred\"\n",
    );
    let args = vec![
        "--config".to_string(),
        cfg.display().to_string(),
        "--check".into(),
    ];
    let mut check = Proc::start(dir.path(), "check", &bin("checkvalve-send"), &args);
    let status = check.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    let log = check.log_text();
    assert!(
        log.contains("send.toml:7:") && log.contains("shred"),
        "{log}"
    );
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("shred", "keep"),
    )
    .expect("fix");
    let mut check = Proc::start(dir.path(), "check-2", &bin("checkvalve-send"), &args);
    assert!(
        check.wait(Duration::from_secs(20)).success(),
        "{}",
        check.log_text()
    );
}

#[test]
fn three_copies_spaced_in_time_outlast_a_two_second_outage() {
    // The link goes down from 3 s to 5 s after the simulator starts; files dropped around then.
    let mut rig = Rig::start(Some(&["--outage", "3s+2s"]), &["--object-timeout", "2s"]);
    let spool = rig.dir.path().join("spool");
    let cfg = config(
        rig.dir.path(),
        &rig.send_to,
        &format!(
            "repeat_spacing = \"2500ms\"\n[[channel]]\nname = \"diag\"\nspool = \"{}\"\nrepeat = 3\n",
            spool.display()
        ),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let mut sender = Proc::start(rig.dir.path(), "sender", &bin("checkvalve-send"), &args);
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    let staging = rig.dir.path().join("staging");
    let mut digests = BTreeMap::new();
    for i in 0..30u64 {
        let dest = spool.join(format!("f{i:02}.bin"));
        let digest = drop_file(&staging, &dest, 50_000 + i as usize * 1000, 900 + i);
        digests.insert(format!("diag/f{i:02}.bin"), digest);
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_until_empty(&spool, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let outcome = rig.outcome();
    let got = published(&rig.out);
    assert!(got == digests, "not every file arrived whole: {outcome:?}");
    // Published once each; the other copies are repeats (or lost in the outage).
    assert_eq!(outcome.delivered.len(), 30, "{outcome:?}");
    assert!(!outcome.repeats.is_empty());
    assert!(sender.stop().success());
    let report = rig.stop_sim();
    assert!(
        report["dropped_outage"].as_u64().unwrap_or(0) > 0,
        "the outage cut nothing: {report}"
    );
}

#[test]
fn a_sender_killed_three_times_loses_nothing_and_publishes_each_file_once() {
    let rig = Rig::start(
        Some(&["--loss", "1%", "--seed", "4"]),
        &["--object-timeout", "2s"],
    );
    let spool = rig.dir.path().join("spool");
    let cfg = config(
        rig.dir.path(),
        &rig.send_to,
        &format!(
            "[[channel]]\nname = \"x\"\nspool = \"{}\"\n",
            spool.display()
        ),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let start = |n: usize| {
        let p = Proc::start(
            rig.dir.path(),
            &format!("sender-{n}"),
            &bin("checkvalve-send"),
            &args,
        );
        checkvalve_tests::wait_for_log(&p, " watching", Duration::from_secs(20));
        p
    };
    let mut sender = start(0);
    let staging = rig.dir.path().join("staging");
    let mut digests = BTreeMap::new();
    for i in 0..60u64 {
        let dest = spool.join(format!("f{i:02}.bin"));
        let len = 20_000 + (i as usize * 104_729) % 2_000_000;
        digests.insert(
            format!("x/f{i:02}.bin"),
            drop_file(&staging, &dest, len, 700 + i),
        );
        std::thread::sleep(Duration::from_millis(100));
        if i % 20 == 10 {
            // kill -9 in the middle of the traffic, and start again at once.
            let pid = sender.pid().expect("running");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill");
            let _ = sender.wait(Duration::from_secs(10));
            sender = start(i as usize);
        }
    }
    wait_until_empty(&spool, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(3));
    let outcome = rig.outcome();
    let got = published(&rig.out);
    assert!(got == digests, "the share differs from what was spooled");
    let mut delivered = outcome.delivered.clone();
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered.len(),
        outcome.delivered.len(),
        "a file published twice"
    );
    assert_eq!(delivered.len(), 60, "{outcome:?}");
    assert!(sender.stop().success());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("a.csv");
    write_file(&src, 5_000, 81);
    let mut sender = rig.start_sender("sender", &[&src], &["--log-format", "json"]);
    assert!(sender.wait(Duration::from_secs(30)).success());
    let log = sender.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["fields"]["message"] == "done"),
        "{log}"
    );
}
