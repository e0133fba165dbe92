//! Value matchers: Istio's string match forms (exact, `prefix*`, `*suffix`, `*`), and the helpers
//! that pick apart peer identities and hosts.

use std::fmt;

/// One compiled string pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// The whole value equals this.
    Exact(Box<str>),
    /// `prefix*`: the value starts with this.
    Prefix(Box<str>),
    /// `*suffix`: the value ends with this.
    Suffix(Box<str>),
    /// `*`: any non-empty value.
    Present,
}

/// Why a pattern cannot be compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternError {
    /// The pattern is the empty string.
    Empty,
    /// A `*` somewhere other than the first or last character, or more than one.
    MisplacedWildcard,
}

impl StringMatch {
    /// Parses Istio's match syntax. With `fold_case` the pattern is lowercased and compared
    /// case-insensitively by [`StringMatch::matches_ci`].
    pub fn parse(pattern: &str, fold_case: bool) -> Result<Self, PatternError> {
        let p: Box<str> = if fold_case {
            pattern.to_ascii_lowercase().into()
        } else {
            pattern.into()
        };
        if p.is_empty() {
            return Err(PatternError::Empty);
        }
        if &*p == "*" {
            return Ok(StringMatch::Present);
        }
        let stars = p.bytes().filter(|&b| b == b'*').count();
        match stars {
            0 => Ok(StringMatch::Exact(p)),
            1 if p.ends_with('*') => Ok(StringMatch::Prefix(p[..p.len() - 1].into())),
            1 if p.starts_with('*') => Ok(StringMatch::Suffix(p[1..].into())),
            _ => Err(PatternError::MisplacedWildcard),
        }
    }

    /// Case-sensitive match.
    #[inline]
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(p) => value == p.as_bytes(),
            StringMatch::Prefix(p) => value.starts_with(p.as_bytes()),
            StringMatch::Suffix(p) => value.ends_with(p.as_bytes()),
            StringMatch::Present => !value.is_empty(),
        }
    }

    /// ASCII case-insensitive match (the pattern was lowercased when parsed).
    #[inline]
    pub fn matches_ci(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(p) => value.eq_ignore_ascii_case(p.as_bytes()),
            StringMatch::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|v| v.eq_ignore_ascii_case(p.as_bytes())),
            StringMatch::Suffix(p) => value
                .len()
                .checked_sub(p.len())
                .and_then(|start| value.get(start..))
                .is_some_and(|v| v.eq_ignore_ascii_case(p.as_bytes())),
            StringMatch::Present => !value.is_empty(),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(p) => write!(f, "{p:?}"),
            StringMatch::Prefix(p) => write!(f, "\"{}*\"", p.escape_debug()),
            StringMatch::Suffix(p) => write!(f, "\"*{}\"", p.escape_debug()),
            StringMatch::Present => f.write_str("\"*\""),
        }
    }
}

/// A service account as `(namespace, name)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace of the service account.
    pub namespace: Box<str>,
    /// Name of the service account.
    pub name: Box<str>,
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Strips an optional `spiffe://` so principals compare in Istio's form (`td/ns/x/sa/y`).
#[inline]
pub fn principal_form(principal: &str) -> &str {
    principal.strip_prefix("spiffe://").unwrap_or(principal)
}

/// Namespace and service account of a principal `td/ns/<ns>/sa/<sa>` (without `spiffe://`).
/// Runs on every decision, so it scans bytes instead of splitting.
pub fn principal_parts(principal: &str) -> Option<(&str, &str)> {
    let b = principal.as_bytes();
    let slash = |from: usize| {
        b.get(from..)?
            .iter()
            .position(|&c| c == b'/')
            .map(|i| i + from)
    };
    let td_end = slash(0).filter(|&i| i > 0)?;
    let rest = principal.get(td_end..)?.strip_prefix("/ns/")?;
    let ns_start = td_end + 4;
    let ns_end = slash(ns_start).filter(|&i| i > ns_start)?;
    let ns = principal.get(ns_start..ns_end)?;
    let sa = rest.get(ns.len()..)?.strip_prefix("/sa/")?;
    (!sa.is_empty() && !sa.contains('/')).then_some((ns, sa))
}

/// The host without a trailing `:port` and without a trailing dot (`Example.com.:80` ->
/// `Example.com`). IPv6 literals keep their brackets.
pub fn host_without_port(host: &str) -> &str {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let m = |p: &str, v: &str| StringMatch::parse(p, false).map(|m| m.matches(v.as_bytes()));
        assert_eq!(m("abc", "abc"), Ok(true));
        assert_eq!(m("abc", "abcd"), Ok(false));
        assert_eq!(m("ab*", "abcd"), Ok(true));
        assert_eq!(m("*cd", "abcd"), Ok(true));
        assert_eq!(m("*cd", "abce"), Ok(false));
        assert_eq!(m("*", ""), Ok(false));
        assert_eq!(m("*", "x"), Ok(true));
        assert_eq!(m("a*b", "ab"), Err(PatternError::MisplacedWildcard));
        assert_eq!(m("*a*", "a"), Err(PatternError::MisplacedWildcard));
        assert_eq!(m("", ""), Err(PatternError::Empty));
    }

    #[test]
    fn case_insensitive() {
        let m = |p: &str, v: &str| StringMatch::parse(p, true).map(|m| m.matches_ci(v.as_bytes()));
        assert_eq!(m("Example.COM", "example.com"), Ok(true));
        assert_eq!(m("*.Example.com", "API.EXAMPLE.COM"), Ok(true));
        assert_eq!(m("api.*", "API.x"), Ok(true));
        assert_eq!(m("*.example.com", "com"), Ok(false));
    }

    #[test]
    fn principals() {
        assert_eq!(principal_parts("cluster.local/ns/a/sa/b"), Some(("a", "b")));
        assert_eq!(principal_parts("cluster.local/ns/a/sa/b/c"), None);
        assert_eq!(principal_parts("cluster.local/ns//sa/b"), None);
        assert_eq!(principal_parts("/ns/a/sa/b"), None);
        assert_eq!(principal_parts("td/ns/a/sa/"), None);
        assert_eq!(principal_parts("td/ns/a/sx/b"), None);
        assert_eq!(principal_parts("td/nx/a/sa/b"), None);
        assert_eq!(principal_parts("td/ns/a"), None);
        assert_eq!(principal_parts("td"), None);
        assert_eq!(principal_form("spiffe://td/ns/a/sa/b"), "td/ns/a/sa/b");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("a.example:8080"), "a.example");
        assert_eq!(host_without_port("a.example."), "a.example");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a:b"), "a:b");
    }
}
