//! Vitals for heartbeats, read from /proc and statvfs.

use crate::layout::Layout;
use bosun_types::protocol::{CpuVitals, Vitals};
use std::sync::Mutex;

/// /proc/stat's first line: jiffies spent user, nice, system, idle, iowait, irq, softirq, steal.
#[derive(Clone, Copy, Default)]
struct CpuTimes([u64; 8]);

impl CpuTimes {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let mut t = [0u64; 8];
        for (slot, field) in t.iter_mut().zip(line.split_whitespace().skip(1)) {
            *slot = field.parse().ok()?;
        }
        Some(CpuTimes(t))
    }

    /// The share of the time between `earlier` and `self` spent in each state, percent.
    fn since(&self, earlier: &CpuTimes) -> CpuVitals {
        let d: Vec<f64> = self.0.iter().zip(earlier.0).map(|(now, then)| now.saturating_sub(then) as f64).collect();
        let total: f64 = d.iter().sum();
        if total == 0.0 {
            return CpuVitals::default();
        }
        let pct = |x: f64| (x / total * 1000.0).round() / 10.0;
        CpuVitals { user: pct(d[0] + d[1]), sys: pct(d[2] + d[5] + d[6]), wait: pct(d[4]) }
    }
}

/// The agent's previous reading: CPU use is the share of the time since then (one agent per
/// process, so one reading per process).
static LAST_CPU: Mutex<Option<CpuTimes>> = Mutex::new(None);

fn cpu_since_last_reading() -> CpuVitals {
    let Some(now) = CpuTimes::read() else { return CpuVitals::default() };
    let mut last = LAST_CPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let used = last.map(|then| now.since(&then)).unwrap_or_default();
    *last = Some(now);
    used
}

fn meminfo_kb(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percent_used(path: &std::path::Path) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let total = s.blocks() as f64;
    if total == 0.0 {
        return None;
    }
    Some(((total - s.blocks_available() as f64) / total * 1000.0).round() / 10.0)
}

/// Blocking: call from `spawn_blocking`.
pub fn collect(layout: &Layout) -> Vitals {
    let mut v = Vitals::default();
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        for (i, x) in load.split_whitespace().take(3).enumerate() {
            v.load[i] = x.parse().unwrap_or(0.0);
        }
    }
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        let total = meminfo_kb(&mem, "MemTotal:");
        let avail = meminfo_kb(&mem, "MemAvailable:");
        v.mem_kb = total.saturating_sub(avail);
        if total > 0 {
            v.mem_percent = (v.mem_kb as f64 / total as f64 * 1000.0).round() / 10.0;
        }
        let st = meminfo_kb(&mem, "SwapTotal:");
        v.swap_kb = st.saturating_sub(meminfo_kb(&mem, "SwapFree:"));
        if st > 0 {
            v.swap_percent = (v.swap_kb as f64 / st as f64 * 1000.0).round() / 10.0;
        }
    }
    v.cpu = cpu_since_last_reading();
    if let Ok(uptime) = std::fs::read_to_string("/proc/uptime") {
        v.uptime_secs = uptime.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) as u64;
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        v.agent_rss_kb = meminfo_kb(&status, "VmRSS:");
    }
    for (name, path) in
        [("system", layout.root.clone()), ("ephemeral", layout.root.join("data")), ("persistent", layout.store())]
    {
        if let Some(p) = percent_used(&path) {
            v.disk.insert(name.to_string(), p);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_are_of_the_time_between_readings() {
        let then = CpuTimes([100, 0, 50, 800, 10, 0, 0, 0]);
        let now = CpuTimes([160, 20, 70, 870, 30, 5, 5, 0]);
        // 200 jiffies: user 60 + nice 20, system 20 + irq 5 + softirq 5, iowait 20.
        assert_eq!(now.since(&then), CpuVitals { user: 40.0, sys: 15.0, wait: 10.0 });
        assert_eq!(now.since(&now), CpuVitals::default(), "no time passed");
    }

    #[test]
    fn a_reading_of_this_machine_is_within_bounds() {
        let layout = Layout::new(&std::env::temp_dir());
        let _ = collect(&layout);
        let v = collect(&layout);
        let c = v.cpu;
        assert!([c.user, c.sys, c.wait].iter().all(|p| (0.0..=100.0).contains(p)), "{c:?}");
        assert!(c.user + c.sys + c.wait <= 100.0 + 1e-9, "{c:?}");
        assert!(v.uptime_secs > 0 && v.mem_kb > 0, "{v:?}");
    }
}
