//! The sender as a service: spool folders watched, files sent and removed, configuration checked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, Rig, bin, count_files, digest_tree, write_file};
use sha2::Digest;

/// A sender configuration sending to `to`, keyed with the rig's key when `dir` is a rig's folder
/// (a configuration test without a receiver allows unauthenticated datagrams instead).
fn config(dir: &Path, to: &str, body: &str) -> std::path::PathBuf {
    config_in(dir, dir, to, body)
}

/// Like [`config`], written in `dir` for a rig whose folder (holding its key) is `rig`.
fn config_in(dir: &Path, rig: &Path, to: &str, body: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("config folder");
    let path = dir.join("send.toml");
    let key = rig.join(checkvalve_tests::RIG_KEY);
    let auth = if key.exists() {
        format!("key = \"{}\"", key.display())
    } else {
        "allow_unauthenticated = true".into()
    };
    std::fs::write(
        &path,
        format!("to = \"{to}\"\nrate = \"200M\"\nsettle = \"1s\"\n{auth}\n{body}"),
    )
    .expect("config");
    path
}

/// Writes `len` seeded bytes under `staging`, then renames them to `dest` (as producers should:
/// the sender removes subfolders that sending emptied, so the folder is made again and the rename
/// retried when it was removed in between); returns their SHA-256.
fn drop_file(staging: &Path, dest: &Path, len: usize, seed: u64) -> [u8; 32] {
    let tmp = staging.join(format!("{seed}.tmp"));
    write_file(&tmp, len, seed);
    let digest: [u8; 32] = sha2::Sha256::digest(std::fs::read(&tmp).expect("read")).into();
    let folder = dest.parent().expect("parent");
    for attempt in 1.. {
        std::fs::create_dir_all(folder).expect("mkdir");
        match std::fs::rename(&tmp, dest) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 10 => {}
            Err(e) => panic!("rename: {e}"),
        }
    }
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
    // 200 files over about twenty seconds, written elsewhere and renamed in, some in subfolders.
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
        std::thread::sleep(Duration::from_millis(100));
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
        log.contains("send.toml:8:") && log.contains("shred"),
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
    // Three kill moments drawn at random (the seed is printed to replay a failure).
    let seed: u64 = rand::random();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let mut kills = std::collections::BTreeSet::new();
    while kills.len() < 3 {
        kills.insert(rand::Rng::random_range(&mut rng, 3..57u64));
    }
    println!("kill seed {seed}: after files {kills:?}");
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
        if kills.contains(&i) {
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
    assert_eq!(delivered.len(), 60, "{outcome:?} (kill seed {seed})");
    // A file cut off by a kill is reported lost in the killed session, then arrives whole from
    // the next; a file sent again after it had arrived is a repeat, never a second publication.
    assert!(outcome.superseded.is_empty(), "{outcome:?}");
    for lost in outcome.lost_named.iter().chain(&outcome.repeats) {
        assert!(
            delivered.contains(lost),
            "{lost} never delivered: {outcome:?}"
        );
    }
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
    // Flat: the fields beside the message, numbers as numbers.
    let done = lines
        .iter()
        .find(|v| v["message"] == "done")
        .unwrap_or_else(|| panic!("no done line: {log}"));
    assert_eq!(done["files"], 1, "{done}");
    assert!(done["seconds"].is_f64(), "{done}");
    assert!(
        lines
            .iter()
            .all(|v| v["time"].is_string() && v["level"].is_string())
    );
}

/// Sends `sig` to `proc`.
fn signal(proc: &Proc, sig: nix::sys::signal::Signal) {
    let pid = proc.pid().expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

/// Waits until `path` holds `want` (at most `limit`).
fn wait_for_file(path: &Path, want: &[u8], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::fs::read(path).is_ok_and(|b| b == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_file_appended_slowly_is_sent_once_it_stops_changing_and_arrives_whole() {
    let rig = Rig::start(Some(&["--loss", "3%", "--seed", "12"]), &[]);
    let spool = rig.dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let mut sender = Proc::start(
        rig.dir.path(),
        "sender",
        &bin("checkvalve-send"),
        &rig.sender_args(&[
            "--to".into(),
            rig.send_to.clone(),
            "--watch".into(),
            spool.display().to_string(),
            "--settle".into(),
            "2s".into(),
        ]),
    );
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    // Written in place, 40 kB every 400 ms for 6 s: never still for the 2 s settle time.
    let path = spool.join("growing.log");
    let mut content = Vec::new();
    let mut f = std::fs::File::create(&path).expect("create");
    let started = Instant::now();
    for i in 0..15u8 {
        let chunk = vec![i; 40_000];
        std::io::Write::write_all(&mut f, &chunk).expect("append");
        content.extend_from_slice(&chunk);
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(f);
    let written_for = started.elapsed();
    assert!(
        wait_for_file(
            &rig.out.join("growing.log"),
            &content,
            Duration::from_secs(30)
        ),
        "the whole file never arrived"
    );
    let outcome = rig.settle(1, Duration::from_secs(10));
    assert_eq!(
        outcome.delivered,
        vec!["growing.log".to_string()],
        "a partial version was published: {outcome:?}"
    );
    assert!(outcome.superseded.is_empty() && outcome.repeats.is_empty());
    assert!(written_for >= Duration::from_secs(5));
    assert!(sender.stop().success());
}

#[test]
fn status_reports_the_queue_what_was_sent_today_and_the_last_error_with_no_sender_running() {
    let rig = Rig::start(Some(&["--loss", "2%", "--seed", "5"]), &[]);
    let root = rig.dir.path();
    let (a, b, sent, state) = (
        root.join("spool/a"),
        root.join("spool/b"),
        root.join("sent-a"),
        root.join("state"),
    );
    let cfg = config(
        root,
        &rig.send_to,
        &format!(
            "state = \"{}\"\n[[channel]]\nname = \"a\"\nspool = \"{}\"\nafter_send = \"move\"\nsent = \"{}\"\nsent_max_age = \"30d\"\n\n[[channel]]\nname = \"b\"\nspool = \"{}\"\nafter_send = \"keep\"\n",
            state.display(),
            a.display(),
            sent.display(),
            b.display()
        ),
    );
    // Before the first start: a sender that never ran is not healthy either.
    let never = std::process::Command::new(bin("checkvalve-send"))
        .args(["status", "--config", &cfg.display().to_string()])
        .output()
        .expect("status");
    let said = String::from_utf8_lossy(&never.stdout);
    assert_eq!(
        never.status.code(),
        Some(3),
        "a sender that never ran: {said}"
    );
    assert!(said.contains("never ran"), "{said}");
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let mut sender = Proc::start(root, "sender", &bin("checkvalve-send"), &args);
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    let staging = root.join("staging");
    for i in 0..5u64 {
        drop_file(&staging, &a.join(format!("sub/f{i}")), 30_000, 40 + i);
    }
    drop_file(&staging, &b.join("kept.csv"), 10_000, 50);
    // A name the receiver would refuse (a control character): not sent, and a warning.
    std::fs::write(a.join("bad\u{1}name"), b"x").expect("bad name");
    wait_until_empty(&a.join("sub"), Duration::from_secs(60));
    assert!(
        wait_for_file(
            &rig.out.join("b/kept.csv"),
            &std::fs::read(b.join("kept.csv")).expect("kept"),
            Duration::from_secs(30)
        ),
        "kept file never arrived"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(sender.stop().success());
    assert_eq!(count_files(&sent), 5, "moved into the sent folder");
    assert!(b.join("kept.csv").exists(), "kept in its spool");
    // Two files queued while no sender runs.
    drop_file(&staging, &b.join("later1"), 1_000, 60);
    drop_file(&staging, &b.join("later2"), 2_000, 61);
    let out = std::process::Command::new(bin("checkvalve-send"))
        .args(["status", "--config", &cfg.display().to_string()])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a sender not running is not healthy: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NOT RUNNING"), "{text}");
    assert!(text.contains("sent today:    6 files"), "{text}");
    assert!(
        text.contains("bad"),
        "the last error names the refused file: {text}"
    );
    let b_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("b "))
        .unwrap_or_default();
    assert!(b_line.contains("2 files, 2.9 KiB"), "{text}");
    let a_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("a "))
        .unwrap_or_default();
    assert!(
        a_line.contains("1 files"),
        "only the refused file waits in a: {text}"
    );
    // Restarted, the kept file is not sent again; the two new ones are.
    let mut sender = Proc::start(root, "sender-2", &bin("checkvalve-send"), &args);
    assert!(wait_for_file(
        &rig.out.join("b/later2"),
        &std::fs::read(b.join("later2")).expect("later2"),
        Duration::from_secs(30)
    ));
    std::thread::sleep(Duration::from_secs(2));
    let json = std::process::Command::new(bin("checkvalve-send"))
        .args(["status", "--json", "--state", &state.display().to_string()])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json status");
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(
        json.status.success(),
        v["healthy"] == true,
        "the exit code says what `healthy` says: {v}"
    );
    assert_eq!(v["status"]["sent"]["files_today"], 8, "{v}");
    assert!(sender.stop().success());
    let outcome = rig.outcome();
    assert_eq!(outcome.delivered.len(), 8, "{outcome:?}");
    assert!(
        outcome.repeats.is_empty(),
        "the kept file was sent again: {outcome:?}"
    );
}

/// SIGHUP reloads a configuration replaced atomically (a new file: Landlock grants the
/// configuration's folder, read only, not only the file it started with), a channel whose folder
/// the confinement does not cover waits for the next start (said in a WARN), and a broken
/// configuration leaves the running one in force.
#[test]
fn sighup_reloads_the_channels_and_a_broken_config_leaves_the_running_one_in_force() {
    let rig = Rig::start(None, &[]);
    let root = rig.dir.path();
    let (a, b, c) = (
        root.join("spool/a"),
        root.join("spool/b"),
        root.join("spool/c"),
    );
    let channel = |name: &str, dir: &Path, priority: u32| {
        format!(
            "[[channel]]\nname = \"{name}\"\nspool = \"{}\"\npriority = {priority}\n",
            dir.display()
        )
    };
    let cfg = config(
        root,
        &rig.send_to,
        &format!("{}{}", channel("a", &a, 1), channel("b", &b, 1)),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let mut sender = Proc::start(root, "sender", &bin("checkvalve-send"), &args);
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    // Replaced as editors, `sed -i` and Ansible do: a new file renamed over the old one.
    let staged = config_in(
        &root.join("staging-config"),
        root,
        &rig.send_to,
        &format!(
            "{}{}{}",
            channel("a", &a, 1),
            channel("b", &b, 5),
            channel("c", &c, 1)
        ),
    );
    std::fs::rename(&staged, &cfg).expect("atomic replace");
    signal(&sender, nix::sys::signal::Signal::SIGHUP);
    checkvalve_tests::wait_for_log(&sender, "configuration reloaded", Duration::from_secs(10));
    let log = sender.log_text();
    assert!(
        log.contains("channels=2") && log.contains("takes effect at the next restart only"),
        "the new channel c, outside the confinement, should wait for a restart:\n{log}"
    );
    let staging = root.join("staging");
    let digest = drop_file(&staging, &b.join("new.bin"), 5_000, 1);
    let published = rig.out.join("b/new.bin");
    assert!(
        wait_until_published(&published, Duration::from_secs(20)),
        "channel b stopped being watched by the reload"
    );
    let got: [u8; 32] = sha2::Sha256::digest(std::fs::read(&published).expect("read")).into();
    assert_eq!(got, digest);
    std::fs::write(&cfg, "to = \"nowhere\"\n[[channel]]\nname = \"a/b\"\n").expect("break");
    signal(&sender, nix::sys::signal::Signal::SIGHUP);
    checkvalve_tests::wait_for_log(
        &sender,
        "running one stays in force",
        Duration::from_secs(10),
    );
    assert!(
        sender.log_text().contains("send.toml:"),
        "{}",
        sender.log_text()
    );
    drop_file(&staging, &a.join("still.bin"), 6_000, 2);
    assert!(
        wait_until_published(&rig.out.join("a/still.bin"), Duration::from_secs(20)),
        "a broken reload stopped the service"
    );
    assert!(sender.stop().success());
}

fn wait_until_published(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !path.exists() {
        std::thread::sleep(Duration::from_millis(200));
    }
    path.exists()
}

#[test]
fn the_systemd_units_verify() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        checkvalve_tests::skip("systemd-analyze not installed: units not verified");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().expect("tmp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (unit, program, musts) in [
        (
            "sender/dist/checkvalve-send.service",
            "checkvalve-send",
            &[
                "CapabilityBoundingSet=\n",
                "User=checkvalve",
                "ReadWritePaths=",
            ][..],
        ),
        (
            "receiver/dist/checkvalve-receive.service",
            "checkvalve-receive",
            &[
                "CapabilityBoundingSet=CAP_NET_ADMIN\n",
                "User=checkvalve",
                "ReadWritePaths=",
                "SocketBindDeny=any",
            ][..],
        ),
        (
            "status/dist/checkvalve-status.service",
            "checkvalve-status",
            &[
                "CapabilityBoundingSet=\n",
                "DynamicUser=yes",
                "ReadOnlyPaths=",
            ][..],
        ),
    ] {
        let text = std::fs::read_to_string(root.join(unit)).expect("unit");
        // verify checks that the programs exist: point it at the ones just built.
        // Its man page is installed by the package only (tests/tests/packages.rs verifies the
        // unit there, man page and all).
        let local = text
            .replace(
                &format!("/usr/bin/{program}"),
                &bin(program).display().to_string(),
            )
            .replace(&format!("man:{program}(1) "), "");
        let name = Path::new(unit).file_name().expect("name");
        let path = dir.path().join(name);
        std::fs::write(&path, local).expect("write");
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("verify");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let about_unit: Vec<&str> = said
            .lines()
            .filter(|l| l.contains(name.to_str().expect("utf-8")))
            .collect();
        assert!(
            out.status.success() && about_unit.is_empty(),
            "{unit}: {said}"
        );
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=",
            "SystemCallFilter=",
        ]
        .iter()
        .chain(musts)
        {
            assert!(text.contains(hardening), "{unit} lacks {hardening}");
        }
    }
}

/// The niceness of every thread of process `pid`.
fn thread_niceness(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may hold spaces): state is field 3, nice 19.
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            after
                .split(' ')
                .nth(16)
                .expect("nice")
                .parse()
                .expect("number")
        })
        .collect()
}

#[test]
fn every_sender_thread_runs_at_background_priority_unless_told_otherwise() {
    let rig = Rig::start(None, &[]);
    let src = rig.dir.path().join("slow.bin");
    // Large enough that the encoding thread outlives the first batches it queues.
    write_file(&src, 40 << 20, 91);
    for (nice, extra) in [(10, None), (3, Some("3"))] {
        let mut args = vec!["--rate", "100M"];
        if let Some(n) = extra {
            args.extend(["--nice", n]);
        }
        let mut sender = rig.start_sender(&format!("nice{nice}"), &[&src], &args);
        checkvalve_tests::wait_for_log(&sender, "sending", Duration::from_secs(20));
        // The encoding thread starts just after that line.
        let pid = sender.pid().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut threads = thread_niceness(pid);
        while threads.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            threads = thread_niceness(pid);
        }
        sender.stop();
        assert!(threads.len() >= 2, "{threads:?}");
        assert!(threads.iter().all(|n| *n == nice), "{threads:?}");
    }
}

#[test]
fn the_sender_records_each_file_sent_with_the_object_and_digest_the_receiver_records() {
    let rig = Rig::start(None, &[]);
    let spool = rig.dir.path().join("spool");
    let state = rig.dir.path().join("state");
    let staging = rig.dir.path().join("staging");
    std::fs::create_dir_all(&spool).expect("spool");
    std::fs::create_dir_all(&staging).expect("staging");
    let mut sender = Proc::start(
        rig.dir.path(),
        "sender",
        &bin("checkvalve-send"),
        &rig.sender_args(&[
            "--to".into(),
            rig.send_to.clone(),
            "--watch".into(),
            spool.display().to_string(),
            "--state".into(),
            state.display().to_string(),
        ]),
    );
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    let digest = drop_file(&staging, &spool.join("unit-4/trend.csv"), 70_000, 44);
    let outcome = rig.settle(1, Duration::from_secs(30));
    assert_eq!(outcome.delivered, ["unit-4/trend.csv"], "{outcome:?}");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let published = outcome
        .records
        .iter()
        .find(|r| r.path.as_deref() == Some("unit-4/trend.csv"))
        .expect("the manifest's record");
    // The sender's record, written once the last datagram went out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sent: serde_json::Value = loop {
        let found = std::fs::read_dir(state.join("sent"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .find(|v| v["path"] == "unit-4/trend.csv");
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no record in {}",
            state.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sent["sha256"], hex.as_str(), "{sent}");
    assert_eq!(sent["size"], 70_000);
    assert_eq!(
        Some(sent["object"].as_str().expect("object")),
        published.object.as_deref()
    );
    assert_eq!(published.sha256.as_deref(), Some(hex.as_str()));
    // And the log line says the same.
    let log = sender.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(" sent ") && l.contains(&hex)),
        "{log}"
    );
    assert!(sender.stop().success());
}

/// A flag beside `--config` overrides the file's value for this run in both programs, and the
/// log says so; the datagrams' shape and authentication are the file's alone (refused, exit 2).
#[test]
fn flags_beside_config_override_it_in_both_programs_and_the_log_says_so() {
    let rig = Rig::start(None, &[]);
    let root = rig.dir.path();
    let key = root.join(checkvalve_tests::RIG_KEY);
    let said = "a flag beside --config overrides the configuration file";

    // The receiver: the file says one object timeout and folder, the flag another timeout.
    let out = root.join("share-by-file");
    let receive_toml = root.join("receive.toml");
    std::fs::write(
        &receive_toml,
        format!(
            "bind = \"127.0.0.1:0\"\nout = \"{}\"\nobject_timeout = \"30s\"\nkeys = [\"{}\"]\n",
            out.display(),
            key.display()
        ),
    )
    .expect("receive.toml");
    let mut receiver = Proc::start(
        root,
        "receiver-config",
        &bin("checkvalve-receive"),
        &[
            "--config".into(),
            receive_toml.display().to_string(),
            "--object-timeout".into(),
            "7s".into(),
        ],
    );
    checkvalve_tests::wait_for_log(&receiver, " receiving", Duration::from_secs(20));
    let log = receiver.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(said))
        .unwrap_or_else(|| panic!("no override line: {log}"));
    assert!(
        line.contains("--object-timeout") && line.contains("7s"),
        "{line}"
    );
    assert!(
        log.contains(&format!("out={}", out.display())),
        "the file's folder stays: {log}"
    );
    assert!(receiver.stop().success());
    let refused = std::process::Command::new(bin("checkvalve-receive"))
        .args(["--config", &receive_toml.display().to_string()])
        .arg("--allow-unauthenticated")
        .output()
        .expect("receiver");
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("configuration file only"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The sender: the file says 200M, the flag 50M; --fec beside the file is refused.
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let cfg = config(
        root,
        &rig.send_to,
        &format!(
            "[[channel]]\nname = \"a\"\nspool = \"{}\"\n",
            spool.display()
        ),
    );
    let mut sender = Proc::start(
        root,
        "sender-config",
        &bin("checkvalve-send"),
        &[
            "--config".into(),
            cfg.display().to_string(),
            "--rate".into(),
            "50M".into(),
        ],
    );
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    let log = sender.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(said) && l.contains("--rate") && l.contains("50000000")),
        "{log}"
    );
    let watching = log
        .lines()
        .find(|l| l.contains(" watching"))
        .expect("watching");
    assert!(watching.contains("rate=50000000"), "{watching}");
    assert!(sender.stop().success());
    let refused = std::process::Command::new(bin("checkvalve-send"))
        .args(["--config", &cfg.display().to_string(), "--fec", "32:8"])
        .output()
        .expect("sender");
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("configuration file only"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
