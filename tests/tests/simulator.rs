//! The simulator binary as testers use it: determinism, pcap, one-way, rate, sweep.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, bin, bound_addr, dead_port, serial};
use pcap_file::pcap::PcapReader;
use serde_json::Value;

/// Starts a simulator between a fresh sink socket and returns (sim, sink, sim address).
fn start_sim(dir: &Path, tag: &str, args: &[&str]) -> (Proc, UdpSocket, String) {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut all = vec![
        "--bind".to_string(),
        "127.0.0.1:0".into(),
        "--to".into(),
        sink.local_addr().expect("addr").to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let sim = Proc::start(dir, tag, &bin("checkvalve-sim"), &all);
    let sim_addr = bound_addr(&sim, " forwarding", Duration::from_secs(20));
    (sim, sink, sim_addr)
}

fn stop_report(sim: &mut Proc) -> Value {
    assert!(sim.stop().success(), "{}", checkvalve_tests::tail(&sim.log));
    let text = std::fs::read_to_string(&sim.out).expect("stdout");
    serde_json::from_str(text.trim()).expect("json report")
}

fn pcap_payloads(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).expect("pcap");
    let mut reader = PcapReader::new(file).expect("pcap header");
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.expect("packet");
        // Raw IPv4 + UDP headers (28 bytes), then the datagram.
        out.push(p.data[28..].to_vec());
    }
    out
}

/// Sends `n` numbered datagrams of varying size in quick succession.
fn send_numbered(to: &str, n: u32) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..n {
        let len = 20 + (i as usize * 37) % 400;
        let mut d = vec![(i % 251) as u8; len];
        d[..4].copy_from_slice(&i.to_be_bytes());
        s.send_to(&d, to).expect("send");
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn without_timing(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.remove("seconds");
            o.remove("achieved_bps");
            for (_, child) in o.iter_mut() {
                strip(child);
            }
        }
        if let Some(a) = v.as_array_mut() {
            a.iter_mut().for_each(strip);
        }
    }
    strip(&mut v);
    v
}

#[test]
fn same_seed_and_input_give_identical_counters_and_pcap_and_tshark_agrees() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let mut runs = Vec::new();
    for run in 0..2 {
        let pcap = dir.path().join(format!("run{run}.pcap"));
        let (mut sim, sink, addr) = start_sim(
            dir.path(),
            &format!("sim{run}"),
            &[
                "--loss",
                "10%",
                "--burst",
                "4",
                "--reorder",
                "5%",
                "--duplicate",
                "2%",
                "--corrupt",
                "2%",
                "--truncate",
                "1%",
                "--seed",
                "77",
                "--pcap",
                pcap.to_str().expect("utf8"),
            ],
        );
        send_numbered(&addr, 5000);
        // Stop once the simulator has forwarded everything: the sink has gone quiet.
        let mut buf = [0u8; 2048];
        while sink.recv(&mut buf).is_ok() {}
        let report = stop_report(&mut sim);
        runs.push((report, pcap));
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert_eq!(without_timing(a.0.clone()), without_timing(b.0.clone()));
    assert_eq!(a.0["received"], 5000);
    assert!(a.0["dropped_loss"].as_u64().expect("n") > 300);
    let pa = pcap_payloads(&a.1);
    assert_eq!(pa, pcap_payloads(&b.1), "pcap contents differ between runs");
    assert_eq!(pa.len() as u64, a.0["forwarded"].as_u64().expect("n"));

    // tshark must read the capture and count the same datagrams.
    match std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&a.1)
        .arg("-T")
        .arg("fields")
        .args(["-e", "udp.length"])
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "tshark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let n = String::from_utf8_lossy(&out.stdout).lines().count();
            assert_eq!(
                n as u64,
                a.0["forwarded"].as_u64().expect("n"),
                "tshark count"
            );
        }
        Err(e) => checkvalve_tests::skip(&format!("the tshark check: tshark cannot run ({e})")),
    }
}

#[test]
fn the_simulator_never_sends_anything_back_toward_the_sender() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    // Forward to a port where nothing listens, so ICMP errors come back to the simulator too.
    let dead = format!("127.0.0.1:{}", dead_port());
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1:0",
        "--to",
        &dead,
        "--duplicate",
        "50%",
        "--reorder",
        "10%",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sim = Proc::start(dir.path(), "sim", &bin("checkvalve-sim"), &args);
    let sim_addr = bound_addr(&sim, " forwarding", Duration::from_secs(20));
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    for i in 0..2000u32 {
        sender.send_to(&i.to_be_bytes(), &sim_addr).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sender.recv_from(&mut buf) {
            panic!("the sender received {n} bytes from {from}");
        }
    }
    let report = stop_report(&mut sim);
    assert_eq!(
        report["received"], 2000,
        "the simulator did receive the traffic"
    );
    assert!(report["forwarded"].as_u64().expect("n") > 2000);
}

#[test]
fn the_rate_limit_holds_within_3_percent() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let rate = 20_000_000f64;
    let (mut sim, sink, addr) = start_sim(dir.path(), "sim", &["--rate", "20M", "--queue", "256k"]);
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut first, mut last, mut bits) = (None, Instant::now(), 0u64);
        let mut idle_since = Instant::now();
        loop {
            match sink.recv(&mut buf) {
                Ok(n) => {
                    let now = Instant::now();
                    // The first datagram opens the window; count what follows it.
                    if first.is_none() {
                        first = Some(now);
                    } else {
                        bits += ((n + 28) * 8) as u64;
                    }
                    last = now;
                    idle_since = now;
                }
                Err(_) if idle_since.elapsed() > Duration::from_secs(1) && first.is_some() => break,
                Err(_) => {}
            }
        }
        bits as f64 / (last - first.expect("traffic")).as_secs_f64()
    });
    // Offer about twice the link rate for three seconds.
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let payload = [7u8; 1472];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        let due = Duration::from_secs_f64(sent as f64 * 1500.0 * 8.0 / (2.0 * rate));
        if start.elapsed() >= due {
            s.send_to(&payload, &addr).expect("send");
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let achieved = counter.join().expect("counter");
    let report = stop_report(&mut sim);
    assert!(
        report["dropped_queue"].as_u64().expect("n") > 0,
        "the queue never overflowed"
    );
    assert!(
        (achieved / rate - 1.0).abs() < 0.03,
        "achieved {achieved:.0} bit/s for 20 Mbit/s"
    );
}

#[test]
fn a_sweep_over_six_loss_rates_writes_csv_and_svg() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("sweep");
    let mut sweep = Proc::start(
        dir.path(),
        "sweep",
        &bin("checkvalve-sim"),
        &[
            "sweep",
            "--loss",
            "0%,5%,10%,20%,30%,40%",
            "--burst",
            "1",
            "--files",
            "10",
            "--max-file",
            "1M",
            "--object-timeout",
            "1s",
            "--out",
            out.to_str().expect("utf8"),
        ]
        .map(String::from),
    );
    let status = sweep.wait(Duration::from_secs(240));
    assert!(status.success(), "{}", checkvalve_tests::tail(&sweep.log));
    let csv = std::fs::read_to_string(out.join("sweep.csv")).expect("csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 6, "{csv}");
    let ratio = |r: &Vec<&str>| r[5].parse::<f64>().expect("ratio");
    assert_eq!(
        ratio(&rows[0]),
        1.0,
        "clean link must deliver everything: {csv}"
    );
    assert_eq!(
        ratio(&rows[1]),
        1.0,
        "5% must deliver everything with the default FEC: {csv}"
    );
    assert!(
        ratio(&rows[5]) < 1.0,
        "40% must lose files with the default FEC: {csv}"
    );
    let svg = std::fs::read_to_string(out.join("sweep.svg")).expect("svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("below 100% from"),
        "the plot marks the break point"
    );
}

#[test]
fn a_qualification_runs_every_combination_repeated_and_writes_one_artifact() {
    use checkvalve_formats::qualification::{self as q, Qualification};
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("qualification");
    let scenario = dir.path().join("bad-afternoon.toml");
    let scenario_text = "seed = 3\n\n[[phase]]\nname = \"clean\"\nduration = \"1s\"\n\n\
                         [[phase]]\nname = \"lossy\"\nduration = \"1500ms\"\nloss = \"2%\"\nburst = 5\n";
    std::fs::write(&scenario, scenario_text).expect("scenario");
    let mut run = Proc::start(
        dir.path(),
        "qualify",
        &bin("checkvalve-sim"),
        &[
            "qualify",
            "--scenario",
            scenario.to_str().expect("utf8"),
            "--loss",
            "0%",
            "--burst",
            "1",
            "--rate",
            "100M,200M",
            "--shard-size",
            "4000",
            "--repeats",
            "2",
            "--files",
            "4",
            "--max-file",
            "256k",
            "--object-timeout",
            "1s",
            "--out",
            out.to_str().expect("utf8"),
        ]
        .map(String::from),
    );
    let status = run.wait(Duration::from_secs(240));
    assert!(status.success(), "{}", checkvalve_tests::tail(&run.log));
    let text = std::fs::read_to_string(out.join(q::FILE)).expect("artifact");
    let a: Qualification = serde_json::from_str(&text).expect("artifact reads");
    assert_eq!(a.format, q::FORMAT);
    for (program, version) in [
        ("checkvalve-sim", &a.versions.sim),
        ("checkvalve-send", &a.versions.send),
        ("checkvalve-receive", &a.versions.receive),
    ] {
        assert!(
            version.starts_with(program) && version.contains("(commit "),
            "{program}: {version:?}"
        );
    }
    assert!(
        a.host.cpus >= 1 && !a.host.kernel.is_empty(),
        "{:?}",
        a.host
    );
    assert!(!a.started.is_empty() && a.ended >= a.started);
    assert_eq!(a.config.scenarios.len(), 1);
    assert_eq!(a.config.scenarios[0].text, scenario_text);
    assert_eq!(a.config.rates, ["100M", "200M"]);
    assert_eq!(a.config.shard_sizes, [4000]);
    assert_eq!(a.config.repeats, 2);
    // Two links (0 % loss, the scenario) × two rates × one shard size × two repeats.
    assert_eq!(a.points.len(), 8, "{text}");
    let mut seeds: Vec<u64> = a.points.iter().map(|p| p.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 8, "every point has a seed of its own");
    for rate in ["100M", "200M"] {
        for link in ["loss 0% burst 1", "bad-afternoon"] {
            let repeats: Vec<u32> = a
                .points
                .iter()
                .filter(|p| p.rate == rate && p.link == link)
                .map(|p| p.repeat)
                .collect();
            assert_eq!(repeats, [0, 1], "{rate} {link}: {text}");
        }
    }
    for p in &a.points {
        assert_eq!(p.shard_size, Some(4000));
        assert_eq!(p.delivered, p.files, "{p:?}");
        if p.is_scenario() {
            // The tree went again until the 2.5 s timeline had played out.
            assert!(p.rounds >= 2 && p.seconds >= 2.5, "{p:?}");
            assert_eq!(p.files, 4 * p.rounds as usize);
        } else {
            assert_eq!((p.rounds, p.files), (1, 4), "{p:?}");
        }
    }
    assert_eq!(a.points_with_loss, 0);
    let csv = std::fs::read_to_string(out.join("sweep.csv")).expect("csv");
    let header = csv.lines().next().expect("header");
    assert!(
        header.ends_with(",link,rate,shard_size,repeat,seed,rounds"),
        "{header}"
    );
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(out.join("sweep.svg").is_file() && out.join("point-007").is_dir());
}
