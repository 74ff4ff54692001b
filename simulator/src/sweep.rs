//! The sweep: runs the real sender and receiver through the link model at a range of loss rates
//! and burst lengths, and writes a CSV and an SVG chart of delivery and goodput.

pub use crate::plot::Point;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

use crate::forward::{Forwarder, Options};
use crate::link::{LinkConfig, Loss, Schedule};

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Loss rates (fractions).
    pub losses: Vec<f64>,
    /// Mean burst lengths; `1` means independent loss.
    pub bursts: Vec<f64>,
    /// Sender FEC setting, `K:M`.
    pub fec: String,
    /// Sender rate, as the sender takes it.
    pub rate: String,
    /// Files in the test tree.
    pub files: usize,
    /// Largest file in the tree (sizes are spread log-uniformly up to it).
    pub max_file: u64,
    /// Folder for the CSV, the SVG, and the logs of each point.
    pub out: PathBuf,
    /// Seed of the link model and of the test tree.
    pub seed: u64,
    /// Receiver object timeout: how long a point waits for lost files to be declared.
    pub object_timeout: Duration,
    /// Folder holding `checkvalve-send` and `checkvalve-receive`.
    pub bin_dir: PathBuf,
}

impl Point {
    /// Share of files delivered intact.
    pub fn delivery_ratio(&self) -> f64 {
        if self.files == 0 {
            1.0
        } else {
            self.delivered as f64 / self.files as f64
        }
    }

    /// Legend label of the burst setting.
    pub fn burst_label(&self) -> String {
        if self.burst <= 1.0 {
            "independent".into()
        } else {
            format!("bursts of {}", self.burst)
        }
    }
}

/// CSV header, matching [`csv_row`].
pub const CSV_HEADER: &str = "loss_pct,burst,fec,files,delivered,delivery_ratio,bytes,bytes_delivered,seconds,goodput_mbps,datagrams,measured_loss_pct,longest_burst";

fn csv_row(p: &Point, fec: &str) -> String {
    format!(
        "{:.2},{},{},{},{},{:.4},{},{},{:.3},{:.1},{},{:.3},{}",
        p.loss * 100.0,
        p.burst,
        fec,
        p.files,
        p.delivered,
        p.delivery_ratio(),
        p.bytes,
        p.bytes_delivered,
        p.seconds,
        p.goodput_mbps,
        p.datagrams,
        p.measured_loss * 100.0,
        p.longest_burst
    )
}

fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the child on drop, so an error never leaves a receiver behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes the seeded test tree; returns (relative path, content) of every file.
fn make_tree(
    root: &Path,
    files: usize,
    max_file: u64,
    seed: u64,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let max_exp = (max_file.max(2) as f64).log2();
    for i in 0..files {
        // Spread sizes evenly in log scale so small and large files are both represented.
        let exp = if files > 1 {
            max_exp * i as f64 / (files - 1) as f64
        } else {
            max_exp
        };
        let len = 2f64.powf(exp) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let rel = format!("tree/f{i:03}.bin");
        let path = root.join(&rel);
        fs::create_dir_all(path.parent().expect("parent"))?;
        fs::write(&path, &data)?;
        out.push((rel, data));
    }
    Ok(out)
}

/// Runs one point of the sweep.
fn run_point(
    o: &SweepOptions,
    src: &Path,
    tree: &[(String, Vec<u8>)],
    loss: f64,
    burst: f64,
    n: usize,
) -> Result<Point> {
    let work = o.out.join(format!("point-{n:02}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let recv_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    // Authenticated, as a plant link is: a key of the point's own, held by both ends.
    let key = work.join("link.key");
    let made = Command::new(o.bin_dir.join("checkvalve-send"))
        .args(["keygen", "--id", "1", "--out"])
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("keygen.log"))?)
        .status()
        .context("cannot run checkvalve-send keygen")?;
    if !made.success() {
        bail!(
            "checkvalve-send keygen failed (see {})",
            work.join("keygen.log").display()
        );
    }
    let receiver = Command::new(o.bin_dir.join("checkvalve-receive"))
        .args(["--bind", &recv_addr.to_string(), "--out"])
        .arg(work.join("out"))
        .arg("--key")
        .arg(&key)
        .args([
            "--object-timeout",
            &format!("{}ms", o.object_timeout.as_millis()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("receiver.log"))?)
        .spawn()
        .context("cannot start checkvalve-receive")?;
    let _receiver = Guard(receiver);

    let loss_model = if burst > 1.0 {
        Loss::bursty(loss, burst)
    } else {
        Loss::Independent(loss)
    };
    let forwarder = Forwarder::bind(Options {
        bind: "127.0.0.1:0".parse()?,
        to: recv_addr,
        schedule: Schedule::constant(LinkConfig {
            loss: loss_model,
            ..LinkConfig::default()
        }),
        seed: o.seed + n as u64,
        pcap: None,
        stats_every: None,
        stats_json: false,
        run_for: None,
    })?;
    let sim_addr = forwarder.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let link = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || forwarder.run(&stop))
    };
    // Let the receiver bind before traffic starts.
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let status = Command::new(o.bin_dir.join("checkvalve-send"))
        .args([
            "--to",
            &sim_addr.to_string(),
            "--rate",
            &o.rate,
            "--fec",
            &o.fec,
        ])
        .arg("--key")
        .arg(&key)
        .arg(src.join("tree"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("sender.log"))?)
        .status()
        .context("cannot run checkvalve-send")?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "sender failed ({status}); see {}",
            work.join("sender.log").display()
        );
    }

    // Wait until every file arrived, or the receiver had time to declare the rest lost.
    let deadline = Instant::now() + o.object_timeout + Duration::from_secs(3);
    let intact = |tree: &[(String, Vec<u8>)]| -> (usize, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for (rel, data) in tree {
            if fs::read(work.join("out").join(rel)).is_ok_and(|got| &got == data) {
                n += 1;
                bytes += data.len() as u64;
            }
        }
        (n, bytes)
    };
    let (delivered, bytes_delivered) = loop {
        let (n, b) = intact(tree);
        if n == tree.len() || Instant::now() >= deadline {
            break (n, b);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = link
        .join()
        .map_err(|_| anyhow::anyhow!("link thread panicked"))??;
    let bytes: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    Ok(Point {
        loss,
        burst,
        files: tree.len(),
        delivered,
        bytes,
        bytes_delivered,
        seconds,
        goodput_mbps: bytes_delivered as f64 * 8.0 / seconds / 1e6,
        datagrams: report.total.received,
        measured_loss: report.total.dropped as f64 / report.total.received.max(1) as f64,
        longest_burst: report.total.longest_burst,
    })
}

/// Runs the whole sweep; writes `sweep.csv` and `sweep.svg` into `o.out` and returns the points.
pub fn run(o: &SweepOptions) -> Result<Vec<Point>> {
    fs::create_dir_all(&o.out)?;
    let src = o.out.join("source");
    let _ = fs::remove_dir_all(&src);
    let tree = make_tree(&src, o.files, o.max_file, o.seed)?;
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    let mut points = Vec::new();
    let mut n = 0;
    for &burst in &o.bursts {
        for &loss in &o.losses {
            let p = run_point(o, &src, &tree, loss, burst, n)?;
            info!(
                loss_percent = checkvalve_host::logging::round(loss * 100.0, 1),
                burst,
                delivered = p.delivered,
                files = p.files,
                goodput_mbps = checkvalve_host::logging::round(p.goodput_mbps, 1),
                "point"
            );
            let _ = writeln!(csv, "{}", csv_row(&p, &o.fec));
            points.push(p);
            n += 1;
        }
    }
    fs::write(o.out.join("sweep.csv"), csv)?;
    crate::plot::draw(&points, &format!("FEC {}", o.fec), &o.out.join("sweep.svg"))?;
    Ok(points)
}
