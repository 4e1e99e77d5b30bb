//! What the supervisor reads from `/proc`: process status fields, its own children and
//! memory figures. Parsing is kept apart from reading so it is tested on captured text.

use std::io;

/// The fields of `/proc/<pid>/stat` the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// utime + stime + cutime + cstime, in clock ticks: the process and its waited-for children.
    pub cpu_ticks: u64,
    /// utime + stime, in clock ticks: the process alone.
    pub own_cpu_ticks: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// Parses the text of `/proc/<pid>/stat`; `None` if it is not in the kernel's format.
    pub fn parse(text: &str) -> Option<ProcStat> {
        // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // `fields[0]` is field 3 of proc(5).
        let field = |n: usize| fields.get(n - 3).copied();
        let number = |n: usize| field(n)?.parse::<u64>().ok();
        let own_cpu_ticks = number(14)? + number(15)?;
        Some(ProcStat {
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            cpu_ticks: own_cpu_ticks + number(16)? + number(17)?,
            own_cpu_ticks,
            rss_pages: number(24)?,
        })
    }

    /// Reads `/proc/<pid>/stat`; `None` once the process is gone.
    pub fn read(pid: i32) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }
}

/// Memory figures of `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStatus {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most that was ever resident.
    pub peak_rss: u64,
}

impl MemoryStatus {
    /// Parses the text of `/proc/<pid>/status`; `None` without both figures.
    pub fn parse(text: &str) -> Option<MemoryStatus> {
        let kib = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
                .map(|kib| kib * 1024)
        };
        Some(MemoryStatus {
            rss: kib("VmRSS")?,
            peak_rss: kib("VmHWM")?,
        })
    }

    /// Reads `/proc/<pid>/status`; `None` once the process is gone.
    pub fn read(pid: i32) -> Option<MemoryStatus> {
        MemoryStatus::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }
}

/// Clock ticks per second, the unit of the CPU fields of [`ProcStat`].
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// Bytes per page, the unit of [`ProcStat::rss_pages`].
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// The stat of every process in `/proc` that could be read.
pub fn all_processes() -> impl Iterator<Item = (i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, ProcStat::read(pid)?)))
}

/// Pids of this process's children, from `/proc/self/task/*/children`, or by scanning
/// `/proc` on kernels built without that file.
pub fn children_of_self() -> Vec<i32> {
    match children_from_tasks() {
        Ok(pids) => pids,
        Err(_) => {
            let me = std::process::id() as i32;
            all_processes()
                .filter(|(_, stat)| stat.ppid == me)
                .map(|(pid, _)| pid)
                .collect()
        }
    }
}

fn children_from_tasks() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let text = std::fs::read_to_string(task?.path().join("children"))?;
        pids.extend(
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Ok(pids)
}

/// Datagrams the kernel dropped on the UDP socket with inode `inode` (the last column of
/// `/proc/net/udp` and `udp6`), e.g. because its receive buffer was full.
pub fn udp_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|text| parse_udp_drops(&text, inode))
}

/// The drops of socket `inode` in the text of `/proc/net/udp`.
pub fn parse_udp_drops(text: &str, inode: u64) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        (fields.get(9)?.parse::<u64>().ok()? == inode).then(|| fields.get(12)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_and_parens_in_the_name() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 \
                    5000 10000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = ProcStat::parse(line).expect("valid stat");
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                ppid: 1,
                pgrp: 1234,
                cpu_ticks: 13,
                own_cpu_ticks: 10,
                rss_pages: 250
            }
        );
    }

    #[test]
    fn refuses_a_truncated_stat_line() {
        assert_eq!(ProcStat::parse("1234 (x) S 1 2"), None);
    }

    #[test]
    fn reads_resident_and_peak_memory_from_status_in_bytes() {
        let text = "Name:\tsleep\nVmPeak:\t  9000 kB\nVmHWM:\t    1200 kB\nVmRSS:\t    1000 kB\n";
        assert_eq!(
            MemoryStatus::parse(text),
            Some(MemoryStatus {
                rss: 1000 * 1024,
                peak_rss: 1200 * 1024
            })
        );
        assert_eq!(MemoryStatus::parse("Name:\tzombie\n"), None);
    }

    #[test]
    fn finds_a_child_of_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let found = children_of_self().contains(&pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "{pid} not among the children");
    }

    #[test]
    fn reads_this_process_stat_and_memory() {
        let me = std::process::id() as i32;
        let stat = ProcStat::read(me).expect("own stat");
        assert_eq!(stat.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(MemoryStatus::read(me).expect("own status").rss > 0);
    }

    #[test]
    fn reads_the_drops_of_one_udp_socket() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  2: 0100007F:1FBE 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0\n";
        assert_eq!(parse_udp_drops(text, 4242), Some(17));
        assert_eq!(parse_udp_drops(text, 4343), Some(0));
        assert_eq!(parse_udp_drops(text, 1), None);
    }
}
