//! SPIFFE IDs and trust domains, parsed strictly per the SPIFFE ID specification.
//!
//! <https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>: the scheme is `spiffe`,
//! the trust domain is lowercase `[a-z0-9._-]`, the path has no empty, `.` or `..` segments and only
//! `[A-Za-z0-9._-]` characters, there is no port, userinfo, query, fragment or percent-encoding, and
//! the whole ID is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID the spec allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name the spec allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The ID is empty.
    #[error("empty SPIFFE ID")]
    Empty,
    /// The ID does not start with `spiffe://` (the scheme is case-sensitive lowercase).
    #[error("scheme must be \"spiffe://\"")]
    WrongScheme,
    /// The trust domain is missing.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain has a character outside `[a-z0-9._-]` (uppercase, port, userinfo...).
    #[error(
        "trust domain has invalid character {0:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("path has an empty segment")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path has a relative segment \".\" or \"..\"")]
    DotSegment,
    /// The path has a character outside `[A-Za-z0-9._-]` (percent-encoding, query, fragment...).
    #[error("path has invalid character {0:?}: only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    /// The ID is longer than 2048 bytes.
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The ID is valid SPIFFE but not of the form `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    NotWorkloadForm,
}

/// A SPIFFE trust domain such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`cluster.local`) or a trust domain ID (`spiffe://cluster.local`).
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let name = s.strip_prefix(SCHEME).unwrap_or(s);
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name, without scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    /// `cluster.local`, the Kubernetes default.
    fn default() -> Self {
        Self("cluster.local".to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID (`spiffe://<trust-domain>/<path>`), validated strictly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The full ID, `spiffe://` included.
    id: String,
    /// Byte offset where the path starts (== id.len() when there is no path).
    path_start: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, rejecting anything the spec forbids.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        validate_trust_domain(&rest[..td_len])?;
        let path = &rest[td_len..];
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                validate_segment(segment)?;
            }
        }
        Ok(Self {
            id: s.to_owned(),
            path_start: SCHEME.len() + td_len,
        })
    }

    /// Builds the Istio workload form `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self::new(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))?;
        id.workload_parts()?;
        Ok(id)
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The trust domain as a [`TrustDomain`].
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, starting with `/`, or empty for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID, `spiffe://` included.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The ID without the `spiffe://` scheme, as Istio's `principals` compare it
    /// (`cluster.local/ns/a/sa/b`).
    pub fn principal(&self) -> &str {
        &self.id[SCHEME.len()..]
    }

    /// The namespace and service account of an Istio-form ID (`/ns/<ns>/sa/<sa>`).
    pub fn workload_parts(&self) -> Result<(&str, &str), SpiffeIdError> {
        let mut it = self.path().split('/');
        match (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        ) {
            (Some(""), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Ok((ns, sa)),
            _ => Err(SpiffeIdError::NotWorkloadForm),
        }
    }

    /// The namespace of an Istio-form ID, if it is one.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().ok().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-form ID, if it is one.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().ok().map(|(_, sa)| sa)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => return Err(SpiffeIdError::EmptySegment),
        "." | ".." => return Err(SpiffeIdError::DotSegment),
        _ => {}
    }
    match segment
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::BadPathChar(c)),
        None => Ok(()),
    }
}
