//! What bosun's tests stand up in a cloud's place. Only tests depend on this crate.

pub mod imds;
pub mod moto;
