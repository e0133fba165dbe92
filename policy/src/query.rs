//! A traffic description as people write it (`name=value` pairs): the input of `nodemesh policy
//! check/explain` and of the proxy's `/policy/explain`, parsed once so both ask the engine the
//! same question.
//!
//! The rules, whoever the caller:
//! - `destination-namespace` and `destination-port` (1..=65535) are required;
//! - `destination-labels` is `k=v,...`, repeatable, empty items skipped, a key at most once;
//! - `source-principal` is `TRUST-DOMAIN/ns/NS/sa/SA`, with or without one `spiffe://`; it gives
//!   the source namespace, and a `source-namespace` that says otherwise is refused;
//! - `method` makes the traffic an HTTP request; `path` (default `/`), `host` (default none) and
//!   the repeatable `header` (`Name: value`) need it;
//! - header names are matched case-insensitively, so they are kept in lowercase, and values are
//!   trimmed of surrounding whitespace as HTTP does;
//! - every other single-valued parameter may be given once; an unknown name is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{AddrParseError, IpAddr};

use crate::matcher::{principal_form, principal_parts};
use crate::request::{Connection, Destination, HttpRequest, Peer};

/// A parameter of a traffic description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficField {
    /// `destination-namespace`: the destination workload's namespace (required).
    DestinationNamespace,
    /// `destination-labels`: the destination workload's labels, `k=v,...` (repeatable).
    DestinationLabels,
    /// `destination-port`: the destination port (required).
    DestinationPort,
    /// `destination-ip`: the destination IP address.
    DestinationIp,
    /// `source-principal`: the caller's identity; none means a plaintext caller.
    SourcePrincipal,
    /// `source-namespace`: the caller's namespace (default: the principal's).
    SourceNamespace,
    /// `source-ip`: the caller's IP address.
    SourceIp,
    /// `method`: the HTTP method; without it the stream is not HTTP.
    Method,
    /// `path`: the HTTP request path, query included (default `/`).
    Path,
    /// `host`: the HTTP Host.
    Host,
    /// `header`: one HTTP header, `Name: value` (repeatable).
    Header,
}

impl TrafficField {
    /// Every parameter, in the order they are checked.
    pub const ALL: [TrafficField; 11] = [
        TrafficField::DestinationNamespace,
        TrafficField::DestinationLabels,
        TrafficField::DestinationPort,
        TrafficField::DestinationIp,
        TrafficField::SourcePrincipal,
        TrafficField::SourceNamespace,
        TrafficField::SourceIp,
        TrafficField::Method,
        TrafficField::Path,
        TrafficField::Host,
        TrafficField::Header,
    ];

    /// The parameter's name (`destination-namespace`, ...), also the CLI flag without `--`.
    pub fn name(self) -> &'static str {
        match self {
            TrafficField::DestinationNamespace => "destination-namespace",
            TrafficField::DestinationLabels => "destination-labels",
            TrafficField::DestinationPort => "destination-port",
            TrafficField::DestinationIp => "destination-ip",
            TrafficField::SourcePrincipal => "source-principal",
            TrafficField::SourceNamespace => "source-namespace",
            TrafficField::SourceIp => "source-ip",
            TrafficField::Method => "method",
            TrafficField::Path => "path",
            TrafficField::Host => "host",
            TrafficField::Header => "header",
        }
    }

    /// The parameter called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the parameter may be given more than once.
    pub fn repeatable(self) -> bool {
        matches!(self, TrafficField::DestinationLabels | TrafficField::Header)
    }
}

impl fmt::Display for TrafficField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with one parameter's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldProblem {
    /// A required parameter is absent.
    #[error("is required")]
    Missing,
    /// A single-valued parameter is given more than once.
    #[error("is given more than once")]
    Repeated,
    /// The value is empty where one is needed.
    #[error("must not be empty")]
    Empty,
    /// Not a port number.
    #[error("{value:?} is not a port number in 1..=65535")]
    NotAPort {
        /// The value as given.
        value: String,
    },
    /// Not an IP address.
    #[error("{value:?} is not an IP address")]
    NotAnIp {
        /// The value as given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: AddrParseError,
    },
    /// A label that is not `k=v` with a non-empty key.
    #[error("{item:?} is not k=v")]
    NotALabel {
        /// The item as given.
        item: String,
    },
    /// The same label key twice.
    #[error("label {key:?} is given more than once")]
    DuplicateLabel {
        /// The key.
        key: String,
    },
    /// A principal that is not `TRUST-DOMAIN/ns/NS/sa/SA`.
    #[error("{value:?} is not TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT")]
    NotAPrincipal {
        /// The value as given.
        value: String,
    },
    /// A source namespace other than the principal's.
    #[error("{given:?} contradicts the principal's namespace {principal:?}")]
    ContradictsPrincipal {
        /// The namespace given.
        given: String,
        /// The principal's namespace.
        principal: String,
    },
    /// A header that is not `Name: value` with a valid name.
    #[error("{value:?} is not 'Name: value'")]
    NotAHeader {
        /// The value as given.
        value: String,
    },
    /// An HTTP parameter without `method`.
    #[error("needs method (without it the stream is not HTTP)")]
    NeedsMethod,
}

/// Why a traffic description is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficQueryError {
    /// A parameter name that is not a [`TrafficField`].
    #[error("unknown parameter {0:?}")]
    UnknownField(String),
    /// A parameter whose value is wrong.
    #[error("{field}: {problem}")]
    Field {
        /// The parameter.
        field: TrafficField,
        /// What is wrong with it.
        problem: FieldProblem,
    },
}

impl TrafficQueryError {
    fn field(field: TrafficField, problem: FieldProblem) -> Self {
        TrafficQueryError::Field { field, problem }
    }
}

/// The HTTP part of a [`TrafficQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct RequestQuery {
    method: String,
    path: String,
    host: String,
    /// Names in ASCII lowercase, values trimmed, in the order given.
    headers: Vec<(String, String)>,
}

/// One connection, and optionally one HTTP request on it, to decide: checked and owned. Lend it
/// to the engine with [`TrafficQuery::connection`] and [`TrafficQuery::request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficQuery {
    destination_namespace: String,
    destination_labels: BTreeMap<String, String>,
    destination_port: u16,
    destination_ip: Option<IpAddr>,
    /// Without `spiffe://`.
    source_principal: Option<String>,
    /// As given, or the principal's.
    source_namespace: Option<String>,
    source_ip: Option<IpAddr>,
    request: Option<RequestQuery>,
}

impl TrafficQuery {
    /// Parses `name=value` pairs (names as in [`TrafficField::name`]); the first problem found,
    /// in the order of [`TrafficField::ALL`], is the error.
    pub fn from_pairs<'n, 'v>(
        pairs: impl IntoIterator<Item = (&'n str, &'v str)>,
    ) -> Result<Self, TrafficQueryError> {
        let mut given: BTreeMap<TrafficField, Vec<&'v str>> = BTreeMap::new();
        for (name, value) in pairs {
            let field = TrafficField::from_name(name)
                .ok_or_else(|| TrafficQueryError::UnknownField(name.to_owned()))?;
            given.entry(field).or_default().push(value);
        }
        Given(given).query()
    }

    /// The connection, borrowed for the engine.
    pub fn connection(&self) -> Connection<'_> {
        Connection {
            source: Peer {
                principal: self.source_principal.as_deref(),
                namespace: self.source_namespace.as_deref(),
                ip: self.source_ip,
            },
            destination: Destination {
                namespace: &self.destination_namespace,
                labels: &self.destination_labels,
                ip: self.destination_ip,
                port: self.destination_port,
            },
        }
    }

    /// The HTTP request, borrowed for the engine; `None` when the stream is not HTTP.
    pub fn request(&self) -> Option<HttpRequest<'_>> {
        self.request.as_ref().map(|r| HttpRequest {
            method: &r.method,
            path: &r.path,
            host: &r.host,
            headers: &r.headers,
        })
    }
}

/// The raw values given, by parameter.
struct Given<'a>(BTreeMap<TrafficField, Vec<&'a str>>);

impl<'a> Given<'a> {
    fn all(&self, field: TrafficField) -> &[&'a str] {
        self.0.get(&field).map_or(&[], Vec::as_slice)
    }

    fn one(&self, field: TrafficField) -> Result<Option<&'a str>, TrafficQueryError> {
        match self.all(field) {
            [] => Ok(None),
            [v] => Ok(Some(*v)),
            _ => Err(TrafficQueryError::field(field, FieldProblem::Repeated)),
        }
    }

    fn non_empty(&self, field: TrafficField) -> Result<Option<&'a str>, TrafficQueryError> {
        match self.one(field)? {
            Some("") => Err(TrafficQueryError::field(field, FieldProblem::Empty)),
            v => Ok(v),
        }
    }

    fn required(&self, field: TrafficField) -> Result<&'a str, TrafficQueryError> {
        self.non_empty(field)?
            .ok_or_else(|| TrafficQueryError::field(field, FieldProblem::Missing))
    }

    fn ip(&self, field: TrafficField) -> Result<Option<IpAddr>, TrafficQueryError> {
        self.one(field)?
            .map(|value| {
                value.parse().map_err(|source| {
                    let value = value.to_owned();
                    TrafficQueryError::field(field, FieldProblem::NotAnIp { value, source })
                })
            })
            .transpose()
    }

    fn query(&self) -> Result<TrafficQuery, TrafficQueryError> {
        use TrafficField as F;
        let destination_namespace = self.required(F::DestinationNamespace)?.to_owned();
        let destination_labels = self.labels()?;
        let port = self.required(F::DestinationPort)?;
        let destination_port = port.parse().ok().filter(|&p: &u16| p != 0).ok_or_else(|| {
            let value = port.to_owned();
            TrafficQueryError::field(F::DestinationPort, FieldProblem::NotAPort { value })
        })?;
        let destination_ip = self.ip(F::DestinationIp)?;
        let source_principal = self.one(F::SourcePrincipal)?.map(principal_form);
        let principal_namespace = match source_principal {
            Some(p) => Some(principal_parts(p).map(|(ns, _)| ns).ok_or_else(|| {
                let value = p.to_owned();
                TrafficQueryError::field(F::SourcePrincipal, FieldProblem::NotAPrincipal { value })
            })?),
            None => None,
        };
        let source_namespace = match (self.non_empty(F::SourceNamespace)?, principal_namespace) {
            (Some(given), Some(principal)) if given != principal => {
                let problem = FieldProblem::ContradictsPrincipal {
                    given: given.to_owned(),
                    principal: principal.to_owned(),
                };
                return Err(TrafficQueryError::field(F::SourceNamespace, problem));
            }
            (given, principal) => given.or(principal).map(str::to_owned),
        };
        let source_ip = self.ip(F::SourceIp)?;
        Ok(TrafficQuery {
            destination_namespace,
            destination_labels,
            destination_port,
            destination_ip,
            source_principal: source_principal.map(str::to_owned),
            source_namespace,
            source_ip,
            request: self.request()?,
        })
    }

    fn labels(&self) -> Result<BTreeMap<String, String>, TrafficQueryError> {
        let field = TrafficField::DestinationLabels;
        let mut labels = BTreeMap::new();
        for item in self.all(field).iter().flat_map(|v| v.split(',')) {
            if item.is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                let item = item.to_owned();
                return Err(TrafficQueryError::field(
                    field,
                    FieldProblem::NotALabel { item },
                ));
            };
            if labels.insert(key.to_owned(), value.to_owned()).is_some() {
                let key = key.to_owned();
                return Err(TrafficQueryError::field(
                    field,
                    FieldProblem::DuplicateLabel { key },
                ));
            }
        }
        Ok(labels)
    }

    fn request(&self) -> Result<Option<RequestQuery>, TrafficQueryError> {
        use TrafficField as F;
        let Some(method) = self.non_empty(F::Method)? else {
            return match [F::Path, F::Host, F::Header]
                .into_iter()
                .find(|f| !self.all(*f).is_empty())
            {
                Some(f) => Err(TrafficQueryError::field(f, FieldProblem::NeedsMethod)),
                None => Ok(None),
            };
        };
        let path = self.non_empty(F::Path)?.unwrap_or("/");
        let host = self.one(F::Host)?.unwrap_or("");
        let headers = self
            .all(F::Header)
            .iter()
            .copied()
            .map(header)
            .collect::<Result<_, _>>()?;
        Ok(Some(RequestQuery {
            method: method.to_owned(),
            path: path.to_owned(),
            host: host.to_owned(),
            headers,
        }))
    }
}

/// `Name: value` as (lowercase name, trimmed value).
fn header(h: &str) -> Result<(String, String), TrafficQueryError> {
    h.split_once(':')
        .map(|(name, value)| (name.trim(), value.trim()))
        .filter(|(name, _)| http::HeaderName::from_bytes(name.as_bytes()).is_ok())
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .ok_or_else(|| {
            let value = h.to_owned();
            TrafficQueryError::field(TrafficField::Header, FieldProblem::NotAHeader { value })
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BASE: [(&str, &str); 2] = [
        ("destination-namespace", "shop"),
        ("destination-port", "8080"),
    ];

    fn parse(extra: &[(&'static str, &'static str)]) -> Result<TrafficQuery, TrafficQueryError> {
        TrafficQuery::from_pairs(BASE.iter().chain(extra).copied())
    }

    fn problem(extra: &[(&'static str, &'static str)]) -> (TrafficField, FieldProblem) {
        match parse(extra).unwrap_err() {
            TrafficQueryError::Field { field, problem } => (field, problem),
            other => panic!("{extra:?}: {other}"),
        }
    }

    #[test]
    fn defaults_describe_a_plaintext_tcp_stream() {
        let q = parse(&[]).unwrap();
        let c = q.connection();
        assert_eq!(c.destination.namespace, "shop");
        assert_eq!(c.destination.port, 8080);
        assert_eq!(c.destination.ip, None);
        assert_eq!(c.destination.labels.label("app"), None);
        assert_eq!(c.source, Peer::default());
        assert!(q.request().is_none());
    }

    #[test]
    fn every_field_is_read() {
        let q = parse(&[
            ("destination-labels", "app=web,tier=front"),
            ("destination-labels", "version="),
            ("destination-ip", "10.1.0.1"),
            ("source-principal", "cluster.local/ns/client/sa/curl"),
            ("source-namespace", "client"),
            ("source-ip", "::1"),
            ("method", "POST"),
            ("path", "/api?x=1"),
            ("host", "web.shop"),
            ("header", "X-User: alice"),
        ])
        .unwrap();
        let c = q.connection();
        let labels = c.destination.labels;
        assert_eq!(labels.label("app"), Some("web"));
        assert_eq!(labels.label("tier"), Some("front"));
        assert_eq!(labels.label("version"), Some(""));
        assert_eq!(c.destination.ip, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(c.source.principal, Some("cluster.local/ns/client/sa/curl"));
        assert_eq!(c.source.namespace, Some("client"));
        assert_eq!(c.source.ip, Some("::1".parse().unwrap()));
        let r = q.request().unwrap();
        assert_eq!((r.method, r.path, r.host), ("POST", "/api?x=1", "web.shop"));
        assert_eq!(r.headers.joined("x-user").as_deref(), Some(&b"alice"[..]));
    }

    #[test]
    fn http_defaults_to_path_slash_and_no_host() {
        let q = parse(&[("method", "GET")]).unwrap();
        let r = q.request().unwrap();
        assert_eq!((r.method, r.path, r.host), ("GET", "/", ""));
        assert_eq!(r.headers.joined("x"), None);
    }

    #[test]
    fn header_names_are_lowercased_and_values_trimmed() {
        let a = parse(&[("method", "GET"), ("header", " X-User :  alice  ")]).unwrap();
        let b = parse(&[("method", "GET"), ("header", "x-user: alice")]).unwrap();
        assert_eq!(a, b, "the same header whatever its case and spacing");
        assert_eq!(
            a.request.unwrap().headers,
            [("x-user".to_owned(), "alice".to_owned())]
        );
        // A value may hold colons and be empty.
        let q = parse(&[
            ("method", "GET"),
            ("header", "Referer: http://a/b"),
            ("header", "X-E:"),
        ])
        .unwrap();
        assert_eq!(
            q.request.unwrap().headers,
            [
                ("referer".to_owned(), "http://a/b".to_owned()),
                ("x-e".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn the_principal_gives_the_namespace() {
        for principal in [
            "cluster.local/ns/client/sa/curl",
            "spiffe://cluster.local/ns/client/sa/curl",
        ] {
            let q = parse(&[("source-principal", principal)]).unwrap();
            let s = q.connection().source;
            assert_eq!(s.principal, Some("cluster.local/ns/client/sa/curl"));
            assert_eq!(s.namespace, Some("client"), "{principal}");
        }
        // Only one spiffe:// is a prefix; a second makes the trust domain "spiffe:".
        let (field, p) = problem(&[("source-principal", "spiffe://spiffe://td/ns/a/sa/b")]);
        assert_eq!(field, TrafficField::SourcePrincipal);
        assert!(matches!(p, FieldProblem::NotAPrincipal { .. }), "{p}");
        // Without a principal the namespace is whatever is given.
        let q = parse(&[("source-namespace", "client")]).unwrap();
        assert_eq!(q.connection().source.namespace, Some("client"));
        assert_eq!(q.connection().source.principal, None);
    }

    #[test]
    fn every_field_names_its_error() {
        use FieldProblem as P;
        use TrafficField as F;
        let only = |pairs: &[(&'static str, &'static str)]| match TrafficQuery::from_pairs(
            pairs.iter().copied(),
        )
        .unwrap_err()
        {
            TrafficQueryError::Field { field, problem } => (field, problem),
            other => panic!("{other}"),
        };
        assert_eq!(
            only(&[("destination-port", "80")]),
            (F::DestinationNamespace, P::Missing)
        );
        assert_eq!(
            only(&[("destination-namespace", ""), ("destination-port", "80")]),
            (F::DestinationNamespace, P::Empty)
        );
        assert_eq!(
            only(&[("destination-namespace", "shop")]),
            (F::DestinationPort, P::Missing)
        );
        for port in ["0", "65536", "http", "-1"] {
            let q = TrafficQuery::from_pairs([
                ("destination-namespace", "shop"),
                ("destination-port", port),
            ]);
            assert_eq!(
                q.unwrap_err(),
                TrafficQueryError::field(F::DestinationPort, P::NotAPort { value: port.into() })
            );
        }
        assert_eq!(
            problem(&[("destination-labels", "app")]),
            (F::DestinationLabels, P::NotALabel { item: "app".into() })
        );
        assert_eq!(
            problem(&[("destination-labels", "=web")]),
            (
                F::DestinationLabels,
                P::NotALabel {
                    item: "=web".into()
                }
            )
        );
        assert_eq!(
            problem(&[
                ("destination-labels", "app=a"),
                ("destination-labels", "app=b")
            ]),
            (
                F::DestinationLabels,
                P::DuplicateLabel { key: "app".into() }
            )
        );
        let (field, p) = problem(&[("destination-ip", "10.1.0")]);
        assert_eq!(field, F::DestinationIp);
        assert!(
            matches!(p, P::NotAnIp { ref value, .. } if value == "10.1.0"),
            "{p}"
        );
        assert_eq!(
            problem(&[("source-principal", "td/ns/a")]),
            (
                F::SourcePrincipal,
                P::NotAPrincipal {
                    value: "td/ns/a".into()
                }
            )
        );
        assert_eq!(
            problem(&[
                ("source-principal", "td/ns/a/sa/b"),
                ("source-namespace", "b")
            ]),
            (
                F::SourceNamespace,
                P::ContradictsPrincipal {
                    given: "b".into(),
                    principal: "a".into()
                }
            )
        );
        assert_eq!(
            problem(&[("source-namespace", "")]),
            (F::SourceNamespace, P::Empty)
        );
        let (field, p) = problem(&[("source-ip", "localhost")]);
        assert_eq!(field, F::SourceIp);
        assert!(matches!(p, P::NotAnIp { .. }), "{p}");
        assert_eq!(problem(&[("method", "")]), (F::Method, P::Empty));
        assert_eq!(
            problem(&[("method", "GET"), ("path", "")]),
            (F::Path, P::Empty)
        );
        for (field, value) in [("path", "/a"), ("host", "h"), ("header", "a: b")] {
            assert_eq!(
                problem(&[(field, value)]),
                (TrafficField::from_name(field).unwrap(), P::NeedsMethod)
            );
        }
        for h in ["no-colon", ": empty name", "bad name: x"] {
            assert_eq!(
                problem(&[("method", "GET"), ("header", h)]),
                (F::Header, P::NotAHeader { value: h.into() })
            );
        }
    }

    #[test]
    fn single_valued_fields_are_given_once() {
        for field in TrafficField::ALL {
            if field.repeatable() {
                continue;
            }
            let value = match field {
                TrafficField::DestinationNamespace => "shop",
                TrafficField::DestinationPort => "80",
                TrafficField::DestinationIp | TrafficField::SourceIp => "10.0.0.1",
                TrafficField::SourcePrincipal => "td/ns/a/sa/b",
                TrafficField::SourceNamespace => "a",
                _ => "x",
            };
            let mut pairs = vec![
                ("destination-namespace", "shop"),
                ("destination-port", "80"),
                ("method", "GET"),
                (field.name(), value),
            ];
            if !matches!(
                field,
                TrafficField::DestinationNamespace
                    | TrafficField::DestinationPort
                    | TrafficField::Method
            ) {
                pairs.push((field.name(), value));
            }
            assert_eq!(
                TrafficQuery::from_pairs(pairs).unwrap_err(),
                TrafficQueryError::field(field, FieldProblem::Repeated),
                "{field}"
            );
        }
    }

    #[test]
    fn unknown_parameters_are_refused() {
        assert_eq!(
            parse(&[("source-namspace", "a")]).unwrap_err(),
            TrafficQueryError::UnknownField("source-namspace".into())
        );
    }

    #[test]
    fn errors_read_as_field_then_reason() {
        assert_eq!(
            parse(&[("destination-labels", "app")])
                .unwrap_err()
                .to_string(),
            "destination-labels: \"app\" is not k=v"
        );
        assert_eq!(
            parse(&[
                ("source-principal", "td/ns/a/sa/b"),
                ("source-namespace", "b")
            ])
            .unwrap_err()
            .to_string(),
            "source-namespace: \"b\" contradicts the principal's namespace \"a\""
        );
    }

    #[test]
    fn names_round_trip() {
        for f in TrafficField::ALL {
            assert_eq!(TrafficField::from_name(f.name()), Some(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!(TrafficField::from_name("Method"), None);
    }
}
