//! Fault injection for crash-safety tests: `BOSUN_CRASH_AT=<point>[,<point>…]` makes the director
//! kill itself with SIGKILL when it reaches a named point, as a power cut or `kill -9` would. Unset
//! (always, outside tests) it costs one environment lookup per point.

/// The points, in the order a deploy reaches them.
pub const POINTS: &[&str] = &["after_create_vm", "after_apply", "after_delete_vm"];

pub fn crash_point(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
    let Some(wanted) = std::env::var_os("BOSUN_CRASH_AT") else { return };
    if wanted.to_string_lossy().split(',').any(|p| p.trim() == point) {
        tracing::error!(point, "BOSUN_CRASH_AT: killing the director here");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}
