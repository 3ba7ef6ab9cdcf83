//! CPU time of the processes a run involves, from /proc: where a phase's core-seconds went
//! (the operator, the API server and etcd, the broker, the harness itself) and how busy the
//! whole machine was. On a small machine these compete, so this is what a time is made of.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Ticks per second of /proc times (USER_HZ, 100 on every Linux ABI this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of a process, in seconds (children not included).
fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND)
}

/// Busy seconds of the whole machine (every CPU, everything but idle and iowait).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Some(busy as f64 / TICKS_PER_SECOND)
}

/// The pid recorded in a pid file, when that process runs.
pub fn pid_file(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// CPU seconds of named processes and of the machine at one moment.
pub struct CpuSample {
    at: Instant,
    processes: BTreeMap<String, (u32, f64)>,
    machine: Option<f64>,
}

impl CpuSample {
    /// Sample the named processes (those not running are left out).
    pub fn take(processes: &[(&str, Option<u32>)]) -> Self {
        CpuSample {
            at: Instant::now(),
            processes: processes
                .iter()
                .filter_map(|(name, pid)| {
                    let pid = (*pid)?;
                    Some((name.to_string(), (pid, process_seconds(pid)?)))
                })
                .collect(),
            machine: machine_busy_seconds(),
        }
    }

    /// Core-seconds each process used since `earlier` (same pid in both), the machine's busy
    /// core-seconds, and the wall time between the two samples.
    pub fn since(&self, earlier: &CpuSample) -> CpuUse {
        let processes = self
            .processes
            .iter()
            .filter_map(|(name, (pid, s))| {
                let (pid0, s0) = earlier.processes.get(name)?;
                (pid == pid0).then(|| (name.clone(), s - s0))
            })
            .collect();
        CpuUse {
            processes,
            machine: self.machine.zip(earlier.machine).map(|(a, b)| a - b),
            wall: self.at.duration_since(earlier.at).as_secs_f64(),
        }
    }
}

/// CPU use over a phase.
pub struct CpuUse {
    /// Core-seconds by process name.
    pub processes: BTreeMap<String, f64>,
    /// Busy core-seconds of the whole machine.
    pub machine: Option<f64>,
    /// Wall seconds of the phase.
    pub wall: f64,
}

impl CpuUse {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "wallSeconds": self.wall,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "machineBusyCoreSeconds": self.machine,
            "coreSecondsByProcess": self.processes,
        })
    }

    /// "kafka 20.1, kube-apiserver 30.2, ... of 110.0 available (busy 95.0)".
    pub fn summary(&self) -> String {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let mut parts: Vec<(String, f64)> = self
            .processes
            .iter()
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut out = parts
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(" of {:.1} core-s", self.wall * cores));
        if let Some(busy) = self.machine {
            out.push_str(&format!(" (machine busy {busy:.1})"));
        }
        out
    }
}
