//! One module per group of verbs; `main.rs` holds the command line and sends each verb here.

pub mod artifacts;
pub mod config;
pub mod deployments;
pub mod director;
pub mod disks;
pub mod health;
pub mod interpolate;
pub mod tasks;
