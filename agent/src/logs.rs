//! Capture of agent output: every byte an agent writes goes unchanged into its log file, and
//! its complete lines go to the supervisor's stdout prefixed `[agent-<k>] `, so
//! `kubectl logs` and log shippers see every agent in one stream.
//!
//! Capture works on bytes: non-UTF-8 output passes through as it is, and a line longer than
//! [`MAX_LINE`] is cut into pieces on stdout (each piece prefixed) instead of growing a
//! buffer without bound. One thread owns the supervisor's stdout, so lines of different
//! agents never interleave mid-line.

use std::fs::File;
use std::io::{self, Write};
use std::thread::JoinHandle;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Longest line piece written to stdout; longer lines are split (the log file keeps them whole).
pub const MAX_LINE: usize = 16 * 1024;

/// Bytes read from an agent's pipe at once (the size of a Linux pipe buffer).
const READ_CHUNK: usize = 64 * 1024;

/// Batches queued for the stdout writer before readers wait (back-pressure).
const STDOUT_QUEUE: usize = 256;

/// Splits a byte stream into prefixed lines for the shared stdout.
///
/// Pure: feed it chunks as they arrive, it appends whole prefixed lines to `out` and keeps
/// the unfinished tail for the next chunk.
#[derive(Debug)]
pub struct LineSplitter {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(prefix: impl Into<Vec<u8>>) -> Self {
        LineSplitter {
            prefix: prefix.into(),
            partial: Vec::new(),
        }
    }

    /// Appends the complete lines of `chunk` (with what was left from earlier chunks) to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &chunk[..chunk.len().min(room)];
            match memchr::memchr(b'\n', window) {
                Some(end) => {
                    self.emit(&window[..end], out);
                    chunk = &chunk[end + 1..];
                }
                None if window.len() == room => {
                    self.emit(window, out);
                    chunk = &chunk[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    chunk = &[];
                }
            }
        }
    }

    /// Ends the stream: an unfinished last line is written with a newline added.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            self.emit(&[], out);
        }
    }

    fn emit(&mut self, tail: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&self.partial);
        out.extend_from_slice(tail);
        out.push(b'\n');
        self.partial.clear();
    }
}

/// The supervisor's stdout, shared by all agents' captures.
///
/// A dedicated thread does the (blocking) writes, so a slow reader of the container log
/// slows the agents down through their pipes instead of stalling the supervisor's runtime.
#[derive(Debug, Clone)]
pub struct StdoutSink {
    tx: mpsc::Sender<Vec<u8>>,
}

impl StdoutSink {
    /// Starts the writer thread; it ends once every clone of the sink is dropped.
    pub fn spawn(mut writer: impl Write + Send + 'static) -> (StdoutSink, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STDOUT_QUEUE);
        let thread = std::thread::Builder::new()
            .name("agent-stdout".into())
            .spawn(move || {
                while let Some(batch) = rx.blocking_recv() {
                    // A closed stdout must not stop capture to the log files.
                    if writer.write_all(&batch).is_err() {
                        continue;
                    }
                    if rx.is_empty() {
                        let _ = writer.flush();
                    }
                }
                let _ = writer.flush();
            })
            .expect("the system can start one more thread");
        (StdoutSink { tx }, thread)
    }

    async fn send(&self, batch: Vec<u8>) {
        // The writer only goes away after every sink is dropped.
        let _ = self.tx.send(batch).await;
    }
}

/// Copies one agent stream until end of file: all bytes to `file`, prefixed lines to `stdout`.
///
/// Returns the number of bytes captured. A failing log file (disk full) is reported once the
/// stream ends; the stream is still drained so the agent never blocks on a full pipe.
pub async fn capture(
    mut reader: impl AsyncRead + Unpin,
    mut file: File,
    prefix: Vec<u8>,
    stdout: Option<StdoutSink>,
) -> io::Result<u64> {
    let mut splitter = LineSplitter::new(prefix);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    let mut file_error = None;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        let chunk = &buf[..n];
        if file_error.is_none()
            && let Err(err) = file.write_all(chunk)
        {
            file_error = Some(err);
        }
        if let Some(sink) = &stdout {
            let mut lines = Vec::with_capacity(n + n / 8 + 256);
            splitter.feed(chunk, &mut lines);
            if !lines.is_empty() {
                sink.send(lines).await;
            }
        }
    }
    if let Some(sink) = &stdout {
        let mut lines = Vec::new();
        splitter.finish(&mut lines);
        if !lines.is_empty() {
            sink.send(lines).await;
        }
    }
    match file_error {
        Some(err) => Err(err),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<u8> {
        let mut splitter = LineSplitter::new(b"[a] ".to_vec());
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, &mut out);
        }
        splitter.finish(&mut out);
        out
    }

    #[test]
    fn prefixes_every_line() {
        assert_eq!(split(&[b"one\ntwo\n"]), b"[a] one\n[a] two\n");
    }

    #[test]
    fn joins_a_line_split_across_chunks() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n"]),
            b"[a] hello\n[a] world\n"
        );
    }

    #[test]
    fn ends_an_unfinished_last_line() {
        assert_eq!(split(&[b"no newline"]), b"[a] no newline\n");
    }

    #[test]
    fn keeps_empty_lines() {
        assert_eq!(split(&[b"\n\n"]), b"[a] \n[a] \n");
    }

    #[test]
    fn passes_non_utf8_bytes_through() {
        assert_eq!(split(&[b"\xff\xfe ok\n"]), b"[a] \xff\xfe ok\n");
    }

    #[test]
    fn cuts_long_lines_into_prefixed_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input[..100], &input[100..]]);
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.starts_with(b"[a] ")));
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE + 4));
        let joined: Vec<u8> = lines.iter().flat_map(|l| l[4..].to_vec()).collect();
        assert_eq!(joined, long);
    }
}
