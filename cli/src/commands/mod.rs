//! One module per group of verbs; `main.rs` holds the command line and sends each verb here.

pub mod artifacts;
pub mod config;
pub mod deployments;
pub mod director;
pub mod disks;
pub mod health;
pub mod interpolate;
pub mod ssh;
pub mod tasks;

/// Whether an operator's name or version may go into a URL path as it is: letters, digits and
/// `-_.+` (versions like `0+dev.3`), not empty, not starting with a dot.
pub(crate) fn is_path_segment(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}
