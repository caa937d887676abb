//! CPU time and memory of a process, read from `/proc`: what each peer costs, measured from
//! outside so every peer (Rust, C, Node.js) is measured the same way.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

/// Clock ticks per second of `/proc/<pid>/stat` times; `getconf CLK_TCK`, or the usual 100 when
/// `getconf` is missing.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// User plus system CPU time of `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last ')'; utime and stime are fields 14 and 15, i.e. 12th and 13th after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {} of /proc/{pid}/stat", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Resident set size now and its peak (`VmRSS`, `VmHWM`), KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let find = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((find("VmRSS:")?, find("VmHWM:")?))
}

/// Busy and total jiffies of all cores together, from the first line of `/proc/stat`.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// A named process being watched over one window.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: &'static str,
    pub pid: u32,
}

/// CPU ticks of each watched process at the start of a window.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    start_ticks: Vec<Option<u64>>,
    start_machine: Option<(u64, u64)>,
    procs: Vec<Watched>,
}

/// The whole machine over one window: were other programs competing for the cores?
#[derive(Debug, Clone, Copy)]
pub struct MachineUsage {
    /// All cores together, as % of one core (200 = two cores busy).
    pub busy_pct: f64,
    /// Of that, what the watched processes did not use: other programs on the machine.
    pub others_pct: f64,
}

impl MachineUsage {
    pub fn to_json(self) -> Value {
        json!({"busy_pct_of_one_core": self.busy_pct, "others_pct_of_one_core": self.others_pct})
    }
}

/// One process over one window.
#[derive(Debug, Clone)]
pub struct Usage {
    pub name: &'static str,
    /// CPU seconds over the window.
    pub cpu_s: f64,
    /// Percent of one core over the window.
    pub cpu_pct: f64,
    /// CPU time over the window divided by the messages this process handled in it (None for
    /// idle); set by [`Usage::per_message`].
    pub cpu_us_per_msg: Option<f64>,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Usage {
    pub fn per_message(&mut self, messages: u64) {
        self.cpu_us_per_msg = (messages > 0).then(|| self.cpu_s * 1e6 / messages as f64);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "process": self.name,
            "cpu_s": self.cpu_s,
            "cpu_pct_of_one_core": self.cpu_pct,
            "cpu_us_per_msg": self.cpu_us_per_msg,
            "rss_kib": self.rss_kib,
            "hwm_kib": self.hwm_kib,
        })
    }
}

impl Window {
    pub fn start(procs: &[Watched]) -> Self {
        Self {
            started: Instant::now(),
            start_ticks: procs.iter().map(|p| cpu_ticks(p.pid).ok()).collect(),
            start_machine: machine_jiffies(),
            procs: procs.to_vec(),
        }
    }

    /// Usage of each process since [`Window::start`] (a process that has gone is left out),
    /// and of the whole machine.
    pub fn finish(&self, tck: u64) -> (Vec<Usage>, Option<MachineUsage>) {
        let wall = self.started.elapsed().max(Duration::from_millis(1));
        let usage: Vec<Usage> = self
            .procs
            .iter()
            .zip(&self.start_ticks)
            .filter_map(|(p, start)| {
                let ticks = cpu_ticks(p.pid).ok()?.saturating_sub((*start)?);
                let cpu_s = ticks as f64 / tck as f64;
                let (rss_kib, hwm_kib) = memory_kib(p.pid).ok()?;
                Some(Usage {
                    name: p.name,
                    cpu_s,
                    cpu_pct: 100.0 * cpu_s / wall.as_secs_f64(),
                    cpu_us_per_msg: None,
                    rss_kib,
                    hwm_kib,
                })
            })
            .collect();
        let machine = self
            .start_machine
            .zip(machine_jiffies())
            .map(|((b0, t0), (b1, t1))| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                let busy_pct = 100.0 * cores * (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
                let ours: f64 = usage.iter().map(|u| u.cpu_pct).sum();
                MachineUsage {
                    busy_pct,
                    others_pct: (busy_pct - ours).max(0.0),
                }
            });
        (usage, machine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        let (rss, hwm) = memory_kib(pid).expect("status");
        assert!(rss > 0 && hwm >= rss);
    }
}
