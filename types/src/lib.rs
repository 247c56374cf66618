//! Shared types of bosun: everything that crosses a boundary between the CLI, the director, the
//! agents and the CPIs. Manifests and cloud-configs (BOSH v2 schema), release and stemcell
//! manifests, `((variable))` interpolation, go-patch ops-files, the director↔agent protocol and the
//! director's HTTP API.
//!
//! Architecture invariant: this crate depends on no other bosun crate and does no I/O beyond what
//! its callers hand it (text in, values out).

pub mod api;
pub mod cloud_config;
pub mod digest;
pub mod gopatch;
pub mod ip;
pub mod manifest;
pub mod pki;
pub mod protocol;
pub mod release;
pub mod tarball;
pub mod vars;
pub mod yaml;

pub use yaml::{DocumentError, YamlPath};
