//! The access log sink. A line costs its worker no system call: the worker writes it into
//! its own batch (one per worker, behind a lock no other worker takes), stamped with a
//! time rendered once per millisecond. A full batch is handed to the writer thread, which
//! is woken once per batch; the writer also takes what every batch holds each tick, so an
//! idle worker's lines go out too. A slow disk or a blocked stdout never stalls a worker:
//! past [`QUEUE_BYTES`] waiting, batches are dropped and their lines counted. Closing the
//! log (at the end of the process) writes out every batch and ends the writer.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

use super::ConnectionRecord;
use super::clock::Clock;
use super::line::Line;
use crate::config::{LogConfig, LogFormat};
use crate::workers::worker_slot;

/// Batches: one for the threads off the workers, the rest one per worker (workers past
/// them share, behind the same lock).
const SHARDS: usize = 16;

/// A batch is handed to the writer once it holds this much.
const BATCH_BYTES: usize = 64 * 1024;

/// Room past [`BATCH_BYTES`] a new batch is made with, so that the line that fills it
/// seldom grows it.
const BATCH_SLACK: usize = 16 * 1024;

/// Bytes of full batches that may wait for the writer; past it batches are dropped.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How often the writer takes the lines of batches that are not full: the most a line
/// waits before it is written when its worker logs little.
const TICK: Duration = Duration::from_millis(50);

/// The connection/access log sink.
#[derive(Debug)]
pub struct AccessLog {
    /// `None` when the log is off.
    sink: Option<Arc<Sink>>,
}

/// What workers and the writer thread share.
#[derive(Debug)]
struct Sink {
    format: LogFormat,
    shards: [Shard; SHARDS],
    /// Bytes in full batches not yet written, all shards together.
    queued: AtomicUsize,
    /// Lines lost: dropped because the writer could not keep up, or not written because
    /// the destination failed.
    dropped: AtomicU64,
    /// The writer thread, woken for a full batch and to close.
    writer: OnceLock<Thread>,
    /// The log is closed: the writer writes what is left and ends.
    closed: AtomicBool,
    /// Set by the writer when it has written its last round and ends.
    ended: Mutex<bool>,
    writer_ended: Condvar,
}

/// One worker's lines, on cache lines of their own (workers do not share them).
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Pending>);

/// Lines a worker has logged that the writer has not taken yet.
#[derive(Debug, Default)]
struct Pending {
    /// The batch being filled.
    filling: Batch,
    /// Full batches, oldest first.
    full: VecDeque<Batch>,
    clock: Clock,
}

/// Whole lines, each ending in a newline.
#[derive(Debug, Default)]
struct Batch {
    text: Vec<u8>,
    lines: u64,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        Self { sink: None }
    }

    /// Opens the configured destination and starts the writer thread.
    pub fn open(config: &LogConfig, config_dir: &Path) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match config.access.as_str() {
            "off" => return Ok(Self::off()),
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(config_dir.join(path))?,
            ),
        };
        Self::start(out, config.format, TICK)
    }

    /// A log writing to `out`, taking unfilled batches every `tick`.
    fn start(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        tick: Duration,
    ) -> std::io::Result<Self> {
        let sink = Arc::new(Sink {
            format,
            shards: Default::default(),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            writer: OnceLock::new(),
            closed: AtomicBool::new(false),
            ended: Mutex::new(false),
            writer_ended: Condvar::new(),
        });
        let writer = sink.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.write_lines(out, tick))?;
        let _ = sink.writer.set(thread.thread().clone());
        Ok(Self { sink: Some(sink) })
    }

    /// Writes out every line logged so far and ends the writer thread, waiting up to
    /// `limit` for a destination slow to take them: the last thing a process does with its
    /// log, so that the lines of its last connections are not lost. Nothing must be logged
    /// after it (such lines are never written).
    pub fn close(&self, limit: Duration) {
        let Some(sink) = &self.sink else {
            return;
        };
        sink.close();
        let deadline = Instant::now() + limit;
        let mut ended = lock(&sink.ended);
        while !*ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            ended = sink
                .writer_ended
                .wait_timeout(ended, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Logs one connection.
    pub fn log(&self, record: &ConnectionRecord) {
        self.log_with(|line| record.write(line));
    }

    /// Whether lines are written at all: what only a line would show need not be measured.
    pub fn is_on(&self) -> bool {
        self.sink.is_some()
    }

    /// Lines lost so far: dropped because the writer could not keep up, or not written
    /// because the destination failed.
    pub fn dropped(&self) -> u64 {
        self.sink
            .as_ref()
            .map_or(0, |sink| sink.dropped.load(Ordering::Relaxed))
    }

    /// Logs one line that `write` writes (in the configured format, which the line tells);
    /// `write` is not called when the log is off, and a line it leaves empty is not logged.
    pub fn log_with(&self, write: impl FnOnce(&mut Line<'_>)) {
        let Some(sink) = &self.sink else {
            return;
        };
        let now = SystemTime::now();
        let mut pending = lock(&sink.shards[worker_slot(SHARDS)].0);
        let pending = &mut *pending;
        pending.clock.set(now);
        let start = pending.filling.text.len();
        write(&mut Line::new(
            sink.format,
            &pending.clock,
            &mut pending.filling.text,
        ));
        if pending.filling.text.len() == start {
            return;
        }
        pending.filling.text.push(b'\n');
        pending.filling.lines += 1;
        if pending.filling.text.len() >= BATCH_BYTES {
            sink.hand_over(pending);
        }
    }
}

impl Drop for AccessLog {
    /// Nothing can log any more: the writer writes what is left and ends (not waited for,
    /// since a worker may drop the last reference).
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            sink.close();
        }
    }
}

impl Sink {
    /// Queues a worker's full batch for the writer, or drops it (counting its lines) when
    /// [`QUEUE_BYTES`] already wait.
    fn hand_over(&self, pending: &mut Pending) {
        let bytes = pending.filling.text.len();
        if self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped
                .fetch_add(pending.filling.lines, Ordering::Relaxed);
            pending.filling.text.clear();
            pending.filling.lines = 0;
            return;
        }
        let fresh = Batch {
            text: Vec::with_capacity(BATCH_BYTES + BATCH_SLACK),
            lines: 0,
        };
        pending
            .full
            .push_back(std::mem::replace(&mut pending.filling, fresh));
        self.wake_writer();
    }

    /// Asks the writer for a last round.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// The writer thread: writes full batches as they come and, each `tick`, what every
    /// batch holds; ends (after a last round of everything) when the log is closed.
    fn write_lines(&self, mut out: Box<dyn Write + Send>, tick: Duration) {
        let mut failing = false;
        let mut unfilled = Vec::new();
        let mut next_tick = Instant::now() + tick;
        loop {
            std::thread::park_timeout(next_tick.saturating_duration_since(Instant::now()));
            // Read before the round: what was logged before the log closed is written by it.
            let closed = self.closed.load(Ordering::SeqCst);
            // Woken for a full batch, only full batches are written: the others fill on.
            let all = closed || Instant::now() >= next_tick;
            if all {
                next_tick = Instant::now() + tick;
            }
            for shard in &self.shards {
                let (full, unfilled_lines) = {
                    let mut pending = lock(&shard.0);
                    let unfilled_lines = if all {
                        unfilled.clear();
                        unfilled.extend_from_slice(&pending.filling.text);
                        pending.filling.text.clear();
                        std::mem::take(&mut pending.filling.lines)
                    } else {
                        0
                    };
                    (std::mem::take(&mut pending.full), unfilled_lines)
                };
                for batch in full {
                    self.write_batch(&mut out, &batch.text, batch.lines, &mut failing);
                    self.queued.fetch_sub(batch.text.len(), Ordering::Relaxed);
                }
                if unfilled_lines > 0 {
                    self.write_batch(&mut out, &unfilled, unfilled_lines, &mut failing);
                }
            }
            if let Err(error) = out.flush() {
                self.write_failed(&error, 0, &mut failing);
            }
            if closed {
                // `out` is closed before the log says it ended.
                drop(out);
                *lock(&self.ended) = true;
                self.writer_ended.notify_all();
                return;
            }
        }
    }

    /// Writes whole lines; lines the destination refuses are counted as dropped.
    fn write_batch(&self, out: &mut impl Write, text: &[u8], lines: u64, failing: &mut bool) {
        if text.is_empty() {
            return;
        }
        match out.write_all(text) {
            Ok(()) => *failing = false,
            Err(error) => self.write_failed(&error, lines, failing),
        }
    }

    /// Counts `lines` lost to a failed write, saying so once per run of failures.
    fn write_failed(&self, error: &std::io::Error, lines: u64, failing: &mut bool) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        if !std::mem::replace(failing, true) {
            tracing::warn!(%error, "cannot write the access log; its lines are dropped and counted until it can");
        }
    }
}

/// Locks `mutex`, through a poisoning: what it guards stays consistent line by line.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::workers::Workers;

    /// Longer than any test: lines go out only in full batches or when the log closes.
    const NEVER: Duration = Duration::from_secs(3600);

    fn log_to_file(tick: Duration) -> (AccessLog, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let out = file.reopen().expect("reopen");
        let log = AccessLog::start(Box::new(out), LogFormat::Text, tick).expect("start");
        (log, file)
    }

    fn lines_in(file: &tempfile::NamedTempFile) -> Vec<String> {
        std::fs::read_to_string(file.path())
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until `file` holds at least `count` lines.
    fn wait_for_lines(file: &tempfile::NamedTempFile, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = lines_in(file);
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn log_text(log: &AccessLog, text: &str) {
        log.log_with(|line| {
            let _ = line.write_str(text);
        });
    }

    #[test]
    fn closing_writes_what_every_worker_holds() {
        let (log, file) = log_to_file(NEVER);
        let log = Arc::new(log);
        let workers = Workers::start(Some(3)).expect("workers");
        let (done, finished) = std::sync::mpsc::channel();
        for worker in 0..3 {
            let (log, done) = (log.clone(), done.clone());
            workers.handle(worker).spawn(async move {
                for n in 0..5 {
                    log_text(&log, &format!("worker {worker} line {n}"));
                }
                let _ = done.send(());
            });
        }
        for _ in 0..3 {
            finished.recv().expect("a worker logged");
        }
        log_text(&log, "off the workers");
        log.close(Duration::from_secs(30));
        let lines = lines_in(&file);
        assert_eq!(lines.len(), 16, "{lines:?}");
        for worker in 0..3 {
            let own: Vec<&String> = lines
                .iter()
                .filter(|line| line.starts_with(&format!("worker {worker} ")))
                .collect();
            let expected: Vec<String> = (0..5)
                .map(|n| format!("worker {worker} line {n}"))
                .collect();
            assert_eq!(own, expected.iter().collect::<Vec<_>>(), "in order");
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_full_batch_goes_out_without_waiting_for_the_tick() {
        let (log, file) = log_to_file(NEVER);
        let line = "x".repeat(999);
        // The line that fills the batch is in it; the next ones wait for the next batch.
        let count = BATCH_BYTES / 1000 + 1;
        for _ in 0..count + 3 {
            log_text(&log, &line);
        }
        assert_eq!(wait_for_lines(&file, count).len(), count);
        log.close(Duration::from_secs(30));
        assert_eq!(lines_in(&file).len(), count + 3, "the rest at the close");
    }

    #[test]
    fn a_quiet_workers_lines_go_out_on_the_tick() {
        let (log, file) = log_to_file(Duration::from_millis(10));
        log_text(&log, "one line");
        assert_eq!(wait_for_lines(&file, 1), ["one line"]);
    }

    #[test]
    fn lines_are_stamped_when_logged_and_empty_ones_are_not_logged() {
        let (log, file) = log_to_file(NEVER);
        log.log_with(|_| {});
        log.log_with(|line| {
            let time = line.time();
            let _ = write!(line, "at {time}");
        });
        log.close(Duration::from_secs(30));
        let lines = lines_in(&file);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let stamp = lines[0].strip_prefix("at ").expect("stamped");
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
    }

    #[test]
    fn a_blocked_destination_drops_and_counts_lines_and_never_blocks_the_logger() {
        let (out, mut reader) = UnixStream::pair().expect("socket pair");
        let log = AccessLog::start(Box::new(out), LogFormat::Text, NEVER).expect("start");
        // Twice what may wait: nobody reads until every line is logged.
        let line = "y".repeat(1023);
        let logged = 2 * QUEUE_BYTES / 1024;
        for _ in 0..logged {
            log_text(&log, &line);
        }
        let dropped = log.dropped();
        assert!(dropped > 0, "nothing dropped");
        let reading = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = reader.read_to_end(&mut text);
            text
        });
        // The writer ends and closes its end once the reader has taken what it writes.
        log.close(Duration::from_secs(60));
        let text = reading.join().expect("reader");
        let written = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        assert_eq!(written + dropped, logged as u64);
    }

    #[test]
    fn lines_the_destination_refuses_are_counted_as_dropped() {
        let (out, reader) = UnixStream::pair().expect("socket pair");
        drop(reader);
        let log = AccessLog::start(Box::new(out), LogFormat::Text, NEVER).expect("start");
        for n in 0..3 {
            log_text(&log, &format!("line {n}"));
        }
        log.close(Duration::from_secs(30));
        assert_eq!(log.dropped(), 3);
    }
}
