//! Fault injection for crash-safety and supervision tests. Unset (always, outside tests) each
//! point costs one environment lookup.
//!
//! - `BOSUN_CRASH_AT=<point>[,<point>…]` makes the director kill itself with SIGKILL when it
//!   reaches a named [`CrashPoint`], as a power cut or `kill -9` would.
//! - `BOSUN_PANIC_AT=<point>[,<point>…]` makes the code at a named [`PanicPoint`] panic — once per
//!   director process, so a test sees both the panic and what comes after it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Where the director can be killed, in the order a deploy reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A compilation VM exists and its agent answers; the package is not compiled yet.
    Compiling,
    AfterCreateVm,
    AfterApply,
    AfterDeleteVm,
}

impl CrashPoint {
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::Compiling => "compiling",
            CrashPoint::AfterCreateVm => "after_create_vm",
            CrashPoint::AfterApply => "after_apply",
            CrashPoint::AfterDeleteVm => "after_delete_vm",
        }
    }
}

/// Where the director can be made to panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicPoint {
    /// An update task, as it starts converging an instance.
    UpdateInstance,
    /// The health monitor, at the start of a pass.
    HealthPass,
}

impl PanicPoint {
    pub fn name(self) -> &'static str {
        match self {
            PanicPoint::UpdateInstance => "update_instance",
            PanicPoint::HealthPass => "health_pass",
        }
    }
    fn fired(self) -> &'static AtomicBool {
        static UPDATE_INSTANCE: AtomicBool = AtomicBool::new(false);
        static HEALTH_PASS: AtomicBool = AtomicBool::new(false);
        match self {
            PanicPoint::UpdateInstance => &UPDATE_INSTANCE,
            PanicPoint::HealthPass => &HEALTH_PASS,
        }
    }
}

fn named(var: &str, point: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v.to_string_lossy().split(',').any(|p| p.trim() == point))
}

pub fn crash_point(point: CrashPoint) {
    if named("BOSUN_CRASH_AT", point.name()) {
        tracing::error!(point = point.name(), "BOSUN_CRASH_AT: killing the director here");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}

pub fn panic_point(point: PanicPoint) {
    if named("BOSUN_PANIC_AT", point.name()) && !point.fired().swap(true, Ordering::SeqCst) {
        panic!("BOSUN_PANIC_AT: {}", point.name());
    }
}
