//! BOSH's external CPI protocol, both ways (reference: BOSH's `cpi-api-rpc`):
//!
//! - [`client::ExternalCpi`]: any executable speaking the protocol — a BOSH CPI release's
//!   `bin/cpi`, or `bosun cpi` — as a bosun CPI (`bosun director --cpi external`), one process
//!   per call with a wiped environment, as BOSH's director runs them;
//! - [`serve::serve`]: one request answered by one of bosun's CPIs (`bosun cpi NAME`, so a BOSH
//!   director can use bosun's CPIs).
//!
//! [`protocol`] is the envelope and the error types both sides share.

pub mod client;
pub mod protocol;
pub mod serve;

pub use client::{ExternalCpi, ExternalCpiConfig};
