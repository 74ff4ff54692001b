//! A hang-up (SIGHUP, as a closed terminal or a `systemctl reload` sends) ends none of the
//! long-running programs: they say what they reload and go on.

use std::time::Duration;

use checkvalve_tests::{Proc, Rig, wait_for_log, write_file};

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
