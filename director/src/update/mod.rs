//! The updater: turns a manifest into a plan and carries the plan out.
//!
//! ```text
//! prepare    manifest text → Prepared { manifest, cloud-config, Plan }   (reads the store; the
//!            planner itself is pure)
//! plan_view  Plan → PlanView for the operator (redacted diff, actions, batches)
//! driver     Plan → compilation, deletes, then stages → batches → converge each instance
//!   ├─ compile    packages from the compiled-package cache or on compilation VMs
//!   ├─ vm         create_vm (with retries), swap (create-swap-delete), delete_vm
//!   ├─ disk       create / attach / migrate / orphan / mount persistent disks
//!   └─ lifecycle  apply, pre-start, start, watch, post-start; pre-stop, drain, stop, post-stop
//! delete     scale-in and delete-deployment
//! repair     recreate with fencing: the one path resurrection and cck's recreate share
//! step       errors, command timeouts, next states and events every step shares
//! ```
//! Dependencies point down this list's tree (driver → vm → lifecycle → step), never back up.

mod compile;
mod delete;
mod disk;
mod driver;
mod lifecycle;
mod peers;
mod plan_view;
mod prepare;
mod repair;
mod step;
mod vm;

pub use delete::delete_deployment;
pub use driver::execute;
pub use plan_view::plan_view;
pub use prepare::{cloud_config_key, latest_cloud_config, list_variables, prepare, store_variables, Prepared};
pub use repair::{recreate_with_fencing, resurrect};
pub use step::{DeployError, ExecOptions, StepError};
pub(crate) use vm::delete_vm_of;
