//! A build's log while it runs: batched into Postgres, kept whole for `log.txt`.
//!
//! Step output arrives as byte chunks on a channel. The [`pump`] task batches
//! them and appends each batch to the build's live log in the queue (every
//! [`FLUSH_EVERY`] or [`FLUSH_BYTES`], whichever comes first), so any API
//! instance can follow the build. It also keeps the whole log (up to
//! [`MAX_LOG_BYTES`]) for the stored `log.txt` and for the tail quoted in a
//! failure message. [`Batcher`] is the pure part: bytes in, UTF-8 text out,
//! never splitting a multi-byte character between two batches.

use std::time::Duration;

use bytes::Bytes;
use kiln_queue::{Lease, Queue, QueueError};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest a line waits before it is written to the live log.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A batch this large is written at once.
pub const FLUSH_BYTES: usize = 16 * 1024;
/// The most log one build keeps; later output is dropped with a note.
pub const MAX_LOG_BYTES: usize = 32 * 1024 * 1024;

/// Bytes in, UTF-8 batches out.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Vec<u8>,
}

impl Batcher {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The pending text. An incomplete UTF-8 sequence at the end is kept for
    /// the next batch unless `flush_all`; invalid bytes become U+FFFD.
    pub fn take(&mut self, flush_all: bool) -> Option<String> {
        let keep = if flush_all { 0 } else { incomplete_tail(&self.pending) };
        let cut = self.pending.len() - keep;
        if cut == 0 {
            return None;
        }
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        Some(text)
    }
}

/// How many bytes at the end of `b` are the start of a UTF-8 character that
/// has not fully arrived yet.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead
        }
        let needed = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// The whole log of one attempt, as far as it was kept.
#[derive(Debug, Default, Clone)]
pub struct LogRecord {
    pub text: String,
    /// Bytes of output dropped past [`MAX_LOG_BYTES`].
    pub dropped: u64,
    /// The first error writing to the live log, if any (the lease was lost,
    /// or the database failed); the log was still kept locally.
    pub live_error: Option<String>,
}

/// The last `lines` lines of `text`, at most 4 KiB.
pub fn tail(text: &str, lines: usize) -> String {
    let trimmed = text.trim_end();
    let start = trimmed.rmatch_indices('\n').nth(lines.saturating_sub(1)).map_or(0, |(i, _)| i + 1);
    let mut t = &trimmed[start..];
    const MAX: usize = 4096;
    if t.len() > MAX {
        let mut from = t.len() - MAX;
        while !t.is_char_boundary(from) {
            from += 1;
        }
        t = &t[from..];
    }
    t.to_owned()
}

/// Batch what arrives on `rx` into the live log of `lease` until every sender
/// is gone; then return the whole log.
pub async fn pump(queue: Queue, lease: Lease, mut rx: mpsc::Receiver<Bytes>) -> LogRecord {
    let mut record = LogRecord::default();
    let mut batch = Batcher::default();
    let mut live = true;
    let mut deadline: Option<Instant> = None;
    let write = async |batch: &mut Batcher, all: bool, record: &mut LogRecord, live: &mut bool| {
        let Some(text) = batch.take(all) else { return };
        if *live && let Err(e) = queue.append_log(&lease, &text).await {
            // A lost lease: the job is being stopped, stop writing. A database
            // error: this batch is missing from the live log (log.txt still
            // has it); try again with the next one.
            if matches!(e, QueueError::LeaseLost { .. }) {
                *live = false;
            } else if record.live_error.is_none() {
                tracing::warn!(build = %lease.key, error = %e, "could not append to the live log");
            }
            record.live_error.get_or_insert_with(|| e.to_string());
        }
        record.text.push_str(&text);
    };
    loop {
        let received = match deadline {
            Some(d) => tokio::select! {
                r = rx.recv() => Some(r),
                _ = tokio::time::sleep_until(d) => None,
            },
            None => Some(rx.recv().await),
        };
        match received {
            Some(Some(chunk)) => {
                let room = MAX_LOG_BYTES.saturating_sub(record.text.len() + batch.len());
                if chunk.len() > room {
                    batch.push(&chunk[..room]);
                    if record.dropped == 0 {
                        batch.push(format!("\n[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n").as_bytes());
                    }
                    record.dropped += (chunk.len() - room) as u64;
                } else {
                    batch.push(&chunk);
                }
                if batch.len() >= FLUSH_BYTES {
                    write(&mut batch, false, &mut record, &mut live).await;
                    deadline = None;
                }
                if !batch.is_empty() && deadline.is_none() {
                    deadline = Some(Instant::now() + FLUSH_EVERY);
                }
            }
            // Every sender is gone: the attempt is over.
            Some(None) => {
                write(&mut batch, true, &mut record, &mut live).await;
                return record;
            }
            // The flush deadline passed.
            None => {
                write(&mut batch, false, &mut record, &mut live).await;
                deadline = (!batch.is_empty()).then(|| Instant::now() + FLUSH_EVERY);
            }
        }
    }
}

/// The last bytes of a step's output, quoted when the step fails.
#[derive(Debug, Default)]
pub(crate) struct TailBuffer {
    bytes: std::collections::VecDeque<u8>,
}

impl TailBuffer {
    const MAX: usize = 8 * 1024;

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(Self::MAX)..];
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(Self::MAX);
        self.bytes.drain(..overflow);
        self.bytes.extend(chunk);
    }

    pub(crate) fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }
}

/// An argv as one readable line for the log (not for any shell).
pub(crate) fn quote_argv(argv: &[String]) -> String {
    let quote = |a: &String| {
        let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
        if plain { a.clone() } else { format!("{a:?}") }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_never_split_a_character() {
        let text = "héllo → wörld 🎉\n";
        let bytes = text.as_bytes();
        for size in 1..=bytes.len() {
            let mut b = Batcher::default();
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                b.push(chunk);
                if let Some(t) = b.take(false) {
                    assert!(!t.contains('\u{FFFD}'), "split at {size}: {t:?}");
                    out.push_str(&t);
                }
            }
            out.push_str(&b.take(true).unwrap_or_default());
            assert_eq!(out, text, "chunk size {size}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut b = Batcher::default();
        b.push(b"ok \xff\xfe done\n");
        assert_eq!(b.take(false).unwrap(), "ok \u{FFFD}\u{FFFD} done\n");
        // A dangling lead byte is held back until the end, then replaced.
        b.push(b"x\xe2\x82");
        assert_eq!(b.take(false).unwrap(), "x");
        assert_eq!(b.take(false), None);
        assert_eq!(b.take(true).unwrap(), "\u{FFFD}");
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail("a\nb\nc\nd\n", 2), "c\nd");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
        let long = "x".repeat(10_000);
        assert_eq!(tail(&long, 1).len(), 4096);
    }
}
