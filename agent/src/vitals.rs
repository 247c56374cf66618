//! Vitals for heartbeats, read from /proc and statvfs.

use crate::layout::Layout;
use bosun_types::protocol::Vitals;

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
