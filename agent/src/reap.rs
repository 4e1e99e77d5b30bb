//! Reaping of orphaned descendants.
//!
//! As PID 1 of a container (or as a child subreaper elsewhere) the supervisor inherits every
//! process whose parent dies, for instance an agent's background job after the agent exits.
//! Those must be waited for or they stay zombies. The agents themselves are waited for by
//! tokio, which must keep their exit statuses, so `waitpid(-1)` is off limits: on SIGCHLD
//! the reaper lists the supervisor's children from `/proc` and waits only for those that are
//! not tracked agents.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procfs;

/// Pids of the agent processes that tokio waits for; the reaper leaves them alone.
///
/// An agent is spawned and its pid recorded while holding a [`SpawnGuard`]; the reaper
/// waits for every such guard to go, so it can never take an agent that was just started
/// for an orphan. Guards do not exclude each other: agents start in parallel.
#[derive(Debug, Default)]
pub struct Tracked {
    gate: RwLock<()>,
    pids: Mutex<HashSet<i32>>,
}

/// Held while spawning an agent and recording its pid.
pub struct SpawnGuard<'a> {
    tracked: &'a Tracked,
    _gate: RwLockReadGuard<'a, ()>,
}

impl SpawnGuard<'_> {
    /// Records the pid of the agent just spawned.
    pub fn track(&self, pid: i32) {
        self.tracked.pids().insert(pid);
    }
}

impl Tracked {
    /// Take this before spawning an agent, and record its pid with it.
    pub fn spawning(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            tracked: self,
            _gate: self.gate.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Forgets an agent whose exit status tokio has collected.
    pub fn untrack(&self, pid: i32) {
        self.pids().remove(&pid);
    }

    fn pids(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.pids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes this process the reaper of its orphaned descendants when it is not PID 1.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Starts the task that reaps orphans on every SIGCHLD (and once at start), until `stop`.
pub fn spawn_reaper(tracked: Arc<Tracked>, stop: CancellationToken) -> io::Result<JoinHandle<()>> {
    let mut sigchld = signal(SignalKind::child())?;
    Ok(tokio::spawn(async move {
        loop {
            reap_orphans(&tracked);
            tokio::select! {
                received = sigchld.recv() => if received.is_none() { break },
                () = stop.cancelled() => break,
            }
        }
    }))
}

/// Waits for every exited child that is not a tracked agent; returns the pids reaped.
pub fn reap_orphans(tracked: &Tracked) -> Vec<i32> {
    let _no_spawn_in_progress = tracked.gate.write().unwrap_or_else(|p| p.into_inner());
    let agents = tracked.pids();
    let mut reaped = Vec::new();
    for pid in procfs::children_of_self() {
        if agents.contains(&pid) {
            continue;
        }
        while let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            match status {
                WaitStatus::StillAlive => break,
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    reaped.push(pid);
                    break;
                }
                _ => continue,
            }
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcStat;
    use std::process::Command;

    fn is_zombie(pid: i32) -> bool {
        ProcStat::read(pid).is_some_and(|s| s.state == 'Z')
    }

    #[test]
    #[expect(
        clippy::zombie_processes,
        reason = "the reaper under test waits for it"
    )]
    fn reaps_an_exited_untracked_child_but_not_a_tracked_one() {
        let tracked = Tracked::default();
        let mut agent = Command::new("true").spawn().expect("spawn true");
        let agent_pid = agent.id() as i32;
        tracked.spawning().track(agent_pid);
        let orphan = Command::new("true").spawn().expect("spawn true");
        let orphan_pid = orphan.id() as i32;
        // Let both exit and become zombies.
        while !(is_zombie(agent_pid) && is_zombie(orphan_pid)) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let reaped = reap_orphans(&tracked);
        assert!(reaped.contains(&orphan_pid), "{reaped:?}");
        assert!(!reaped.contains(&agent_pid));
        assert!(agent.wait().expect("the agent's status was kept").success());
    }
}
