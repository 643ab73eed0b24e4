//! Native core of `capi_fast`: the CrowdSec decision index.
//!
//! The pure-Rust modules hold all logic and are tested with `cargo test`; [`py`] binds them to
//! Python as `capi_fast._native`.
//!
//! | operation | cost |
//! |---|---|
//! | add / remove one decision | O(1) for an address, O(W) for a network (W = address width) |
//! | lookup | O(1) hash probe + O(W) trie walk, skipped when no range covers the /16 |
//! | purge expired | O(expired + hints in the current 65 s bucket) |
//! | export CIDRs | O(n log n) |
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

pub mod bits;
pub mod error;
pub mod export;
pub mod hosts;
pub mod index;
pub mod parse;
pub mod py;
pub mod shared;
pub mod slot;
pub mod snapshot;
pub mod table;
pub mod trie;

#[cfg(test)]
mod model_tests;
