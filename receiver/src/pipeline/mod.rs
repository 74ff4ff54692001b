//! The receiver's pipeline: the one place its threads and the queues between them are made.
//!
//! ```text
//!  link socket
//!      │
//!   [net] ─── full chunks ───────────────► [receive loop] ── authentication, assembler, outcomes of
//!      ▲      (a fixed pool of chunks:          │   │        objects lost in assembly, aggregate
//!      └────── free chunks ◄────────────────────┘   │        records, link state, statistics
//!                                                   │
//!                        ToWriter (bounded: WRITE_UNITs)
//!                                                   ▼
//!   [rebuild] ◄── RebuildJob (bounded) ──────── [write] ── temporary files, written as content
//!       │    ──── RebuildDone ────────────────►   │        arrives; failures back to the loop
//!       │                                          │
//!       └──── ToHash (rebuilt shards) ──┐  ToHash (bounded: WRITE_UNITs)
//!                                       ▼          ▼
//!                                     [hash] ── SHA-256 in order, verdict on the digest
//!                                          │
//!                    PublishJob (bounded: LANE_QUEUE per lane)
//!                                          ▼
//!                  [publish-small-0..3] [publish-large] ── rename into the share, record
//!                                          │
//!            (record batches, by the hasher) ToStreams (bounded: STREAM_QUEUE) ◄── tails (loop)
//!                                          ▼
//!                                     [streams] ── order per channel, append to OUT/CHANNEL/*.log
//!
//!   [chores] ◄── Chore (bounded: 4, never waited for but at a stop) ── live.json, manifest sync,
//!                                                                      replay state
//!   [retention] (when configured) ── removes the oldest published files, records each
//! ```
//!
//! Bounds, and what a full queue does:
//! - chunks: a quarter of `--max-pending` in 512 KiB chunks; when none is free the datagrams wait
//!   in the kernel's buffer, and past half of them in use the net thread sheds parity early
//!   ([`crate::net`]);
//! - ToWriter and ToHash: a quarter of an eighth of `--max-pending` each, counted in write units
//!   (a block of decoded content); a full queue holds up its sender, the receive loop included,
//!   and the socket's buffer absorbs the wait;
//! - RebuildJob: the same count; RebuildDone is unbounded but holds at most one message per job;
//! - PublishJob: [`publish::LANE_QUEUE`] per lane, each holding one open temporary file: a full
//!   lane holds up the hasher;
//! - recycled buffers and write failures back to the loop: unbounded, but they only return what
//!   the assembler's budget handed out, and a failure at most once per object;
//! - ToStreams: [`STREAM_QUEUE`] messages, each a verified record batch (at most 1 MiB) or a
//!   session's tails: a full queue holds up the hasher; the loop drops tails that find it full
//!   (they repeat every heartbeat);
//! - Chore: [`chores::QUEUED`]; a chore that finds the queue full is skipped (the next one, a
//!   second later, carries everything it would have written).
//!
//! Obligations travel with the objects: an object's disk reservation
//! ([`reservation::Reservation`]) and its temporary file are owned values, released or discarded
//! wherever the object ends; its outcome goes once to the [`crate::outcome::Recorder`].

pub mod messages;
pub mod reservation;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use checkvalve_common::assembler::{Assembler, AssemblerConfig};
use tracing::{info, warn};

use crate::config::Settings;
use crate::outcome::LossReason;
use crate::outcome::Recorder;
use crate::publish::{self, Publisher};
use crate::writer::{Hasher, Writer};
use crate::{chores, keys, live, manifest, net, rebuild, receive, retention, share};
use checkvalve_common::assembler::ObjectKey;
use checkvalve_common::stream::order::OrderConfig;
use messages::{PublishJob, ToStreams, ToWriter};
use reservation::Reserved;

/// A block of decoded content at the default shape (64 x 1,400 bytes, rounded up): the unit in
/// which the writer's and hasher's queues are sized.
pub const WRITE_UNIT: usize = 128 << 10;

/// Record batches and tails queued for the record channels' stage at most (each batch at most
/// `stream::batch::MAX_BATCH_LEN`): a full queue holds up the hasher; tails that find it full
/// are dropped (they repeat every heartbeat).
pub const STREAM_QUEUE: usize = 64;

/// Said at start, and in every statistics line, by a receiver running without a key.
pub const UNAUTHENTICATED: &str = "--allow-unauthenticated: datagrams are NOT authenticated: anything that reaches this port is trusted as far as its CRC (anyone on the DMZ side can forge files, or fill the session table)";

/// Starts a thread named `name`.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("cannot start the {name} thread"))
}

/// Runs the receiver with `args` until SIGINT or SIGTERM, then lets what is complete be
/// published and records the rest.
pub fn run(args: Settings, no_seccomp: bool) -> Result<()> {
    let bind = checkvalve_host::resolve(&args.bind)?;
    let (mut share, stale) = share::Share::open(&args.out, args.state.as_deref())
        .with_context(|| format!("cannot use output folder {}", args.out.display()))?;
    share.set_file_mode(args.file_mode);
    if let Some(group) = &args.group {
        let gid = crate::config::group_id(group).map_err(anyhow::Error::msg)?;
        share.set_group(gid);
    }
    let share = Arc::new(share);
    if stale > 0 {
        info!(
            count = stale,
            "removed unfinished temporary files from a previous run"
        );
    }
    let manifest_path = share.state().join("manifest");
    let manifest = Arc::new(
        manifest::Manifest::open(&manifest_path, args.min_free)
            .with_context(|| format!("cannot open manifest {}", manifest_path.display()))?,
    );
    // The last run's live state says how far the chain reached: a shorter chain now is evidence
    // removed, and is recorded as such.
    if let Some(last) = checkvalve_formats::live::State::read(share.state()) {
        manifest.check_end(&last.chain_end());
    }
    raise_fd_limit();
    let writable = [share.root().to_path_buf(), share.state().to_path_buf()];
    let others = checkvalve_confine::other_threads();
    if others > 0 {
        tracing::warn!(
            threads = others,
            "landlock: threads started before the confinement (by a library?) are not confined by it"
        );
    }
    match checkvalve_confine::filesystem(&writable, None) {
        Ok(checkvalve_confine::Enforced::Not) => {
            tracing::warn!(
                "landlock: not supported by this kernel: writes are not confined (systemd's ReadWritePaths still are)"
            )
        }
        Ok(level) => {
            info!(enforced = %level, share = %writable[0].display(), state = %writable[1].display(), "landlock: writing confined to the share and the state folder")
        }
        Err(e) => tracing::warn!("landlock: cannot confine writes: {e}"),
    }
    let budget = usize::try_from(args.max_pending).unwrap_or(usize::MAX);
    // A quarter queues datagrams (the kernel's buffer absorbs more), an eighth holds decoded
    // content on its way to disk, the rest blocks in progress.
    let queue_bytes = budget / 4;
    let writer_bytes = budget / 8;
    // Of the rest, a sixteenth of the whole holds blocks repairable but not yet handed to the
    // writer, to be read back with their neighbours (receive.rs, `queue_repair`).
    let repair_hold = budget / 16;
    let (socket, local) = net::bind(bind, usize::try_from(args.rcvbuf).unwrap_or(usize::MAX))?;
    if no_seccomp {
        tracing::warn!("--no-seccomp: sending and connecting are NOT forbidden (debugging only)");
    } else {
        match checkvalve_confine::one_direction(checkvalve_confine::Role::Receiver) {
            Ok(()) => info!(
                "seccomp: only the system calls a receiver needs are allowed: no sending, no new socket (socket, bind, connect, listen, accept), no socket option changed, no program started"
            ),
            Err(e) => tracing::warn!(
                "cannot install the seccomp filter (the code still never sends): {e}"
            ),
        }
    }
    let stop = checkvalve_host::signals::stop_flag().context("cannot install signal handler")?;
    let hangup =
        checkvalve_host::signals::hangup_flag().context("cannot install signal handler")?;

    let net_state = Arc::new(net::NetState::new(checkvalve_common::shed::ASSUMED_LOSS));
    let chunks = (queue_bytes / net::CHUNK_BYTES).max(2);
    let (free_tx, free_rx) = net::chunk_pool(chunks);
    let (full_tx, full_rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let net_thread = {
        let (stop, net_state, queued) = (
            Arc::clone(&stop),
            Arc::clone(&net_state),
            Arc::clone(&queued),
        );
        spawn("net", move || {
            net::drain(socket, full_tx, free_rx, chunks, queued, stop, net_state)
        })?
    };
    let retention_thread = if args.retention.max_age.is_some() || args.retention.max_bytes.is_some()
    {
        let (share, manifest, limits, stop) = (
            Arc::clone(&share),
            Arc::clone(&manifest),
            args.retention.clone(),
            Arc::clone(&stop),
        );
        Some(spawn("retention", move || {
            retention::run(share, manifest, limits, stop)
        })?)
    } else {
        None
    };
    let recorder = Arc::new(Recorder::new(Arc::clone(&manifest)));
    let stream_views = crate::streams::Views::default();
    let (stages, to_stages) = Stages::start(
        &share,
        &recorder,
        writer_bytes,
        crate::streams::StreamSettings {
            order: OrderConfig {
                window: args.reorder_window,
                ..OrderConfig::default()
            },
            format: args.stream_format,
            max_file: args.stream_max_file,
        },
        &stream_views,
    )?;
    let defaults = AssemblerConfig::default();
    let config = AssemblerConfig {
        object_timeout: args.object_timeout,
        max_pending_bytes: budget - queue_bytes - writer_bytes - repair_hold,
        max_content_len: args.max_object_size,
        silence: args.link_down_after.unwrap_or(defaults.silence),
        fixed_silence: args.link_down_after.is_some(),
        names: args.names,
        ..defaults
    };
    let psks = args
        .keys
        .iter()
        .map(|k| keys::load(k))
        .collect::<Result<Vec<_>>>()?;
    let key_ids: Vec<u32> = psks.iter().map(|k| k.id).collect();
    let auth_state = share.state().join(keys::STATE_FILE);
    let auth = if psks.is_empty() {
        warn!("{UNAUTHENTICATED}");
        None
    } else {
        let require = args.require_auth.unwrap_or(true);
        info!(
            keys = %psks.iter().map(|k| k.id.to_string()).collect::<Vec<_>>().join(","),
            require_auth = require,
            "datagrams are authenticated"
        );
        Some(checkvalve_common::auth::Opener::new(
            psks,
            require,
            &keys::load_state(&auth_state)?,
        ))
    };
    let (chore_tx, chore_rx) = mpsc::sync_channel(chores::QUEUED);
    let (chores, chores_thread) = match spawn("chores", move || chores::run(chore_rx)) {
        Ok(t) => (chores::Queue::new(Some(chore_tx)), Some(t)),
        Err(e) => {
            warn!("{e:#}: the receive loop writes the state files itself");
            (chores::Queue::new(None), None)
        }
    };
    let live = live::Live::new(
        share.state(),
        share.root(),
        args.min_free,
        local.to_string(),
        Arc::clone(&manifest),
        args.loss_warn,
        args.loss_interval,
        auth.is_some(),
        key_ids,
        chores.clone(),
    );
    let mut live = live;
    live.show_streams(stream_views);
    info!(bind = %local, out = %share.root().display(), state = %share.state().display(), manifest = %manifest_path.display(), "receiving");
    let rx = receive::Receive::new(
        Assembler::new(config, Instant::now()),
        receive::Wiring {
            share,
            manifest,
            recorder,
            writer: to_stages.writer,
            recycled: to_stages.recycled,
            failed: to_stages.failed,
            streams: to_stages.streams,
            reserved: Reserved::default(),
            live,
            auth,
            auth_state,
            chores: chores.clone(),
            repair_hold,
            hangup,
        },
        args.min_free,
        args.stats_interval,
        args.aggregate_interval,
    );
    let live = rx.run(&full_rx, &free_tx, &queued, &stop, &net_state);
    // The loop's end closed the writer's queue: each stage ends once the one before it has, the
    // publishers last, and the live state's last version is written after them.
    for t in [Some(net_thread), retention_thread].into_iter().flatten() {
        let _ = t.join();
    }
    stages.join();
    live.finish();
    drop(chores);
    if let Some(t) = chores_thread {
        let _ = t.join();
    }
    info!("stopped");
    Ok(())
}

/// Every object in progress holds its temporary file open: allow as many as the hard limit permits.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The stages after the receive loop: write, rebuild, hash and the publishing lanes.
pub struct Stages {
    /// In the order they end: each once the one before it has.
    threads: Vec<JoinHandle<()>>,
}

/// The receive loop's ends of the stages' queues.
pub struct StageQueues {
    /// Into the writer.
    pub writer: mpsc::SyncSender<ToWriter>,
    /// Block buffers coming back from the writer and the hasher.
    pub recycled: mpsc::Receiver<Vec<u8>>,
    /// Objects the writer could not write, with why.
    pub failed: mpsc::Receiver<(ObjectKey, LossReason)>,
    /// Into the record channels' stage (the senders' tails).
    pub streams: mpsc::SyncSender<ToStreams>,
}

impl Stages {
    /// Starts the stages publishing into `share`, with `writer_bytes` of memory for their queues
    /// and for blocks kept to hash in order.
    pub fn start(
        share: &Arc<share::Share>,
        recorder: &Arc<Recorder>,
        writer_bytes: usize,
        streams: crate::streams::StreamSettings,
        views: &crate::streams::Views,
    ) -> Result<(Stages, StageQueues)> {
        let mut lanes = Vec::new();
        let mut lane = |name: String| -> Result<mpsc::SyncSender<PublishJob>> {
            let (tx, rx) = mpsc::sync_channel(publish::LANE_QUEUE);
            let (share, recorder) = (Arc::clone(share), Arc::clone(recorder));
            lanes.push(spawn(&name, move || publish::run(&share, &recorder, rx))?);
            Ok(tx)
        };
        let small = (0..publish::SMALL_LANES)
            .map(|i| lane(format!("publish-small-{i}")))
            .collect::<Result<Vec<_>>>()?;
        let (streams_tx, streams_rx) = mpsc::sync_channel(STREAM_QUEUE);
        let stage = crate::streams::Streams::new(
            Arc::clone(share),
            Arc::clone(recorder.manifest()),
            streams,
            Arc::clone(views),
        );
        let streams_thread = spawn("streams", move || stage.run(streams_rx))?;
        let publisher = Publisher::new(
            small,
            lane("publish-large".into())?,
            streams_tx.clone(),
            Arc::clone(share),
        );
        // Of the writer's share, a quarter queues blocks to write, a quarter blocks written and
        // not yet hashed, and half keeps blocks to hash in order.
        let queue = (writer_bytes / 4 / WRITE_UNIT).max(1);
        let (writer_tx, writer_rx) = mpsc::sync_channel(queue);
        let (hash_tx, hash_rx) = mpsc::sync_channel(queue);
        let (recycle_tx, recycle_rx) = mpsc::channel();
        let (failed_tx, failed_rx) = mpsc::channel();
        let hasher = Hasher::new(
            Arc::clone(share),
            Arc::clone(recorder),
            publisher,
            recycle_tx.clone(),
            writer_bytes / 2,
        );
        let hash = spawn("hash", move || hasher.run(hash_rx))?;
        let (jobs_tx, jobs_rx) = mpsc::sync_channel(queue);
        let (done_tx, done_rx) = mpsc::channel();
        let rebuild_hash = hash_tx.clone();
        let (jobs, rebuilder) = match spawn("rebuild", move || {
            rebuild::run(jobs_rx, done_tx, rebuild_hash)
        }) {
            Ok(t) => (Some(jobs_tx), Some(t)),
            Err(e) => {
                warn!("{e:#}: blocks are rebuilt by the writer");
                (None, None)
            }
        };
        let writer = Writer::new(
            Arc::clone(share),
            recycle_tx,
            failed_tx,
            hash_tx,
            jobs,
            done_rx,
        );
        let write = spawn("write", move || writer.run(writer_rx))?;
        let threads = [Some(write), rebuilder, Some(hash)]
            .into_iter()
            .flatten()
            .chain(lanes)
            .chain([streams_thread])
            .collect();
        Ok((
            Stages { threads },
            StageQueues {
                writer: writer_tx,
                recycled: recycle_rx,
                failed: failed_rx,
                streams: streams_tx,
            },
        ))
    }

    /// Waits for every stage to end (the writer's queue must be closed).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
