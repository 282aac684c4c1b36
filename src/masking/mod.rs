//! Masking: sensitive values never leave unless the identity may see them (issue #6).
//!
//! This is the pure core so far: [`strategy`] (how a value is masked, always valid for its
//! column type or NULL) and [`detect`] (content detectors: email, payment cards with Luhn,
//! US SSN, phone, IBAN with mod 97, secrets). Resolving which output columns are sensitive
//! and rewriting DataRow / CopyData / errors / notifications come next.

pub mod detect;
pub mod strategy;

pub use detect::{Detectors, Hits, Kind};
pub use strategy::{Strategy, ValueKind};
