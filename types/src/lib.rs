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
pub mod version;
pub mod yaml;
pub mod yaml_v2;

pub use yaml::{DocumentError, YamlPath};

/// An enum whose variants are named by fixed snake_case words on the wire, in the CLI and in
/// messages: one list gives the serde names, `as_str`, `Display`, `FromStr` and `ALL`.
#[macro_export]
macro_rules! named_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    format!("`{s}` is not one of {}", all.join(", "))
                })
            }
        }
    };
}

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
