//! A TCP proxy in front of a server that counts what the client sends: the bytes an
//! uploader puts on the wire, measured outside the uploader's own counters, and how many
//! part uploads (`partNumber=` in a request line) went through. It can also slow the
//! client's bytes down, so a test can catch an upload half-way.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What went through the proxy, shared with its threads.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    parts: AtomicU64,
    requests: AtomicU64,
}

/// A counting proxy on 127.0.0.1, stopped on Drop.
pub struct CountingProxy {
    port: u16,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

const PART_MARKER: &[u8] = b"partNumber=";
const REQUEST_MARKER: &[u8] = b" HTTP/1.1\r\n";

impl CountingProxy {
    /// Forwards connections on a free port to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> CountingProxy {
        CountingProxy::start_throttled(upstream, None)
    }

    /// Like [`CountingProxy::start`], passing at most `bytes_per_second` from the clients
    /// (all connections together).
    pub fn start_throttled(upstream: &str, bytes_per_second: Option<u64>) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (thread_counts, thread_stop) = (counts.clone(), stop.clone());
        let started = Instant::now();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if thread_stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let counts = thread_counts.clone();
                let (client_read, server_write) = (
                    client.try_clone().expect("clone socket"),
                    server.try_clone().expect("clone socket"),
                );
                std::thread::spawn(move || {
                    pump_counted(
                        client_read,
                        server_write,
                        &counts,
                        bytes_per_second,
                        started,
                    )
                });
                std::thread::spawn(move || pump(server, client));
            }
        });
        CountingProxy { port, counts, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes the clients sent (request lines, headers and bodies).
    pub fn sent(&self) -> u64 {
        self.counts.sent.load(Ordering::Relaxed)
    }

    /// HTTP requests the clients sent.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Part uploads (UploadPart and UploadPartCopy requests) the clients sent.
    pub fn parts(&self) -> u64 {
        self.counts.parts.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn pump_counted(
    mut from: TcpStream,
    mut to: TcpStream,
    counts: &Counts,
    bytes_per_second: Option<u64>,
    started: Instant,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous read, so a marker split between two reads is still seen.
    let mut carry: Vec<u8> = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let total = counts.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let keep = PART_MARKER.len().max(REQUEST_MARKER.len());
        carry.extend_from_slice(&buf[..n.min(keep)]);
        for (marker, counter) in [
            (PART_MARKER, &counts.parts),
            (REQUEST_MARKER, &counts.requests),
        ] {
            let head = &buf[..n.min(keep)];
            let found = count(&carry, marker) + count(&buf[..n], marker) - count(head, marker);
            counter.fetch_add(found as u64, Ordering::Relaxed);
        }
        carry.clear();
        carry.extend_from_slice(&buf[n.saturating_sub(keep - 1)..n]);
        if let Some(rate) = bytes_per_second {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_part_requests_across_reads() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let upstream = server.local_addr().expect("addr").to_string();
        let proxy = CountingProxy::start(&upstream);
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        let (mut accepted, _) = server.accept().expect("accept");
        let (first, second): (&[u8], &[u8]) = (
            b"PUT /b/k?partNumber=1 HTTP/1.1\r\n\r\nPUT /b/k?partNum",
            b"ber=2 HTTP/1.1\r\n\r\n",
        );
        client.write_all(first).expect("write");
        client.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(50));
        client.write_all(second).expect("write");
        client.shutdown(Shutdown::Write).expect("shutdown");
        let mut got = Vec::new();
        accepted.read_to_end(&mut got).expect("read");
        assert_eq!(got, [first, second].concat());
        assert_eq!(proxy.sent(), (first.len() + second.len()) as u64);
        assert_eq!(proxy.parts(), 2);
        assert_eq!(proxy.requests(), 2);
    }
}
