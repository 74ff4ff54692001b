//! A hang-up (SIGHUP, as a closed terminal or a `systemctl reload` sends) ends none of the
//! long-running programs: they say what they reload and go on.

use std::time::Duration;

use std::path::Path;

use checkvalve_tests::{Proc, Rig, bin, bound_addr, keygen_at, wait_for_log, write_file};

fn hang_up(proc: &Proc) {
    let pid = proc.pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("kill");
}

#[test]
fn sighup_leaves_the_receiver_the_simulator_and_the_status_server_running() {
    let mut rig = Rig::start(Some(&[]), &[]);
    let (mut status, _) = rig.start_status();
    hang_up(&rig.receiver);
    hang_up(rig.sim.as_ref().expect("a simulator"));
    hang_up(&status);
    wait_for_log(&status, "SIGHUP", Duration::from_secs(10));
    // The link works on, through the simulator, into the receiver.
    let src = rig.dir.path().join("after-hangup.csv");
    write_file(&src, 30_000, 8);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    let outcome = rig.settle(1, Duration::from_secs(20));
    assert_eq!(outcome.delivered, ["after-hangup.csv"], "{outcome:?}");
    wait_for_log(&rig.receiver, "SIGHUP", Duration::from_secs(10));
    rig.stop_sim();
    assert!(status.stop().success(), "{}", status.log_text());
    assert!(rig.receiver.stop().success(), "{}", rig.receiver.log_text());
}

/// Every line of `proc`'s log, each a flat JSON object with the documented fields.
fn json_lines(proc: &Proc) -> Vec<serde_json::Value> {
    let log = proc.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    for v in &lines {
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"));
        for key in ["time", "level", "target", "message"] {
            assert!(o[key].is_string(), "{key} missing in {v}");
        }
        assert!(
            o.keys()
                .all(|k| k != "fields" && k != "span" && !k.starts_with("log.")),
            "nested or build fields in {v}"
        );
    }
    lines
}

fn start(dir: &Path, tag: &str, program: &str, args: &[&str]) -> Proc {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Proc::start(dir, tag, &bin(program), &args)
}

#[test]
fn json_logs_from_the_receiver_the_simulator_and_the_status_server_survive_a_hangup() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = keygen_at(&dir.path().join("link.key"), 1);
    let key = key.to_str().expect("utf-8");
    let out = dir.path().join("out");
    let out = out.to_str().expect("utf-8");
    let json = ["--log-format", "json"];
    let mut receiver = start(
        dir.path(),
        "receiver",
        "checkvalve-receive",
        &[
            &[
                "--bind",
                "127.0.0.1:0",
                "--out",
                out,
                "--key",
                key,
                "--stats-interval",
                "1s",
            ][..],
            &json,
        ]
        .concat(),
    );
    let at = bound_addr(&receiver, "\"receiving\"", Duration::from_secs(20));
    let mut sim = start(
        dir.path(),
        "sim",
        "checkvalve-sim",
        &[
            &["--bind", "127.0.0.1:0", "--to", &at, "--loss", "1%"][..],
            &json,
        ]
        .concat(),
    );
    let via = bound_addr(&sim, "\"forwarding\"", Duration::from_secs(20));
    let state = format!("{out}/.checkvalve");
    let mut status = start(
        dir.path(),
        "status",
        "checkvalve-status",
        &[&["--listen", "127.0.0.1:0", "--state", &state][..], &json].concat(),
    );
    bound_addr(&status, "\"serving\"", Duration::from_secs(20));
    for p in [&receiver, &sim, &status] {
        hang_up(p);
    }
    let src = dir.path().join("a.csv");
    write_file(&src, 200_000, 4);
    let mut sender = start(
        dir.path(),
        "sender",
        "checkvalve-send",
        &[
            &["--to", &via, "--key", key, src.to_str().expect("utf-8")][..],
            &json,
        ]
        .concat(),
    );
    assert!(
        sender.wait(Duration::from_secs(60)).success(),
        "{}",
        sender.log_text()
    );
    wait_for_log(&receiver, "\"delivered\"", Duration::from_secs(20));
    for p in [&receiver, &status] {
        wait_for_log(p, "SIGHUP", Duration::from_secs(10));
    }
    // Still running after the hang-up: each stops cleanly when asked.
    assert!(status.stop().success(), "{}", status.log_text());
    assert!(sim.stop().success(), "{}", sim.log_text());
    assert!(receiver.stop().success(), "{}", receiver.log_text());

    let received = json_lines(&receiver);
    let delivered = received
        .iter()
        .find(|v| v["message"] == "delivered")
        .expect("a delivered line");
    assert_eq!(delivered["path"], "a.csv");
    assert_eq!(
        delivered["size"], 200_000,
        "numbers are numbers: {delivered}"
    );
    let stats = received
        .iter()
        .find(|v| v["message"] == "stats")
        .expect("a stats line");
    assert!(
        stats["datagrams"].as_u64().is_some_and(|n| n > 0),
        "{stats}"
    );
    assert!(
        json_lines(&sim)
            .iter()
            .any(|v| v["message"] == "forwarding")
    );
    assert!(
        json_lines(&status)
            .iter()
            .any(|v| v["message"] == "serving")
    );
    assert!(json_lines(&sender).iter().any(|v| v["message"] == "done"));
}
