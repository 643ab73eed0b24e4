//! The one error type of the core; the binding layer maps each variant to a `capi_fast.errors` class.

use std::fmt;

/// Everything that can go wrong in the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A value that is not an IP address or CIDR network.
    InvalidIp(String),
    /// A remediation or origin the index cannot take (empty, too long, too many distinct).
    InvalidDecision(String),
    /// A snapshot file that is corrupt, truncated, of another version, or unreadable.
    Snapshot(String),
    /// A decisions-stream answer that is not JSON, or not a JSON object.
    Stream(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidIp(m) | Error::InvalidDecision(m) | Error::Snapshot(m) | Error::Stream(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, Error>;
