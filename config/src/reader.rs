//! A small path-tracking reader over a generic YAML tree (`serde_json::Value`).
//!
//! Every reader takes the path of the value it reads and records what is wrong there in
//! [`Errors`] instead of returning early, so one pass over a file finds all its mistakes.

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors};

/// The mistakes found so far, in the order they were found.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    /// Records a mistake at `path`.
    pub(crate) fn push(&mut self, path: &str, reason: impl Into<String>) {
        self.0.push(ConfigError::new(path, reason));
    }

    /// Records `result`'s error at `path`, if any, and passes its value on.
    pub(crate) fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|reason| self.push(path, reason)).ok()
    }

    /// `value` if nothing was recorded, else every recorded error.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            // A missing value always comes with a recorded reason; keep the guarantee anyway.
            None if self.0.is_empty() => {
                Err(ConfigErrors(vec![ConfigError::new("", "invalid config")]))
            }
            _ => Err(ConfigErrors(self.0)),
        }
    }
}

/// The path of field `key` under `parent` (`nodes[0]` + `name` = `nodes[0].name`).
pub(crate) fn field(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of item `i` of the list at `parent` (`nodes[3]`).
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The path of an entry of a free-form map such as labels (`labels["app"]`).
pub(crate) fn entry(parent: &str, key: &str) -> String {
    format!("{parent}[{key:?}]")
}

/// What kind of value this is, for messages (`expected a string, found a list`).
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn expected(what: &str, value: &Value) -> String {
    let hint = match value {
        Value::Bool(_) | Value::Number(_) if what == "a string" => " (quote it)",
        _ => "",
    };
    format!("expected {what}, found {}{hint}", kind(value))
}

/// Reads a string.
pub(crate) fn string(errs: &mut Errors, path: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        other => {
            errs.push(path, expected("a string", other));
            None
        }
    }
}

/// Reads a list and returns its items with their paths.
pub(crate) fn list<'v>(
    errs: &mut Errors,
    path: &str,
    value: &'v Value,
) -> Option<Vec<(String, &'v Value)>> {
    match value {
        Value::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(path, i), v))
                .collect(),
        ),
        other => {
            errs.push(path, expected("a list", other));
            None
        }
    }
}

/// Reads a mapping of free-form keys (labels, selectors), returning its entries with their paths.
pub(crate) fn map<'v>(
    errs: &mut Errors,
    path: &str,
    value: &'v Value,
) -> Option<Vec<(String, &'v String, &'v Value)>> {
    match value {
        Value::Object(m) => {
            // Sorted whatever the map's own order (serde_json's `preserve_order` may be on).
            let mut entries: Vec<_> = m.iter().map(|(k, v)| (entry(path, k), k, v)).collect();
            entries.sort_by(|a, b| a.1.cmp(b.1));
            Some(entries)
        }
        other => {
            errs.push(path, expected("a mapping", other));
            None
        }
    }
}

/// Reads a non-negative integer.
pub(crate) fn unsigned(errs: &mut Errors, path: &str, value: &Value) -> Option<u64> {
    match value.as_u64() {
        Some(n) => Some(n),
        None => {
            let reason = match value {
                Value::Number(n) => format!("expected a whole number >= 0, found {n}"),
                other => expected("a number", other),
            };
            errs.push(path, reason);
            None
        }
    }
}

/// A mapping with a fixed set of keys, being read field by field.
pub(crate) struct Fields<'v> {
    path: String,
    map: &'v Map<String, Value>,
}

impl<'v> Fields<'v> {
    /// Opens the mapping at `path`, reporting a value that is no mapping and every key not in
    /// `known`.
    pub(crate) fn open(
        errs: &mut Errors,
        path: &str,
        value: &'v Value,
        known: &[&str],
    ) -> Option<Self> {
        let Value::Object(map) = value else {
            errs.push(path, expected("a mapping", value));
            return None;
        };
        let mut unknown: Vec<&String> = map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        for key in unknown {
            errs.push(&field(path, key), unknown_key(key, known));
        }
        Some(Self {
            path: path.to_owned(),
            map,
        })
    }

    /// The path of field `key` of this mapping.
    pub(crate) fn path(&self, key: &str) -> String {
        field(&self.path, key)
    }

    /// Field `key` if it is a string, recording nothing (for cross-checks on values whose own
    /// errors are reported by their reader).
    pub(crate) fn peek_str(&self, key: &str) -> Option<&'v str> {
        self.map.get(key).and_then(Value::as_str)
    }

    /// Whether field `key` is present and not null.
    pub(crate) fn has(&self, key: &str) -> bool {
        !matches!(self.map.get(key), None | Some(Value::Null))
    }

    /// Reads field `key`, reporting it when missing (absent or null).
    pub(crate) fn required<T>(
        &self,
        errs: &mut Errors,
        key: &str,
        read: impl FnOnce(&mut Errors, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let path = self.path(key);
        match self.map.get(key) {
            None | Some(Value::Null) => {
                errs.push(&path, "required");
                None
            }
            Some(value) => read(errs, &path, value),
        }
    }

    /// Reads field `key` if present and not null. `None` when absent or invalid (the latter is
    /// recorded), so a default may stand in for it.
    pub(crate) fn optional<T>(
        &self,
        errs: &mut Errors,
        key: &str,
        read: impl FnOnce(&mut Errors, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => read(errs, &self.path(key), value),
        }
    }
}

fn unknown_key(key: &str, known: &[&str]) -> String {
    let normal = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let near = known.iter().find(|k| normal(k) == normal(key));
    match near {
        Some(k) => format!("unknown key (did you mean {k:?}?)"),
        None => format!("unknown key (expected one of: {})", known.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_compose() {
        assert_eq!(field("", "nodes"), "nodes");
        assert_eq!(field(&index("nodes", 3), "name"), "nodes[3].name");
        assert_eq!(
            entry("namespaces[0].labels", "nodemesh.io/mesh"),
            r#"namespaces[0].labels["nodemesh.io/mesh"]"#
        );
    }

    #[test]
    fn open_reports_unknown_keys_and_wrong_kinds() {
        let mut errs = Errors::default();
        let v = json!({"name": "a", "podCidr": "x", "colour": 1});
        let f = Fields::open(&mut errs, "nodes[0]", &v, &["name", "podCIDR"]);
        assert!(f.is_some());
        assert!(Fields::open(&mut errs, "ca", &json!([1]), &["address"]).is_none());
        let got: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "nodes[0].colour: unknown key (expected one of: name, podCIDR)",
                "nodes[0].podCidr: unknown key (did you mean \"podCIDR\"?)",
                "ca: expected a mapping, found a list",
            ]
        );
    }

    #[test]
    fn required_optional_and_scalars() {
        let mut errs = Errors::default();
        let v = json!({"a": null, "b": 7, "c": -1, "d": true});
        let f = Fields::open(&mut errs, "x", &v, &["a", "b", "c", "d"])
            .into_iter()
            .next();
        let Some(f) = f else {
            panic!("mapping expected")
        };
        assert_eq!(f.required(&mut errs, "a", string), None);
        assert_eq!(f.optional(&mut errs, "a", string), None);
        assert_eq!(f.required(&mut errs, "b", unsigned), Some(7));
        assert_eq!(f.required(&mut errs, "c", unsigned), None);
        assert_eq!(f.required(&mut errs, "d", string), None);
        let got: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "x.a: required",
                "x.c: expected a whole number >= 0, found -1",
                "x.d: expected a string, found a boolean (quote it)",
            ]
        );
    }
}
