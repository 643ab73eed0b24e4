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
//!
//! ```
//! use _native::index::{Index, Op};
//! use _native::parse::{parse_addr, parse_net};
//!
//! let mut ix = Index::new(&["ban".into(), "captcha".into()]).unwrap();
//! let ban = ix.tag("CAPI", "ban").unwrap();
//! let captcha = ix.tag("cscli", "captcha").unwrap();
//! let (wide, _) = parse_net("10.1.0.0/16").unwrap();
//! let (host, _) = parse_net("10.1.2.3").unwrap();
//! ix.apply(&[Op::Add(wide, ban, 10_000), Op::Add(host, captcha, 20_000)]);
//! // Highest priority among every covering decision, not the longest match:
//! let id = ix.lookup(parse_addr("10.1.2.3").unwrap(), 5_000).unwrap();
//! assert_eq!(ix.remediations()[id as usize], "ban");
//! // Once the /16 has expired, the host's own decision answers.
//! let id = ix.lookup(parse_addr("10.1.2.3").unwrap(), 15_000).unwrap();
//! assert_eq!(ix.remediations()[id as usize], "captcha");
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

pub(crate) mod aggregate;
pub(crate) mod batch;
pub(crate) mod bits;
pub mod error;
pub(crate) mod hosts;
pub mod index;
pub(crate) mod mapped;
pub mod parse;
pub(crate) mod py;
pub(crate) mod shared;
pub(crate) mod slot;
pub(crate) mod snapshot;
pub(crate) mod stream;
pub(crate) mod table;
pub(crate) mod trie;

#[cfg(test)]
mod model_tests;
