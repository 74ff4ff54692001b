//! The sender as a service: watches the channels' spool folders and sends what appears in them,
//! until SIGTERM or SIGINT.
//!
//! Three threads: the spool thread (scans, on filesystem events and periodically, and applies the
//! after-send policy once a file's last datagram has gone out), the producer (reads, hashes and
//! encodes, sealing a group whenever it runs out of files), and the transmitter (paced output and
//! heartbeats, on this thread).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use checkvalve_common::interleave::InterleaveParams;
use notify::{RecursiveMode, Watcher};
use tracing::{info, warn};

use crate::config::Config;
use crate::spool::Spools;
use crate::{QUEUED_BATCHES, produce, resolve, transmit};

/// How often the spool thread looks again while files are settling.
const TICK: Duration = Duration::from_millis(250);
/// A file handed to the producer but not encoded whole within this long is scanned again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Runs the service until a stop signal; exits 0 after finishing the batch in flight.
pub fn run(cfg: Config, interleave: InterleaveParams) -> Result<ExitCode> {
    let to = resolve(&cfg.to)?;
    let session = rand::random::<u64>() | 1;
    let stop = transmit::stop_flag()?;
    info!(
        session = format_args!("{session:016x}"),
        %to,
        rate = cfg.rate,
        fec = format_args!("{}:{}", cfg.fec.data_shards, cfg.fec.parity_shards),
        channels = cfg.channels.len(),
        "watching"
    );
    for c in &cfg.channels {
        info!(channel = %c.name, spool = %c.spool.display(), priority = c.priority, after_send = ?c.after_send, "channel");
    }
    let mut tx = transmit::Transmitter::new(to, cfg.rate, session, cfg.heartbeat)?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    tx.report_completion(done_tx);
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES);
    let (feed_tx, feed_rx) = std::sync::mpsc::channel();
    let (announce_tx, announce_rx) = std::sync::mpsc::channel();
    let producer = {
        let stop = Arc::clone(&stop);
        let fec = cfg.fec;
        std::thread::Builder::new()
            .name("produce".into())
            .spawn(move || {
                produce::produce_stream(
                    session,
                    &feed_rx,
                    &announce_tx,
                    fec,
                    interleave,
                    batch_tx,
                    stop,
                )
            })
            .context("cannot start the producer thread")?
    };
    let finished = Arc::new(AtomicBool::new(false));
    let spooler = {
        let finished = Arc::clone(&finished);
        let mut spools = Spools::new(
            cfg.channels.clone(),
            cfg.ignore.clone(),
            cfg.settle,
            cfg.repeat_spacing,
        );
        let rescan = cfg.rescan;
        std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || {
                let (ev_tx, ev_rx) = std::sync::mpsc::channel();
                let watcher = notify::recommended_watcher(move |ev| {
                    let _ = ev_tx.send(ev);
                });
                let _watcher = match watcher {
                    Ok(mut w) => {
                        for dir in spools.folders() {
                            if let Err(e) = w.watch(dir, RecursiveMode::Recursive) {
                                warn!(spool = %dir.display(), "cannot watch (periodic scans only): {e}");
                            }
                        }
                        Some(w)
                    }
                    Err(e) => {
                        warn!("cannot watch the spools (periodic scans only): {e}");
                        None
                    }
                };
                let mut last_scan: Option<Instant> = None;
                while !finished.load(Ordering::Acquire) {
                    let event = wait_for_events(&ev_rx);
                    let now = Instant::now();
                    let due = event
                        || spools.settling()
                        || last_scan.is_none_or(|t| now.saturating_duration_since(t) >= rescan);
                    if due {
                        last_scan = Some(now);
                        for item in spools.scan(now) {
                            if feed_tx.send(item).is_err() {
                                return;
                            }
                        }
                    }
                    apply(&mut spools, &announce_rx, &done_rx, now);
                    for item in spools.due(now) {
                        if feed_tx.send(item).is_err() {
                            return;
                        }
                    }
                    spools.release_unencoded(RETRY_AFTER, now);
                }
                apply(&mut spools, &announce_rx, &done_rx, Instant::now());
                if spools.backlog() > 0 {
                    info!(files = spools.backlog(), "stopping: files not sent whole stay in their spools");
                }
            })
            .context("cannot start the spool thread")?
    };
    tx.run(&batch_rx, &stop);
    tx.finish(1);
    finished.store(true, Ordering::Release);
    spooler
        .join()
        .map_err(|_| anyhow!("spool thread panicked"))?;
    drop(batch_rx);
    let _ = producer.join();
    let sent = tx.sent();
    info!(
        datagrams = sent.datagrams,
        send_errors = sent.errors,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits up to a tick for filesystem events; true if any came.
fn wait_for_events(rx: &Receiver<notify::Result<notify::Event>>) -> bool {
    match rx.recv_timeout(TICK) {
        Ok(_) => {
            while rx.try_recv().is_ok() {}
            true
        }
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
    }
}

/// Takes the producer's and the transmitter's news to the spools.
fn apply(spools: &mut Spools, announce: &Receiver<(u64, u64)>, done: &Receiver<u64>, now: Instant) {
    while let Ok((object, id)) = announce.try_recv() {
        spools.encoded(object, id);
    }
    if let Some(end) = done.try_iter().max() {
        spools.sent(end, now);
    }
}
