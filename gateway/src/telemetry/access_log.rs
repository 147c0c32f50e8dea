//! The access log: the request path formats a line and hands it to a writer thread through a
//! bounded channel, so a slow disk or a blocked stdout never holds a request. When the channel
//! is full the line is dropped and counted.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use meshgate_policy::compiled::AccessLogTarget;
use prometheus::IntCounter;

const QUEUE_LINES: usize = 16 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// A running access log writer for one target.
pub struct AccessLog {
    target: AccessLogTarget,
    sender: SyncSender<String>,
    dropped: IntCounter,
    writer: std::thread::JoinHandle<()>,
}

impl AccessLog {
    /// Starts a writer thread for `target`; `None` for [`AccessLogTarget::Off`].
    pub fn start(target: &AccessLogTarget, dropped: IntCounter) -> std::io::Result<Option<Self>> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, BufWriter::with_capacity(64 * 1024, sink)))?;
        Ok(Some(AccessLog {
            target: target.clone(),
            sender,
            dropped,
            writer,
        }))
    }

    /// Checks that `target` can be opened for appending, without starting a writer.
    pub fn check(target: &AccessLogTarget) -> std::io::Result<()> {
        if let AccessLogTarget::File(path) = target {
            OpenOptions::new().create(true).append(true).open(path)?;
        }
        Ok(())
    }

    /// The target this writer writes to.
    pub fn target(&self) -> &AccessLogTarget {
        &self.target
    }

    /// Writes what is queued and stops the writer thread.
    pub fn close(self) {
        drop(self.sender);
        let _ = self.writer.join();
    }

    /// Queues one line (without its newline); never blocks.
    pub fn log(&self, line: String) {
        match self.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_lines(receiver: Receiver<String>, mut out: BufWriter<Box<dyn Write + Send>>) {
    loop {
        match receiver.recv_timeout(FLUSH_EVERY) {
            Ok(line) => {
                let _ = out.write_all(line.as_bytes());
                let _ = out.write_all(b"\n");
                // Drain what is queued before flushing, so a burst costs one write.
                while let Ok(line) = receiver.try_recv() {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}
