//! Policy files: multi-document YAML of `AuthorizationPolicy` objects, to compiled policies.
//!
//! Each document is parsed on its own, so one bad document does not hide the problems of the
//! others, and every problem names the file, the policy (or the document number when the
//! policy cannot be named) and the field path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::error::CompileErrorKind;
use crate::model::{API_VERSIONS, Action, KIND, PolicyDocument};
use crate::policy::{Policy, PolicyRef};

/// What a problem is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A named policy.
    Policy(PolicyRef),
    /// The n-th document of the file (1-based), when it cannot be named.
    Document(usize),
    /// A cluster-scoped policy (ClusterNetworkPolicy), by name.
    Cluster(String),
    /// The whole file.
    File,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Policy(p) => p.fmt(f),
            Subject::Document(n) => write!(f, "document {n}"),
            Subject::Cluster(name) => f.write_str(name),
            Subject::File => f.write_str("-"),
        }
    }
}

/// Why a document or policy is refused (or, for lint warnings, suspicious).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file cannot be read.
    #[error("cannot read: {0}")]
    Read(String),
    /// YAML syntax, an unknown field, a wrong type, ...
    #[error("{0}")]
    Yaml(String),
    /// `kind` is not `AuthorizationPolicy`.
    #[error("kind {0:?} is not AuthorizationPolicy")]
    Kind(String),
    /// `apiVersion` is not one we read.
    #[error(
        "apiVersion {0:?} is not one of security.nodemesh.io/v1, security.istio.io/v1, security.istio.io/v1beta1"
    )]
    ApiVersion(String),
    /// The policy does not compile.
    #[error(transparent)]
    Compile(CompileErrorKind),
    /// The same `namespace/name` twice.
    #[error("duplicate policy (first defined in {0})")]
    Duplicate(String),
    /// Lint only: a DENY or AUDIT policy without rules never matches.
    #[error("{0} policy without rules never matches")]
    NeverMatches(Action),
    /// A NetworkPolicy or ClusterNetworkPolicy does not compile.
    #[error("{0}")]
    Network(String),
    /// Lint only: a part of a NetworkPolicy or ClusterNetworkPolicy that can never match.
    #[error("{0}")]
    NetworkNeverMatches(String),
}

impl ProblemKind {
    /// Whether this is only a lint warning (the policy still loads).
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            ProblemKind::NeverMatches(_) | ProblemKind::NetworkNeverMatches(_)
        )
    }
}

/// One problem: `FILE: ns/name: field: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {subject}: {field}: {kind}")]
pub struct Problem {
    /// The file, as given.
    pub file: String,
    /// The policy or document.
    pub subject: Subject,
    /// The field path (`spec.rules[0].to[0].operation.ports[1]`), or `-` for a whole document.
    pub field: String,
    /// Why.
    pub kind: ProblemKind,
}

/// A policy document and the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedDocument {
    /// The file, as given.
    pub file: String,
    /// 1-based position among the file's documents.
    pub index: usize,
    /// The document.
    pub document: PolicyDocument,
}

/// A policy document held as JSON that does not fit the schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DocumentError {
    /// Where deserialization stopped (`spec.rules[0].to[0].operation.portz`), or `-`.
    pub field: String,
    /// Why.
    pub message: String,
}

impl PolicyDocument {
    /// Parses a policy document held as JSON: a `policies[]` entry of the standalone config, or
    /// an object read from Kubernetes. YAML's untyped scalars are accepted where the schema wants
    /// strings (`ports: [80]`, `nodemesh.io/dry-run: true`), as in policy files; unknown fields
    /// are errors that name their path.
    pub fn from_json_value(mut value: serde_json::Value) -> Result<Self, DocumentError> {
        stringify_scalars(&mut value, &mut Vec::new());
        serde_path_to_error::deserialize(value).map_err(|e| DocumentError {
            field: match e.path().to_string() {
                p if p.is_empty() || p == "." => "-".to_owned(),
                p => p,
            },
            message: e.into_inner().to_string(),
        })
    }
}

/// Turns numbers and booleans into strings everywhere the document schema has strings (that is,
/// everywhere except `metadata.generation`, `metadata.managedFields` and `status`).
fn stringify_scalars<'a>(value: &'a mut serde_json::Value, path: &mut Vec<&'a str>) {
    use serde_json::Value;
    match value {
        Value::Number(n) if path[..] != ["metadata", "generation"] => {
            *value = Value::String(n.to_string());
        }
        Value::Bool(b) => *value = Value::String(b.to_string()),
        Value::Array(items) => items.iter_mut().for_each(|v| stringify_scalars(v, path)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let skip = matches!(
                    (&path[..], k.as_str()),
                    ([], "status") | (["metadata"], "managedFields")
                );
                if !skip {
                    path.push(k);
                    stringify_scalars(v, path);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// Splits a YAML stream into documents: `(first line number, text)`. Document markers (`---`,
/// `...`) and directives (`%`) at the start of a line cannot occur inside content, so this
/// agrees with a YAML parser; each piece is then parsed on its own.
pub(crate) fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0; // byte offset of the current piece
    let mut start_line = 0;
    let mut in_directives = false;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\r', '\n']);
        let marker = |m: &str| {
            bare.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if marker("---") {
            if !in_directives && offset > start {
                docs.push((start_line, &text[start..offset]));
                start = offset;
                start_line = n;
            }
            in_directives = false;
        } else if bare.starts_with('%') && !in_directives {
            if offset > start {
                docs.push((start_line, &text[start..offset]));
            }
            start = offset;
            start_line = n;
            in_directives = true;
        } else if marker("...") {
            let end = offset + line.len();
            docs.push((start_line, &text[start..end]));
            start = end;
            start_line = n + 1;
        }
        offset += line.len();
    }
    if offset > start {
        docs.push((start_line, &text[start..]));
    }
    docs
}

fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.with_snippet = false;
    o
}

/// Parses one document; `Ok(None)` for an empty (comments only) document. On error, returns the
/// field path where deserialization stopped.
fn parse_document(text: &str) -> Result<Option<PolicyDocument>, (String, String)> {
    let mut path = String::new();
    let r = serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
        let mut track = serde_path_to_error::Track::new();
        let r = Option::<PolicyDocument>::deserialize(serde_path_to_error::Deserializer::new(
            de, &mut track,
        ));
        if r.is_err() {
            path = track.path().to_string();
        }
        r
    });
    r.map_err(|e| (path, e.to_string()))
}

/// Just enough of a document to name its policy when the full parse fails.
#[derive(Deserialize)]
struct NameOnly {
    metadata: Option<NameOnlyMeta>,
}

#[derive(Deserialize)]
struct NameOnlyMeta {
    name: Option<String>,
    namespace: Option<String>,
}

fn name_of(text: &str) -> Option<PolicyRef> {
    let doc: NameOnly = serde_saphyr::from_str_with_options(text, yaml_options()).ok()?;
    let m = doc.metadata?;
    Some(PolicyRef::new(m.namespace?, m.name?))
}

/// Parses a file's text into policy documents, checking `apiVersion`, `kind` and
/// `metadata.namespace`. Returns the good documents and every problem.
pub fn parse_file(file: &str, text: &str) -> (Vec<SourcedDocument>, Vec<Problem>) {
    parse_file_skipping(file, text, |_| false)
}

/// [`parse_file`], leaving out the documents `skip` picks (given each document's text, padded
/// so its line numbers are the file's); they still count in the document numbers.
pub(crate) fn parse_file_skipping(
    file: &str,
    text: &str,
    skip: impl Fn(&str) -> bool,
) -> (Vec<SourcedDocument>, Vec<Problem>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    let mut index = 0;
    for (line, piece) in split_documents(text) {
        // Pad with newlines so that reported line numbers are the file's.
        let padded = format!("{}{piece}", "\n".repeat(line));
        if skip(&padded) {
            index += 1;
            continue;
        }
        let problem = |subject, field: &str, kind| Problem {
            file: file.to_owned(),
            subject,
            field: field.to_owned(),
            kind,
        };
        match parse_document(&padded) {
            Ok(None) => {}
            Ok(Some(document)) => {
                index += 1;
                let subject = match document.policy_ref() {
                    Some(id) => Subject::Policy(id),
                    None => Subject::Document(index),
                };
                let mut ok = true;
                if !API_VERSIONS.contains(&document.api_version.as_str()) {
                    let kind = ProblemKind::ApiVersion(document.api_version.clone());
                    problems.push(problem(subject.clone(), "apiVersion", kind));
                    ok = false;
                }
                if document.kind != KIND {
                    let kind = ProblemKind::Kind(document.kind.clone());
                    problems.push(problem(subject.clone(), "kind", kind));
                    ok = false;
                }
                if document
                    .metadata
                    .namespace
                    .as_deref()
                    .is_none_or(str::is_empty)
                {
                    let kind = ProblemKind::Compile(CompileErrorKind::MissingNamespace);
                    let subject = Subject::Document(index);
                    problems.push(problem(subject, "metadata.namespace", kind));
                    ok = false;
                }
                if ok {
                    docs.push(SourcedDocument {
                        file: file.to_owned(),
                        index,
                        document,
                    });
                }
            }
            Err((path, message)) => {
                index += 1;
                let subject = name_of(&padded).map_or(Subject::Document(index), Subject::Policy);
                let field = if path.is_empty() || path == "." {
                    "-"
                } else {
                    &path
                };
                problems.push(problem(subject, field, ProblemKind::Yaml(message)));
            }
        }
    }
    (docs, problems)
}

/// Compiles parsed documents: the policies that compiled, and the problems of the rest
/// (including duplicate names across files).
pub fn compile_documents(docs: &[SourcedDocument]) -> (Vec<Policy>, Vec<Problem>) {
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<PolicyRef, &str> = BTreeMap::new();
    for d in docs {
        match d.document.compile() {
            Ok(p) => {
                if let Some(first) = seen.get(p.id()) {
                    problems.push(Problem {
                        file: d.file.clone(),
                        subject: Subject::Policy(p.id().clone()),
                        field: "metadata.name".to_owned(),
                        kind: ProblemKind::Duplicate((*first).to_owned()),
                    });
                } else {
                    seen.insert(p.id().clone(), &d.file);
                    policies.push(p);
                }
            }
            Err(errors) => problems.extend(errors.0.into_iter().map(|e| Problem {
                file: d.file.clone(),
                subject: Subject::Policy(e.policy),
                field: e.field,
                kind: ProblemKind::Compile(e.kind),
            })),
        }
    }
    (policies, problems)
}

/// Reads files: their `(name, text)` pairs, and a problem for each file that cannot be read.
pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> (Vec<(String, String)>, Vec<Problem>) {
    let mut texts = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => texts.push((file, text)),
            Err(e) => problems.push(Problem {
                file,
                subject: Subject::File,
                field: "-".to_owned(),
                kind: ProblemKind::Read(e.to_string()),
            }),
        }
    }
    (texts, problems)
}

/// Parses files' texts (`(name, text)` pairs) with [`parse_file`].
pub fn parse_texts(files: &[(String, String)]) -> (Vec<SourcedDocument>, Vec<Problem>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in files {
        let (d, p) = parse_file(file, text);
        docs.extend(d);
        problems.extend(p);
    }
    (docs, problems)
}

/// Parses and compiles files' texts (`(name, text)` pairs). Any problem fails the whole load,
/// with every problem listed.
pub fn load_texts(files: &[(String, String)]) -> Result<Vec<Policy>, Vec<Problem>> {
    let (docs, mut problems) = parse_texts(files);
    let (policies, p) = compile_documents(&docs);
    problems.extend(p);
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(problems)
    }
}

/// Reads, parses and compiles policy files. Any problem in any file fails the whole load, with
/// every problem listed (what `nodemesh policy check` wants).
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Policy>, Vec<Problem>> {
    let (texts, mut problems) = read_files(paths);
    match load_texts(&texts) {
        Ok(policies) if problems.is_empty() => Ok(policies),
        Ok(_) => Err(problems),
        Err(p) => {
            problems.extend(p);
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents_accept_untyped_scalars() {
        let doc = PolicyDocument::from_json_value(serde_json::json!({
            "apiVersion": "security.nodemesh.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "a", "namespace": "shop", "generation": 3,
                "annotations": {"nodemesh.io/dry-run": true}},
            "spec": {"rules": [{"to": [{"operation": {"ports": [80, "8080"]}}]}]},
            "status": {"observed": 1},
        }))
        .expect("parses");
        assert_eq!(
            doc.spec.rules[0].to[0]
                .operation
                .as_ref()
                .map(|o| o.ports.clone()),
            Some(vec!["80".to_owned(), "8080".to_owned()])
        );
        assert_eq!(doc.metadata.generation, Some(3));
        assert!(doc.compile().expect("compiles").dry_run());
        let err = PolicyDocument::from_json_value(serde_json::json!({
            "apiVersion": "security.nodemesh.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "a", "namespace": "shop"},
            "spec": {"rules": [{"to": [{"operation": {"portz": [80]}}]}]},
        }))
        .expect_err("unknown field");
        assert_eq!(err.field, "spec.rules[0].to[0].operation.portz");
        assert!(err.message.contains("unknown field `portz`"), "{err}");
    }

    #[test]
    fn splits_documents() {
        let t = "a: 1\n---\nb: 2\n--- # c\nc: 3\n...\n%YAML 1.2\n---\nd: 4\n";
        let docs = split_documents(t);
        let texts: Vec<&str> = docs.iter().map(|d| d.1).collect();
        assert_eq!(
            texts,
            [
                "a: 1\n",
                "---\nb: 2\n",
                "--- # c\nc: 3\n...\n",
                "%YAML 1.2\n---\nd: 4\n"
            ]
        );
        assert_eq!(docs.iter().map(|d| d.0).collect::<Vec<_>>(), [0, 1, 3, 6]);
        assert_eq!(split_documents("").len(), 0);
        assert_eq!(split_documents("---a: 1\n").len(), 1);
    }
}
