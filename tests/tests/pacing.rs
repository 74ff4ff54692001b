//! The sender's output rate, measured on a real socket with kernel receive timestamps: the average
//! over 30 s holds the configured rate within 5 %, and no 10 ms window exceeds 1.5 times it.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, bin};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

/// IPv4 and UDP headers: the sender's rate counts them.
const HEADERS: u64 = 28;

#[test]
fn thirty_seconds_at_100_mbit_hold_the_rate_with_no_burst() {
    const RATE: u64 = 100_000_000;
    const SPAN: Duration = Duration::from_secs(30);
    // Alone among the end-to-end tests: they would compete for the two cores.
    let _serial = checkvalve_tests::serial();
    let dir = tempfile::tempdir().expect("tmp");
    let link = UdpSocket::bind("127.0.0.1:0").expect("bind");
    setsockopt(&link, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
    setsockopt(&link, sockopt::RcvBuf, &(8 << 20)).expect("SO_RCVBUF");
    link.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // More than 30 s of data at the rate; sparse, so that the test writes nothing to disk.
    let file = dir.path().join("big.bin");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(600 << 20))
        .expect("sparse file");
    let mut sender = Proc::start(
        dir.path(),
        "sender",
        &bin("checkvalve-send"),
        &[
            "--to".into(),
            link.local_addr().expect("addr").to_string(),
            "--rate".into(),
            "100M".into(),
            // The pacing is the subject, and no receiver checks anything.
            "--allow-unauthenticated".into(),
            file.display().to_string(),
        ],
    );
    // (arrival time in ns, datagram bytes with headers), as the kernel stamped them.
    let mut arrivals: Vec<(i128, u64)> = Vec::with_capacity(400_000);
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + SPAN + Duration::from_secs(15);
    let mut first: Option<i128> = None;
    while Instant::now() < deadline {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(TimeSpec);
        let Ok(msg) = recvmsg::<SockaddrStorage>(
            link.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) else {
            continue;
        };
        let len = msg.bytes as u64;
        let stamp = msg.cmsgs().expect("cmsgs").find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => {
                Some(i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
            }
            _ => None,
        });
        let stamp = stamp.expect("kernel timestamp");
        let start = *first.get_or_insert(stamp);
        if stamp - start >= SPAN.as_nanos() as i128 {
            break;
        }
        arrivals.push((stamp - start, len + HEADERS));
    }
    sender.stop();
    assert!(first.is_some(), "nothing arrived");
    let total: u64 = arrivals.iter().map(|(_, b)| b).sum();
    let average = total as f64 * 8.0 / SPAN.as_secs_f64();
    let window_ns = 10_000_000i128;
    let mut windows = vec![0u64; (SPAN.as_nanos() as i128 / window_ns) as usize + 1];
    for (t, b) in &arrivals {
        windows[(t / window_ns) as usize] += b;
    }
    let per_window = RATE as f64 / 8.0 / 100.0;
    let (worst_at, worst) = windows
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| **b)
        .map(|(i, b)| (i, *b as f64 / per_window))
        .expect("windows");
    println!(
        "{} datagrams, average {:.2} Mbit/s, worst 10 ms window {worst:.3}x at {} ms",
        arrivals.len(),
        average / 1e6,
        worst_at * 10
    );
    assert!(
        (average - RATE as f64).abs() <= 0.05 * RATE as f64,
        "average {:.2} Mbit/s is not within 5 % of 100",
        average / 1e6
    );
    assert!(
        worst <= 1.5,
        "a 10 ms window at {} ms carried {worst:.3}x the rate",
        worst_at * 10
    );
}
