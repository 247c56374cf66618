//! YAML read and written the way the BOSH CLI reads and writes it (Go's `gopkg.in/yaml.v2`), so
//! that manifests, ops-files and vars files mean what they mean to bosh and `bosun interpolate`
//! prints what `bosh interpolate` prints.
//!
//! Reading: plain scalars by YAML 1.1's rules (`yes` and `on` are true, `0777` is 511, `1_000` is
//! 1000), quoted and block scalars always text, yaml.v2's tags and `<<` merge keys.
//! Writing: map keys sorted in yaml.v2's order (numbers first, then strings compared with digit
//! runs as numbers), sequences inside maps not indented, a string YAML 1.1 would read as
//! something else double-quoted, one the emitter cannot write plain single-quoted, a string with
//! line breaks as a literal block, long lines folded at 80 columns, floats as Go formats them.

mod emit;
mod load;
mod resolve;

pub use emit::to_string;
pub use load::{parse, LoadError};
