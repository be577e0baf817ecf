//! The crate-wide error type. Each module owns a precise error enum for its operations;
//! [`Error`] wraps them for callers who want one type.

use crate::address::AddressError;
use crate::envelope::{ContentError, OpenError, SealError};
use crate::identity::{CertificateError, FingerprintError};

/// Any error Kogge reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address or domain did not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// A device certificate was refused.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// An envelope could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// An envelope was refused.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Content could not be encoded or decoded.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// A fingerprint did not match or could not be read.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
}
