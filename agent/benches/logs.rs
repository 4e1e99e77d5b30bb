//! Log capture under load, 100 agents writing 120-byte lines:
//! - flat out: each agent `cat`s a 20 MB file as fast as the pipes take it;
//! - paced: each agent writes 256 KB, sleeps 0.1 s, 50 times (up to 2.5 MB/s per agent, over
//!   100 MB/s in total), the rate the supervisor is specified for.
//!
//! Measured: bytes that reached the agents' `stdout.log` files per second of wall time
//! (launch until summary.json), and the supervisor's CPU over that time. The supervisor's
//! own stdout (the prefixed copy of every line) goes to /dev/null.
//!
//! `cargo bench -p wave-agent --bench logs` (release build).

mod common;

use std::io::Write;
use std::time::Instant;

use common::{Supervisor, bytes_in, cpu_seconds};

const AGENTS: u32 = 100;
const BYTES_PER_AGENT: usize = 20_000_000;
const LINE: usize = 120;
const PACED_CHUNK: usize = 256_000;
const PACED_ROUNDS: usize = 50;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("lines.txt");
    write_lines(&input);
    let expected = AGENTS as u64 * BYTES_PER_AGENT as u64;

    println!("flat out:");
    for round in 1..=3 {
        let started = Instant::now();
        let supervisor = Supervisor::start(
            AGENTS,
            &["--restart", "never"],
            &["cat", input.to_str().expect("UTF-8 temp path")],
        );
        supervisor.wait_complete();
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(supervisor.pid());
        let captured = bytes_in(&supervisor.results(), "stdout.log");
        assert_eq!(captured, expected, "log files are missing bytes");
        println!(
            "round {round}: {AGENTS} agents wrote {:.0} MB in {seconds:.2} s = {:.0} MB/s into \
             log files; supervisor CPU {cpu:.2} s = {:.2} cores",
            captured as f64 / 1e6,
            captured as f64 / 1e6 / seconds,
            cpu / seconds
        );
    }

    let chunk = dir.path().join("chunk.txt");
    std::fs::write(
        &chunk,
        &std::fs::read(&input).expect("read input")[..PACED_CHUNK],
    )
    .expect("write chunk");
    let paced = format!(
        "i=0; while [ $i -lt {PACED_ROUNDS} ]; do cat '{}'; sleep 0.1; i=$((i+1)); done",
        chunk.display()
    );
    let expected = (AGENTS as usize * PACED_CHUNK * PACED_ROUNDS) as u64;
    println!("paced:");
    for round in 1..=2 {
        let started = Instant::now();
        let supervisor = Supervisor::start(AGENTS, &["--restart", "never"], &["sh", "-c", &paced]);
        supervisor.wait_complete();
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(supervisor.pid());
        let captured = bytes_in(&supervisor.results(), "stdout.log");
        assert_eq!(captured, expected, "log files are missing bytes");
        println!(
            "round {round}: {AGENTS} agents wrote {:.0} MB in {seconds:.2} s = {:.0} MB/s into \
             log files; supervisor CPU {cpu:.2} s = {:.2} cores",
            captured as f64 / 1e6,
            captured as f64 / 1e6 / seconds,
            cpu / seconds
        );
    }
}

/// A file of `BYTES_PER_AGENT` bytes in `LINE`-byte lines (varied text, newline-terminated).
fn write_lines(path: &std::path::Path) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
    let mut written = 0;
    let mut n = 0usize;
    while written < BYTES_PER_AGENT {
        let len = LINE.min(BYTES_PER_AGENT - written);
        let line: Vec<u8> = (0..len)
            .map(|i| {
                if i + 1 == len {
                    b'\n'
                } else {
                    alphabet[(n * 31 + i * 7) % alphabet.len()]
                }
            })
            .collect();
        file.write_all(&line).expect("write input");
        written += len;
        n += 1;
    }
    file.flush().expect("flush input");
}
