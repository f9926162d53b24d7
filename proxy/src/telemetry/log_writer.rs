//! Log files written off the request path. Request handlers hand finished lines to a
//! bounded channel and never wait: a writer thread of its own drains it into a buffered
//! file and flushes whenever the channel runs dry, so a slow disk costs lines, never
//! latency. When the channel is full a line is dropped and counted
//! (`vigil_log_lines_dropped_total{log}`), which is what an operator sees instead of a
//! proxy that stalls.
//!
//! A plain thread rather than a tokio task: file writes block, and the traffic runtime's
//! few worker threads must not.

use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// Lines waiting for the writer before new ones are dropped.
pub const CAPACITY: usize = 8192;

/// The sending side of one log file.
pub struct LineWriter {
    lines: SyncSender<Vec<u8>>,
    dropped: Counter,
}

impl LineWriter {
    /// Starts the writer thread for `out`, named after `log` (`decision`, `access`);
    /// `dropped` counts the lines that found the channel full.
    pub fn start(
        log: &'static str,
        out: Box<dyn Write + Send>,
        dropped: Counter,
    ) -> std::io::Result<LineWriter> {
        let (lines, receiver) = sync_channel(CAPACITY);
        std::thread::Builder::new()
            .name(format!("vigil-{log}-log"))
            .spawn(move || drain(receiver, out))?;
        Ok(LineWriter { lines, dropped })
    }

    /// Queues one line (a newline is added when missing); never blocks.
    pub fn write_line(&self, mut line: Vec<u8>) {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// Writes lines as they come, flushing once nothing more is waiting, until every
/// sender is gone.
fn drain(receiver: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = receiver.recv() {
        let _ = out.write_all(&line);
        while let Ok(more) = receiver.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// A destination that hangs, while `stuck` is set, once a write has begun
    /// (`entered`), as a disk that stopped answering does.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        stuck: Arc<Mutex<bool>>,
        entered: Arc<Mutex<bool>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            *self.entered.lock().unwrap() = true;
            while *self.stuck.lock().unwrap() {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(sink: &Sink, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
            if text.lines().count() >= lines || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_arrive_in_order_with_newlines() {
        let sink = Sink::default();
        let writer = LineWriter::start("test", Box::new(sink.clone()), Counter::default()).unwrap();
        writer.write_line(b"one".to_vec());
        writer.write_line(b"two\n".to_vec());
        assert_eq!(wait_for(&sink, 2), "one\ntwo\n");
    }

    #[test]
    fn a_stuck_disk_drops_and_counts_lines_instead_of_blocking() {
        let sink = Sink::default();
        *sink.stuck.lock().unwrap() = true;
        let dropped = Counter::default();
        let writer = LineWriter::start("test", Box::new(sink.clone()), dropped.clone()).unwrap();
        writer.write_line(b"first".to_vec());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !*sink.entered.lock().unwrap() {
            assert!(Instant::now() < deadline, "the writer never wrote");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The writer is stuck in the disk: the channel takes CAPACITY lines, the rest are
        // dropped and counted, and no call waits.
        for i in 0..CAPACITY + 100 {
            writer.write_line(format!("line {i}").into_bytes());
        }
        assert_eq!(dropped.get(), 100);
        *sink.stuck.lock().unwrap() = false;
        let written = wait_for(&sink, CAPACITY + 1);
        assert_eq!(written.lines().count(), CAPACITY + 1);
    }
}
