//! `lint`: every problem of every policy file, one per line (`FILE: ns/name: field: reason`):
//! AuthorizationPolicies, NetworkPolicies and ClusterNetworkPolicies.

use std::path::Path;

use crate::load::{
    Problem, ProblemKind, Subject, compile_documents, parse_file_skipping, read_files,
};
use crate::model::Action;

/// Lints files' texts: `(file name, text)` pairs. Returns every problem, errors and warnings.
pub fn lint_texts(files: &[(String, String)]) -> Vec<Problem> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in files {
        let (d, p) = parse_file_skipping(file, text, crate::netpol::lint::is_network_policy);
        docs.extend(d);
        problems.extend(p);
        problems.extend(crate::netpol::lint::lint_file(file, text));
    }
    for d in &docs {
        let spec = &d.document.spec;
        if matches!(spec.action, Action::Deny | Action::Audit)
            && spec.rules.is_empty()
            && let Some(id) = d.document.policy_ref()
        {
            problems.push(Problem {
                file: d.file.clone(),
                subject: Subject::Policy(id),
                field: "spec.rules".to_owned(),
                kind: ProblemKind::NeverMatches(spec.action),
            });
        }
    }
    let (_, p) = compile_documents(&docs);
    problems.extend(p);
    problems
}

/// Reads and lints files; unreadable files are problems too.
pub fn lint_files<P: AsRef<Path>>(paths: &[P]) -> Vec<Problem> {
    let (texts, mut problems) = read_files(paths);
    problems.extend(lint_texts(&texts));
    problems
}
