//! The guest's serial console: qemu's stdout, relayed to our log line by line with the
//! `guest` target, and kept in a bounded ring buffer for later readers (web console,
//! `kvm-manager console`, error messages).

use crate::locked::Locked as _;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// A line longer than this is emitted in pieces.
const MAX_LINE: usize = 4096;
/// A partial line (a login prompt) is emitted after this much silence.
const FLUSH_AFTER: Duration = Duration::from_millis(300);

/// The last lines of some output, bounded by a line count.
#[derive(Debug)]
pub(crate) struct Ring {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            lines: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    pub(crate) fn push(&self, line: String) {
        let mut lines = self.lines.locked();
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines.locked().iter().cloned().collect()
    }
}

/// Which log an output stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The guest's serial console (qemu's stdout).
    Guest,
    /// qemu's own messages (its stderr).
    Qemu,
}

/// Relays `reader` line by line into the log and `ring` until EOF; raw chunks also go to
/// `raw` (attached `kvm-manager console` sessions), when given.
pub(crate) async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: Stream,
    ring: &Ring,
    raw: Option<&broadcast::Sender<Vec<u8>>>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = if pending.is_empty() {
            reader.read(&mut chunk).await
        } else {
            match tokio::time::timeout(FLUSH_AFTER, reader.read(&mut chunk)).await {
                Ok(read) => read,
                Err(_) => {
                    emit(&std::mem::take(&mut pending), stream, ring);
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(raw) = raw {
            // No receivers is the normal case: nobody attached.
            let _ = raw.send(chunk[..n].to_vec());
        }
        for &byte in &chunk[..n] {
            if byte == b'\n' {
                emit(&std::mem::take(&mut pending), stream, ring);
            } else {
                pending.push(byte);
                if pending.len() >= MAX_LINE {
                    emit(&std::mem::take(&mut pending), stream, ring);
                }
            }
        }
    }
    if !pending.is_empty() {
        emit(&pending, stream, ring);
    }
}

fn emit(bytes: &[u8], stream: Stream, ring: &Ring) {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text
        .trim_end_matches('\r')
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect();
    if line.trim().is_empty() {
        return;
    }
    match stream {
        Stream::Guest => tracing::info!(target: "guest", "{line}"),
        Stream::Qemu => tracing::warn!(target: "qemu", "{line}"),
    }
    ring.push(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_strips_control_bytes_and_keeps_the_tail() {
        let ring = Ring::new(2);
        let input: &[u8] = b"first\r\nsec\x1b[0mond\nthird\nno newline";
        pump(input, Stream::Guest, &ring, None).await;
        assert_eq!(
            ring.snapshot(),
            vec!["third".to_owned(), "no newline".to_owned()]
        );
        let ring = Ring::new(10);
        pump(&b"a\r\nb\x1b[0mc\n"[..], Stream::Guest, &ring, None).await;
        assert_eq!(ring.snapshot(), vec!["a".to_owned(), "b[0mc".to_owned()]);
    }

    #[tokio::test]
    async fn overlong_lines_are_cut() {
        let ring = Ring::new(10);
        let input = vec![b'x'; MAX_LINE + 10];
        pump(&input[..], Stream::Guest, &ring, None).await;
        let lines = ring.snapshot();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
    }
}
