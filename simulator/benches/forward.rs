//! Can the simulator keep up with a 1 Gbit/s link? Offers 1,472-byte datagrams at 1 Gbit/s for five
//! seconds through `checkvalve-sim` with no impairment, and reports what arrived on the other side
//! and what the kernel dropped (UDP `RcvbufErrors` and `InErrors` in /proc/net/snmp).
//!
//! `cargo bench -p checkvalve-sim --bench forward`

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RATE_BPS: f64 = 1e9;
const PAYLOAD: usize = 1472;
const SECONDS: u64 = 5;

fn udp_errors() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let get = |name: &str| {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("RcvbufErrors"), get("InErrors"))
}

fn main() {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // The sink is the instrument: it must not be the one dropping.
    checkvalve_host::udp::buffers::grow_receive_buffer(&sink, 256 << 20);
    let sim_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let sim_addr = format!("127.0.0.1:{sim_port}");
    let sim = Command::new(env!("CARGO_BIN_EXE_checkvalve-sim"))
        .args([
            "--bind",
            &sim_addr,
            "--to",
            &sink.local_addr().expect("addr").to_string(),
            "--stats-interval",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start checkvalve-sim");
    std::thread::sleep(Duration::from_millis(500));

    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, done) = (Arc::clone(&received), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if sink.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let (rcvbuf0, inerr0) = udp_errors();
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let payload = [0x5au8; PAYLOAD];
    let per_datagram = Duration::from_secs_f64((PAYLOAD + 28) as f64 * 8.0 / RATE_BPS);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let due = per_datagram * sent as u32;
        if start.elapsed() >= due {
            tx.send_to(&payload, &sim_addr).expect("send");
            sent += 1;
        } else if due.saturating_sub(start.elapsed()) > Duration::from_micros(100) {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::hint::spin_loop();
        }
    }
    let offered = sent as f64 * (PAYLOAD + 28) as f64 * 8.0 / start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    counter.join().expect("counter");
    let (rcvbuf1, inerr1) = udp_errors();

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(sim.id().to_string())
        .status();
    let out = sim.wait_with_output().expect("sim exit");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sim report");
    let got = received.load(Ordering::Relaxed);
    println!(
        "offered      {:.3} Gbit/s, {sent} datagrams of {PAYLOAD} bytes",
        offered / 1e9
    );
    println!(
        "simulator    received {} forwarded {} dropped {}",
        report["received"], report["forwarded"], report["dropped"]
    );
    println!("sink         received {got}");
    println!(
        "kernel       RcvbufErrors +{} InErrors +{}",
        rcvbuf1 - rcvbuf0,
        inerr1 - inerr0
    );
    let lossless = report["received"].as_u64() == Some(sent) && got == sent;
    println!(
        "result       {}",
        if lossless {
            "no datagram lost"
        } else {
            "DATAGRAMS LOST"
        }
    );
}
