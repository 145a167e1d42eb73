//! The state writer: request rows and lockout events go through a bounded queue to one
//! thread that writes them to `state/state.sqlite` in batches, off the request path. When the queue is full a
//! row is dropped and counted, never waited for: a slow disk must not slow requests. The
//! writer gathers rows for a short window before each transaction. Rows
//! older than the policy's retention are deleted every ten minutes (and at the first row).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use krouter_config::state::{AggregateRow, AuthEvent, RequestRow, StateDb, TargetHealthRow};

/// Rows waiting to be written, at most. The queue is counted rather than preallocated:
/// an idle proxy holds no slots, a busy one only the rows actually waiting.
pub const QUEUE: usize = 4096;
/// Room kept for locks beyond [`QUEUE`]: a flood of failed authentications that fills the
/// queue must not also cost the locks it causes their rows, or a restart would free the
/// flooder. Bounded like the rest: a lock takes `max_failures` failures first.
const LOCK_RESERVE: usize = 1024;
/// Rows written per transaction, at most.
const BATCH: usize = 2048;
/// How long the writer lets rows gather after the first one wakes it, at most: a busy proxy
/// costs a few wake-ups and one transaction per window (or per batch), not one per request.
const WINDOW: Duration = Duration::from_millis(50);
/// The writer sleeps this long at a time while rows gather, and stops gathering once a whole
/// batch is queued: waiting out the whole window with a batch already there would let a
/// proxy that sends rows faster than a batch per window fill the queue.
const GATHER_STEP: Duration = Duration::from_millis(10);
/// How often rows older than the policy's retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How long failed authentications are kept: the longest lockout window a policy may set.
const AUTH_FAILURES_KEPT: Duration = Duration::from_secs(86_400);

/// The sending side, cloned into every request.
#[derive(Clone)]
pub struct Recorder {
    queue: Option<Sender<Message>>,
    /// Messages sent and not yet taken by the writer.
    pending: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

/// What the writer thread is sent.
enum Message {
    /// A request row, kept for the given retention.
    Request(Duration, RequestRow),
    /// A failed authentication or a lock.
    Auth(AuthEvent),
    /// A target's breaker or rest changed.
    Health(TargetHealthRow),
    /// A request of a `no_log` group, counted in the daily aggregates only (kept for the
    /// given retention).
    Aggregate(Duration, AggregateRow),
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
        let (queue, rows) = channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new()
            .name("krouter-recorder".to_owned())
            .spawn({
                let taken = Taken {
                    rows,
                    pending: Arc::clone(&pending),
                };
                let dropped = Arc::clone(&dropped);
                let stop = Arc::clone(&stop);
                move || write_loop(db, &taken, &dropped, &stop)
            })?;
        Ok((
            Self {
                queue: Some(queue),
                pending,
                dropped,
            },
            RecorderThread { handle, stop },
        ))
    }

    /// Queues `row`, to be kept for `retention` (the policy's `[logging] retention_days`),
    /// or drops and counts it if the queue is full.
    pub fn send(&self, retention: Duration, row: RequestRow) {
        self.queue(Message::Request(retention, row));
    }

    /// Queues a lockout event, or drops and counts it if the queue is full (a lock has
    /// [`LOCK_RESERVE`] more room than anything else).
    pub fn auth_event(&self, event: AuthEvent) {
        let room = match event {
            AuthEvent::Locked { .. } => QUEUE + LOCK_RESERVE,
            AuthEvent::Failure { .. } => QUEUE,
        };
        self.queue_within(Message::Auth(event), room);
    }

    /// Queues a target's new health, or drops and counts it if the queue is full.
    pub fn target_health(&self, row: TargetHealthRow) {
        self.queue(Message::Health(row));
    }

    /// Queues a `no_log` request for the daily aggregates, kept for `retention`, or drops
    /// and counts it.
    pub fn aggregate(&self, retention: Duration, row: AggregateRow) {
        self.queue(Message::Aggregate(retention, row));
    }

    /// A recorder with no writer: everything sent is dropped and counted.
    #[cfg(test)]
    pub(crate) fn disconnected() -> Self {
        Self {
            queue: None,
            pending: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    fn queue(&self, message: Message) {
        self.queue_within(message, QUEUE);
    }

    /// Queues `message` unless `room` messages are already waiting.
    fn queue_within(&self, message: Message, room: usize) {
        let Some(queue) = &self.queue else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.pending.fetch_add(1, Ordering::Relaxed) >= room {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if queue.send(message).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
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

/// The writer's end of the queue: each message taken frees its slot.
struct Taken {
    rows: Receiver<Message>,
    pending: Arc<AtomicUsize>,
}

impl Taken {
    fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        let message = self.rows.recv_timeout(timeout)?;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        Ok(message)
    }

    /// Messages sent and not yet taken.
    fn waiting(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn try_recv(&self) -> Option<Message> {
        let message = self.rows.try_recv().ok()?;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        Some(message)
    }
}

/// Whether the writer goes on letting rows gather for its next transaction, `waiting` rows
/// being queued besides the first, already taken, and `elapsed` gone since: for up to a
/// window, unless a whole batch is there or the writer is stopping.
fn keep_gathering(waiting: usize, stopping: bool, elapsed: Duration) -> bool {
    !stopping && waiting + 1 < BATCH && elapsed < WINDOW
}

fn write_loop(mut db: StateDb, rows: &Taken, dropped: &AtomicU64, stop: &AtomicBool) {
    let mut reported = 0;
    let mut pruned: Option<Instant> = None;
    let mut retention = Duration::ZERO;
    loop {
        let first = match rows.recv_timeout(WINDOW) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => continue,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        };
        let gathering = Instant::now();
        while keep_gathering(
            rows.waiting(),
            stop.load(Ordering::Relaxed),
            gathering.elapsed(),
        ) {
            std::thread::sleep(GATHER_STEP);
        }
        let mut batch = Vec::new();
        let mut auth = Vec::new();
        let mut health = Vec::new();
        let mut aggregates = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next.take() {
            match message {
                Message::Request(kept_for, row) => {
                    retention = kept_for;
                    batch.push(row);
                }
                Message::Auth(event) => auth.push(event),
                Message::Health(row) => health.push(row),
                Message::Aggregate(kept_for, row) => {
                    retention = kept_for;
                    aggregates.push(row);
                }
            }
            taken += 1;
            if taken < BATCH {
                next = rows.try_recv();
            }
        }
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            let now = crate::ctx::now_ms();
            let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            if !batch.is_empty() || !aggregates.is_empty() {
                match db.prune_requests(now.saturating_sub(keep_ms)) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "old request metadata removed"),
                    Err(error) => tracing::warn!(%error, "could not remove old request metadata"),
                }
                if let Err(error) = db.prune_aggregates(now.saturating_sub(keep_ms)) {
                    tracing::warn!(%error, "could not remove old usage aggregates");
                }
            }
            let failures_ms = i64::try_from(AUTH_FAILURES_KEPT.as_millis()).unwrap_or(i64::MAX);
            if let Err(error) = db.prune_lockout(now.saturating_sub(failures_ms), now) {
                tracing::warn!(%error, "could not remove old lockout rows");
            }
            pruned = Some(Instant::now());
        }
        if !auth.is_empty()
            && let Err(error) = db.insert_auth_events(&auth)
        {
            dropped.fetch_add(auth.len() as u64, Ordering::Relaxed);
            tracing::warn!(%error, events = auth.len(), "could not write lockout events");
        }
        if !health.is_empty()
            && let Err(error) = db.write_target_health(&health)
        {
            dropped.fetch_add(health.len() as u64, Ordering::Relaxed);
            tracing::warn!(%error, rows = health.len(), "could not write target health");
        }
        if !aggregates.is_empty()
            && let Err(error) = db.add_aggregates(&aggregates)
        {
            dropped.fetch_add(aggregates.len() as u64, Ordering::Relaxed);
            tracing::warn!(%error, rows = aggregates.len(), "could not write usage aggregates");
        }
        if batch.is_empty() {
            continue;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorder whose queue nobody takes from unless the test does.
    fn queued() -> (Recorder, Receiver<Message>) {
        let (queue, rows) = channel();
        let recorder = Recorder {
            queue: Some(queue),
            pending: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (recorder, rows)
    }

    #[test]
    fn the_writer_lets_rows_gather_for_a_window_or_until_a_batch_is_queued() {
        let early = GATHER_STEP;
        assert!(keep_gathering(1, false, Duration::ZERO));
        assert!(keep_gathering(BATCH - 2, false, early));
        assert!(!keep_gathering(1, false, WINDOW));
        // A batch is written as soon as it is there: waiting out a window per batch capped
        // the writer at a batch per window, below what one busy core of proxy sends.
        assert!(!keep_gathering(BATCH - 1, false, early));
        assert!(!keep_gathering(QUEUE, false, Duration::ZERO));
        assert!(!keep_gathering(1, true, Duration::ZERO));
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_taking_a_message_frees_its_slot() {
        let (recorder, rows) = queued();
        let taken = Taken {
            rows,
            pending: Arc::clone(&recorder.pending),
        };
        for _ in 0..QUEUE + 3 {
            recorder.send(Duration::ZERO, RequestRow::default());
        }
        assert_eq!(recorder.dropped(), 3);
        assert!(taken.try_recv().is_some());
        recorder.send(Duration::ZERO, RequestRow::default());
        assert_eq!(recorder.dropped(), 3, "the slot taken was free again");
        recorder.send(Duration::ZERO, RequestRow::default());
        assert_eq!(recorder.dropped(), 4);
        let mut left = 0;
        while taken.try_recv().is_some() {
            left += 1;
        }
        assert_eq!(left, QUEUE);
        assert_eq!(recorder.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_queue_full_of_failures_still_takes_the_locks_they_cause() {
        let (recorder, rows) = queued();
        let failure = || AuthEvent::Failure {
            client: "192.0.2.1".to_owned(),
            at_ms: 0,
        };
        let lock = || AuthEvent::Locked {
            client: "192.0.2.1".to_owned(),
            until_ms: 1,
        };
        for _ in 0..QUEUE {
            recorder.auth_event(failure());
        }
        recorder.auth_event(failure());
        recorder.send(Duration::ZERO, RequestRow::default());
        assert_eq!(recorder.dropped(), 2, "the queue is full for all but locks");
        for _ in 0..LOCK_RESERVE {
            recorder.auth_event(lock());
        }
        assert_eq!(recorder.dropped(), 2, "every lock was queued");
        recorder.auth_event(lock());
        assert_eq!(recorder.dropped(), 3, "the reserve is bounded too");
        drop(recorder);
        let locks = rows
            .iter()
            .filter(|m| matches!(m, Message::Auth(AuthEvent::Locked { .. })))
            .count();
        assert_eq!(locks, LOCK_RESERVE);
    }

    #[test]
    fn a_recorder_whose_writer_is_gone_counts_what_it_drops() {
        let (recorder, rows) = queued();
        drop(rows);
        recorder.send(Duration::ZERO, RequestRow::default());
        assert_eq!(recorder.dropped(), 1);
        assert_eq!(recorder.pending.load(Ordering::Relaxed), 0);
    }
}
