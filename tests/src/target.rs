//! A stand-in game backend for local runs: a handful of endpoints that answer after a
//! realistic, skewed latency, with a small error rate, so the example agents have something
//! real to measure. Plain HTTP/1.1, one thread per connection, `Connection: close`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An endpoint: its path, median latency (ms) and share of answers that are errors (‰).
struct Endpoint {
    path: &'static str,
    median_ms: f64,
    errors_per_mille: u64,
}

const ENDPOINTS: [Endpoint; 5] = [
    Endpoint {
        path: "/login",
        median_ms: 45.0,
        errors_per_mille: 5,
    },
    Endpoint {
        path: "/matchmaking",
        median_ms: 120.0,
        errors_per_mille: 10,
    },
    Endpoint {
        path: "/inventory",
        median_ms: 15.0,
        errors_per_mille: 2,
    },
    Endpoint {
        path: "/leaderboard",
        median_ms: 25.0,
        errors_per_mille: 2,
    },
    Endpoint {
        path: "/store/purchase",
        median_ms: 80.0,
        errors_per_mille: 30,
    },
];

/// The running server; it lives as long as the process.
pub struct Target {
    address: SocketAddr,
}

impl Target {
    /// Binds 127.0.0.1 on a free port and serves on a background thread.
    pub fn start() -> std::io::Result<Target> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        std::thread::spawn(move || {
            let seed = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
            for stream in listener.incoming().flatten() {
                let draw = seed.fetch_add(0x2545_f491_4f6c_dd1d, Ordering::Relaxed);
                std::thread::spawn(move || answer(stream, draw));
            }
        });
        Ok(Target { address })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// A few xorshift steps from `seed`: two uniform numbers in (0, 1).
fn uniforms(mut seed: u64) -> (f64, f64) {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    (next().max(1e-12), next())
}

/// A log-normal latency around `median` (σ = 0.6: a long right tail, as real services have).
fn latency(median: f64, u1: f64, u2: f64) -> Duration {
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    Duration::from_secs_f64((median * (0.6 * normal).exp()).min(5_000.0) / 1000.0)
}

fn answer(stream: TcpStream, seed: u64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (u1, u2) = uniforms(seed);
    let (status, body) = match ENDPOINTS.iter().find(|e| e.path == path) {
        Some(endpoint) => {
            std::thread::sleep(latency(endpoint.median_ms, u1, u2));
            if (seed >> 20) % 1000 < endpoint.errors_per_mille {
                ("503 Service Unavailable", "{\"error\":\"busy\"}")
            } else {
                ("200 OK", "{\"ok\":true}")
            }
        }
        None => ("404 Not Found", "{\"error\":\"no such endpoint\"}"),
    };
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_center_on_the_median_with_a_tail() {
        let mut samples: Vec<f64> = (0..10_000u64)
            .map(|i| {
                let (u1, u2) = uniforms(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                latency(100.0, u1, u2).as_secs_f64() * 1000.0
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[5_000];
        assert!((80.0..125.0).contains(&median), "median {median}");
        assert!(samples[9_900] > 2.5 * median, "p99 {}", samples[9_900]);
    }

    #[test]
    fn answers_known_endpoints_and_404s_the_rest() {
        let target = Target::start().expect("starts");
        let get = |path: &str| {
            let mut stream = TcpStream::connect(target.address).expect("connects");
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("writes");
            let mut reply = String::new();
            std::io::Read::read_to_string(&mut stream, &mut reply).expect("reads");
            reply
        };
        assert!(
            get("/inventory").starts_with("HTTP/1.1 200")
                || get("/inventory").starts_with("HTTP/1.1 503")
        );
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
