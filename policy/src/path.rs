//! Request path normalization and path patterns.
//!
//! Normalization is Istio's BASE (RFC 3986 normalization: decode percent-escaped unreserved
//! characters once, `\` to `/`, resolve `.` and `..`, drop the query and fragment) plus merged
//! slashes (`//admin` is `/admin`), which is stricter than Istio's default. Escaped slashes
//! (`%2F`, `%5C`) are refused unless [`PathOptions::decode_escaped_slashes`] is set; `%00` is
//! always refused.

use std::borrow::Cow;
use std::fmt;

use crate::matcher::StringMatch;

/// How request paths are normalized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Decode `%2F` and `%5C` to `/` instead of refusing the request. Off by default: escaped
    /// slashes are a classic way around path rules.
    pub decode_escaped_slashes: bool,
}

/// Why a request path is refused (the proxy answers 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPath {
    /// Empty, or not starting with `/`.
    #[error("path does not start with /")]
    NotAbsolute,
    /// Contains `%2F` or `%5C` (any case).
    #[error("path contains an escaped slash (%2F or %5C)")]
    EscapedSlash,
    /// Contains `%00` or a raw control character.
    #[error("path contains a NUL or control character")]
    ControlCharacter,
    /// A `%` not followed by two hex digits.
    #[error("path contains a malformed percent-escape")]
    BadEscape,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `p` is already in normal form (so it can be borrowed as is).
fn is_normal(p: &[u8]) -> bool {
    if p.iter()
        .any(|&b| b == b'%' || b == b'\\' || b.is_ascii_control())
    {
        return false;
    }
    // Look at each segment: no empty ones (except a trailing slash), no `.` or `..`.
    let mut segments = p[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == b"." || seg == b".." {
            return false;
        }
    }
    true
}

/// Normalizes a request target's path (see the module docs). The query and fragment are dropped.
pub fn normalize(raw: &str, options: PathOptions) -> Result<Cow<'_, str>, InvalidPath> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    if !path.starts_with('/') {
        return Err(InvalidPath::NotAbsolute);
    }
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }

    // Pass 1: percent-decoding and backslashes.
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1).copied(), bytes.get(i + 2).copied()) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(InvalidPath::BadEscape),
                };
                let v = match (hex(hi), hex(lo)) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(InvalidPath::BadEscape),
                };
                match v {
                    0 => return Err(InvalidPath::ControlCharacter),
                    b'/' | b'\\' if options.decode_escaped_slashes => decoded.push(b'/'),
                    b'/' | b'\\' => return Err(InvalidPath::EscapedSlash),
                    v if is_unreserved(v) => decoded.push(v),
                    _ => {
                        decoded.push(b'%');
                        decoded.push(hi.to_ascii_uppercase());
                        decoded.push(lo.to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => {
                decoded.push(b'/');
                i += 1;
            }
            b if b.is_ascii_control() => return Err(InvalidPath::ControlCharacter),
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }

    // Pass 2: merge slashes and remove dot segments (RFC 3986 5.2.4).
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        match seg {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                out.pop();
                trailing_slash = true;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        // Only ASCII was rewritten above and whole UTF-8 sequences were copied, so every segment
        // is valid UTF-8; `from_utf8_lossy` keeps that without an unwrap.
        result.push_str(&String::from_utf8_lossy(seg));
    }
    if out.is_empty() || trailing_slash {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// One segment of a `{*}`/`{**}` path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSegment {
    /// This exact segment.
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: the rest of the path, possibly empty; always last.
    Rest,
}

/// A compiled `paths` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// Exact, `prefix*`, `*suffix` or `*`.
    Simple(StringMatch),
    /// A template with `{*}` or `{**}` segments.
    Template(Box<[TemplateSegment]>),
}

/// Why a path pattern cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathPatternError {
    /// The empty string.
    #[error("empty path")]
    Empty,
    /// Exact and prefix paths must start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
    /// `*` anywhere but the first or last character.
    #[error("`*` is only allowed as the first or last character")]
    MisplacedWildcard,
    /// `{**}` followed by more segments.
    #[error("`{{**}}` must be the last segment of the path")]
    DoubleStarNotLast,
    /// A segment mixing `{*}`/`{**}` with other characters, or a stray brace or `*`.
    #[error("invalid path template segment {0:?}: use {{*}} or {{**}} as a whole segment")]
    BadTemplateSegment(String),
    /// The literal part would never equal a normalized request path.
    #[error("path is not normalized and can never match a request (normal form: {normal:?})")]
    NotNormalized {
        /// The normal form, when there is one.
        normal: String,
    },
}

impl PathPattern {
    /// Compiles a `paths`/`notPaths` entry.
    pub fn parse(pattern: &str) -> Result<Self, PathPatternError> {
        if pattern.is_empty() {
            return Err(PathPatternError::Empty);
        }
        if pattern.contains(['{', '}']) {
            return Self::parse_template(pattern);
        }
        let simple =
            StringMatch::parse(pattern, false).map_err(|_| PathPatternError::MisplacedWildcard)?;
        match &simple {
            StringMatch::Exact(p) | StringMatch::Prefix(p) => check_normal(p)?,
            StringMatch::Suffix(s) => {
                if s.contains(['\\', '%', '?', '#']) || s.contains("//") {
                    return Err(PathPatternError::NotNormalized {
                        normal: String::new(),
                    });
                }
            }
            StringMatch::Present => {}
        }
        Ok(PathPattern::Simple(simple))
    }

    fn parse_template(pattern: &str) -> Result<Self, PathPatternError> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(PathPatternError::NotAbsolute);
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "{*}" => TemplateSegment::One,
                "{**}" if i + 1 == parts.len() => TemplateSegment::Rest,
                "{**}" => return Err(PathPatternError::DoubleStarNotLast),
                p if p.contains(['{', '}', '*']) => {
                    return Err(PathPatternError::BadTemplateSegment(p.to_owned()));
                }
                p => TemplateSegment::Literal(p.into()),
            };
            segments.push(seg);
        }
        // The literal segments must be in normal form, like any other path.
        let skeleton: String = segments
            .iter()
            .map(|s| match s {
                TemplateSegment::Literal(l) => format!("/{l}"),
                TemplateSegment::One | TemplateSegment::Rest => "/x".to_owned(),
            })
            .collect();
        check_normal(&skeleton)?;
        Ok(PathPattern::Template(segments.into()))
    }

    /// Whether a normalized request path matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Simple(m) => m.matches(path.as_bytes()),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segments.iter() {
                    match seg {
                        TemplateSegment::Rest => return parts.next().is_some(),
                        TemplateSegment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        TemplateSegment::Literal(l) => match parts.next() {
                            Some(p) if p == &**l => {}
                            _ => return false,
                        },
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

fn check_normal(p: &str) -> Result<(), PathPatternError> {
    if !p.starts_with('/') {
        return Err(PathPatternError::NotAbsolute);
    }
    match normalize(p, PathOptions::default()) {
        Ok(n) if n == p => Ok(()),
        Ok(n) => Err(PathPatternError::NotNormalized {
            normal: n.into_owned(),
        }),
        Err(_) => Err(PathPatternError::NotNormalized {
            normal: String::new(),
        }),
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Simple(m) => m.fmt(f),
            PathPattern::Template(segments) => {
                f.write_str("\"")?;
                for s in segments.iter() {
                    match s {
                        TemplateSegment::Literal(l) => write!(f, "/{l}")?,
                        TemplateSegment::One => f.write_str("/{*}")?,
                        TemplateSegment::Rest => f.write_str("/{**}")?,
                    }
                }
                f.write_str("\"")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, InvalidPath> {
        normalize(p, PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn normalization() {
        assert_eq!(n("/a/b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a/b?x=/../y").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a/b#frag").as_deref(), Ok("/a/b"));
        assert_eq!(n("//admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a//b///c").as_deref(), Ok("/a/b/c"));
        assert_eq!(n("/admin/../admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/%2e%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/public/%2E%2E/admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a/./b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("/../../x").as_deref(), Ok("/x"));
        assert_eq!(n("\\admin"), Err(InvalidPath::NotAbsolute));
        assert_eq!(n("/public\\..\\admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(n("/a%3fb").as_deref(), Ok("/a%3Fb"));
        assert_eq!(n("/%252e%252e/x").as_deref(), Ok("/%252e%252e/x"));
        assert_eq!(n("/a/"), Ok("/a/".to_owned()));
        assert_eq!(n("/"), Ok("/".to_owned()));
        assert_eq!(n(""), Err(InvalidPath::NotAbsolute));
        assert_eq!(n("admin"), Err(InvalidPath::NotAbsolute));
        assert_eq!(n("/a%2Fb"), Err(InvalidPath::EscapedSlash));
        assert_eq!(n("/a%2fb"), Err(InvalidPath::EscapedSlash));
        assert_eq!(n("/a%5cb"), Err(InvalidPath::EscapedSlash));
        assert_eq!(n("/a%00b"), Err(InvalidPath::ControlCharacter));
        assert_eq!(n("/a\0b"), Err(InvalidPath::ControlCharacter));
        assert_eq!(n("/a%zz"), Err(InvalidPath::BadEscape));
        assert_eq!(n("/a%4"), Err(InvalidPath::BadEscape));
        assert_eq!(n("/caf\u{e9}/../x").as_deref(), Ok("/x"));
        let decode = PathOptions {
            decode_escaped_slashes: true,
        };
        assert_eq!(
            normalize("/a%2F..%2Fadmin", decode).as_deref(),
            Ok("/admin")
        );
        assert_eq!(normalize("/a%5Cb", decode).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(n_cow("/api/v1/items"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            n_cow("/api/v1/items?q=1"),
            Ok(Cow::Borrowed("/api/v1/items"))
        ));
    }

    fn n_cow(p: &str) -> Result<Cow<'_, str>, InvalidPath> {
        normalize(p, PathOptions::default())
    }

    #[test]
    fn patterns() {
        let m = |p: &str, v: &str| PathPattern::parse(p).map(|p| p.matches(v));
        assert_eq!(m("/a", "/a"), Ok(true));
        assert_eq!(m("/a*", "/abc"), Ok(true));
        assert_eq!(m("*.html", "/x/y.html"), Ok(true));
        assert_eq!(m("/foo/{*}", "/foo/bar"), Ok(true));
        assert_eq!(m("/foo/{*}", "/foo/bar/baz"), Ok(false));
        assert_eq!(m("/foo/{*}", "/foo/"), Ok(false));
        assert_eq!(m("/foo/{**}", "/foo/bar/baz"), Ok(true));
        assert_eq!(m("/foo/{**}", "/foo/"), Ok(true));
        assert_eq!(m("/foo/{**}", "/foo"), Ok(false));
        assert_eq!(m("/foo/{*}/bar/{**}", "/foo/x/bar/y/z"), Ok(true));
        assert_eq!(m("/foo/{*}/bar/{**}", "/foo/x/baz/y"), Ok(false));
        assert_eq!(
            m("/{**}/foo", "/a/foo"),
            Err(PathPatternError::DoubleStarNotLast)
        );
        assert!(matches!(
            m("/foo/{*}.txt", "/foo/a.txt"),
            Err(PathPatternError::BadTemplateSegment(_))
        ));
        assert!(matches!(
            m("/*/baz/{*}", "/a/baz/b"),
            Err(PathPatternError::BadTemplateSegment(_))
        ));
        assert_eq!(m("a/b", "a/b"), Err(PathPatternError::NotAbsolute));
        assert!(matches!(
            m("//admin", "/admin"),
            Err(PathPatternError::NotNormalized { .. })
        ));
        assert!(matches!(
            m("/a/../b", "/b"),
            Err(PathPatternError::NotNormalized { .. })
        ));
        assert!(matches!(
            m("/a//{*}", "/a/b"),
            Err(PathPatternError::NotNormalized { .. })
        ));
        assert_eq!(m("/a*b", "/ab"), Err(PathPatternError::MisplacedWildcard));
    }
}
