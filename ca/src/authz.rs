//! Caller authentication (bearer tokens) and node authorization (sans-IO).
//!
//! A caller is a node's proxy. It proves which node it is with a token, and may only obtain
//! identities of workloads running on that node, so a compromised node cannot mint certificates
//! for workloads elsewhere.

use std::collections::{HashMap, HashSet};

use nodemesh_identity::SpiffeId;

/// Why the tokens file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TokensError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Bearer tokens and the node each one authenticates.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, String)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

impl Tokens {
    /// Parses a tokens file: one `TOKEN NODE-NAME` per line; `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut entries: Vec<(Vec<u8>, String)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(token), Some(node), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(TokensError {
                    line,
                    reason: "expected `TOKEN NODE-NAME`".into(),
                });
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(TokensError {
                    line,
                    reason: format!("token is shorter than {MIN_TOKEN_LEN} characters"),
                });
            }
            if entries.iter().any(|(t, _)| t == token.as_bytes()) {
                return Err(TokensError {
                    line,
                    reason: "token appears twice".into(),
                });
            }
            entries.push((token.as_bytes().to_vec(), node.to_owned()));
        }
        Ok(Self { entries })
    }

    /// The node names the tokens authenticate.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, n)| n.as_str())
    }

    /// The node `token` authenticates, compared in constant time per entry.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (t, node) in &self.entries {
            if constant_time_eq(t, token.as_bytes()) {
                found = Some(node.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Extracts the token from an `authorization: Bearer <token>` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Which identities run on which node.
#[derive(Debug, Clone, Default)]
pub struct NodeIndex {
    by_node: HashMap<String, HashSet<SpiffeId>>,
}

impl NodeIndex {
    /// Builds the index from `(node, identity)` pairs.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, SpiffeId)>) -> Self {
        let mut by_node: HashMap<String, HashSet<SpiffeId>> = HashMap::new();
        for (node, id) in pairs {
            by_node.entry(node.to_owned()).or_default().insert(id);
        }
        Self { by_node }
    }

    /// Whether a workload with `id` runs on `node`.
    pub fn runs_on(&self, node: &str, id: &SpiffeId) -> bool {
        self.by_node.get(node).is_some_and(|ids| ids.contains(id))
    }
}
