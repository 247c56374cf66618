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

/// An error and its sources, each once: `a: b: c`. Messages describe their own layer only (house
/// style), so the chain reads as a path from the operation down to the cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
