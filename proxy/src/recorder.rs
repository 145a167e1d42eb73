//! The metadata writer: request rows go through a bounded queue to one thread that writes
//! them to `state/state.sqlite` in batches, off the request path. When the queue is full a
//! row is dropped and counted, never waited for: a slow disk must not slow requests. The
//! writer gathers rows for a short window before each transaction. Rows
//! older than the policy's retention are deleted every ten minutes (and at the first row).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use krouter_config::state::{RequestRow, StateDb};

/// Rows waiting to be written, at most.
pub const QUEUE: usize = 4096;
/// Rows written per transaction, at most.
const BATCH: usize = 2048;
/// How long the writer lets rows gather after the first one wakes it: a busy proxy costs
/// one wake-up and one transaction per window, not one per request.
const WINDOW: Duration = Duration::from_millis(50);
/// How often rows older than the policy's retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The sending side, cloned into every request.
#[derive(Clone)]
pub struct Recorder {
    queue: Option<SyncSender<(Duration, RequestRow)>>,
    dropped: Arc<AtomicU64>,
}

/// The writer thread, joined at shutdown so queued rows are written.
pub struct RecorderThread {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

// === impl Recorder ===

impl Recorder {
    /// Starts the writer thread over `db`.
    pub fn start(db: StateDb) -> std::io::Result<(Self, RecorderThread)> {
        let (queue, rows) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new()
            .name("krouter-recorder".to_owned())
            .spawn({
                let dropped = Arc::clone(&dropped);
                let stop = Arc::clone(&stop);
                move || write_loop(db, &rows, &dropped, &stop)
            })?;
        Ok((
            Self {
                queue: Some(queue),
                dropped,
            },
            RecorderThread { handle, stop },
        ))
    }

    /// Queues `row`, to be kept for `retention` (the policy's `[logging] retention_days`),
    /// or drops and counts it if the queue is full.
    pub fn send(&self, retention: Duration, row: RequestRow) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send((retention, row)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Rows dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

// === impl RecorderThread ===

impl RecorderThread {
    /// Writes what is queued and stops (even if a sender is still alive), waiting at most
    /// `limit`. Blocks: call it off the async workers.
    pub fn finish(self, limit: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let started = Instant::now();
        while !self.handle.is_finished() && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.handle.is_finished() {
            let _ = self.handle.join();
        } else {
            tracing::warn!("request metadata not all written before shutdown");
        }
    }
}

fn write_loop(
    mut db: StateDb,
    rows: &Receiver<(Duration, RequestRow)>,
    dropped: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut reported = 0;
    let mut pruned: Option<Instant> = None;
    loop {
        let (mut retention, first) = match rows.recv_timeout(WINDOW) {
            Ok(row) => row,
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => continue,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        };
        if !stop.load(Ordering::Relaxed) {
            std::thread::sleep(WINDOW);
        }
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rows.try_recv() {
                Ok((kept_for, row)) => {
                    retention = kept_for;
                    batch.push(row);
                }
                Err(_) => break,
            }
        }
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let before = crate::ctx::now_ms().saturating_sub(keep_ms);
            match db.prune_requests(before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "old request metadata removed"),
                Err(error) => tracing::warn!(%error, "could not remove old request metadata"),
            }
            pruned = Some(Instant::now());
        }
        if let Err(error) = db.insert_requests(&batch) {
            dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::warn!(%error, rows = batch.len(), "could not write request metadata");
        }
        let now = dropped.load(Ordering::Relaxed);
        if now != reported {
            tracing::warn!(dropped_total = now, "request metadata rows dropped");
            reported = now;
        }
    }
}
