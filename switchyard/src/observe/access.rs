//! Connection log lines, written by a dedicated thread so a slow disk or a blocked stdout
//! never stalls the proxy's workers; when the writer falls behind, lines are dropped and
//! counted rather than queued without bound.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Termination;
use crate::config::{LogConfig, LogFormat};

/// Lines buffered between workers and the writer thread.
const QUEUE: usize = 16 * 1024;

/// One finished connection, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    /// When it ended (RFC 3339, UTC).
    pub time: String,
    /// Listener name.
    pub listener: String,
    /// Client address (after PROXY protocol, if any).
    pub client: SocketAddr,
    /// Pool name, if one was chosen.
    pub pool: Option<String>,
    /// Server name, if one was connected.
    pub server: Option<String>,
    /// The tenant usage is accounted to (a pool with `resolver`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Connection lifetime in milliseconds.
    pub duration_ms: u64,
    /// Bytes from client to server.
    pub bytes_in: u64,
    /// Bytes from server to client.
    pub bytes_out: u64,
    /// Why it ended.
    pub termination: Termination,
}

impl ConnectionRecord {
    /// The record of a connection just accepted: nothing chosen or moved yet.
    pub fn accepted(listener: &str, client: SocketAddr) -> Self {
        Self {
            time: String::new(),
            listener: listener.to_string(),
            client,
            pool: None,
            server: None,
            tenant: None,
            duration_ms: 0,
            bytes_in: 0,
            bytes_out: 0,
            // Until the connection says otherwise.
            termination: Termination::ClientClosed,
        }
    }

    /// Stamps the end of a connection accepted at `started`: `time` now and `duration_ms`.
    pub fn finish(&mut self, started: std::time::Instant) {
        self.duration_ms = started.elapsed().as_millis() as u64;
        self.time = Self::now_string();
    }

    /// Stamps `time` with now.
    pub fn now_string() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    fn render(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            LogFormat::Text | LogFormat::Clf | LogFormat::Combined => format!(
                "{} listener={} client={} pool={} server={} duration_ms={} bytes_in={} bytes_out={} termination={}",
                self.time,
                self.listener,
                self.client,
                self.pool.as_deref().unwrap_or("-"),
                self.server.as_deref().unwrap_or("-"),
                self.duration_ms,
                self.bytes_in,
                self.bytes_out,
                self.termination
            ),
        }
    }
}

/// What the writer thread is sent: a line, or a request to flush and acknowledge.
#[derive(Debug)]
enum Message {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// The connection/access log sink.
#[derive(Debug)]
pub struct AccessLog {
    sender: Option<SyncSender<Message>>,
    format: LogFormat,
    /// Lines dropped because the writer could not keep up.
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            sender: None,
            format: LogFormat::Json,
            dropped: AtomicU64::new(0),
        }
    }

    /// Opens the configured destination and starts the writer thread.
    pub fn open(config: &LogConfig, config_dir: &Path) -> std::io::Result<Self> {
        let writer: Box<dyn Write + Send> = match config.access.as_str() {
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
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, writer))?;
        Ok(Self {
            sender: Some(sender),
            format: config.format,
            dropped: AtomicU64::new(0),
        })
    }

    /// Waits (up to `limit`) until every line queued so far is written, so that lines logged
    /// just before the process exits are not lost.
    pub fn flush(&self, limit: Duration) {
        let Some(sender) = &self.sender else {
            return;
        };
        let deadline = std::time::Instant::now() + limit;
        let (ack, done) = mpsc::channel();
        let mut message = Message::Flush(ack);
        loop {
            match sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }

    /// Queues one record.
    pub fn log(&self, record: &ConnectionRecord) {
        self.log_with(|format| record.render(format));
    }

    /// Whether lines are written at all: what only a line would show need not be measured.
    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues one line that `render` writes in the configured format (protocols with their
    /// own record shape, such as HTTP requests); `render` is not called when the log is off.
    pub fn log_with(&self, render: impl FnOnce(LogFormat) -> String) {
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(Message::Line(render(self.format))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_lines(receiver: Receiver<Message>, writer: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(writer);
    while let Ok(first) = receiver.recv() {
        // Batch whatever else is already waiting, then flush once.
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let _ = writeln!(out, "{line}");
                }
                Message::Flush(ack) => acks.push(ack),
            }
            next = receiver.recv_timeout(Duration::ZERO).ok();
        }
        let _ = out.flush();
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
