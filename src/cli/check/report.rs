//! The checklist itself: items with a status, a detail and a hint, printed as text or JSON,
//! and the exit status they add up to. Pure: nothing here reads the node.

use std::fmt::Write as _;

/// How one item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// As it should be.
    Ok,
    /// Works, but needs a look.
    Warn,
    /// Broken: the mesh does not work as configured.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of the checklist. Every warning and failure carries a hint: what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What is checked, e.g. `kernel: TPROXY target`.
    pub name: String,
    /// How it came out.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// What to do next; `None` only for `ok`.
    pub hint: Option<String>,
}

impl Item {
    /// An item that is as it should be.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    /// A warning with what to do about it.
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::hinted(Status::Warn, name.into(), detail.into(), hint.into())
    }

    /// A failure with what to do about it.
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::hinted(Status::Fail, name.into(), detail.into(), hint.into())
    }

    fn hinted(status: Status, name: String, detail: String, hint: String) -> Self {
        Self {
            name,
            status,
            detail,
            hint: Some(hint),
        }
    }
}

/// The whole checklist, in the order it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The items, top to bottom.
    pub items: Vec<Item>,
}

impl Report {
    /// The worst status of any item (`ok` for an empty list).
    pub fn worst(&self) -> Status {
        self.items
            .iter()
            .map(|i| i.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// The exit status: 0 all ok, 1 warnings only, 2 any failure.
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }

    fn count(&self, status: Status) -> usize {
        self.items.iter().filter(|i| i.status == status).count()
    }

    /// The checklist for a person: one `STATUS  NAME  DETAIL` line per item, the hint of every
    /// warning and failure indented below it, and a summary line.
    pub fn to_text(&self) -> String {
        let width = self.items.iter().map(|i| i.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for item in &self.items {
            let _ = writeln!(
                out,
                "{:<4}  {:<width$}  {}",
                item.status.as_str(),
                item.name,
                item.detail
            );
            if let Some(hint) = &item.hint {
                let _ = writeln!(out, "{:<4}  {:<width$}  hint: {hint}", "", "");
            }
        }
        let _ = writeln!(
            out,
            "{} ok, {} warnings, {} failures",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        out
    }

    /// The same checklist as JSON: `{"status", "items": [{name, status, detail, hint}]}`, with
    /// `hint` null for `ok` items.
    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "status": i.status.as_str(),
                    "detail": i.detail,
                    "hint": i.hint,
                })
            })
            .collect();
        serde_json::json!({
            "status": self.worst().as_str(),
            "items": items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(items: Vec<Item>) -> Report {
        Report { items }
    }

    #[test]
    fn exit_status_is_the_worst_item() {
        assert_eq!(report(vec![]).exit_code(), 0);
        let ok = Item::ok("a", "fine");
        let warn = Item::warn("b", "meh", "look");
        let fail = Item::fail("c", "broken", "fix");
        assert_eq!(report(vec![ok.clone()]).exit_code(), 0);
        assert_eq!(report(vec![ok.clone(), warn.clone()]).exit_code(), 1);
        assert_eq!(report(vec![fail, ok, warn]).exit_code(), 2);
    }

    #[test]
    fn text_has_a_hint_under_every_warning_and_failure() {
        let text = report(vec![
            Item::ok("kernel: tun", "/dev/net/tun"),
            Item::fail("proxy ready", "connection refused", "start the proxy"),
        ])
        .to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("ok    kernel: tun  /dev/net/tun"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("fail  proxy ready  connection refused"),
            "{text}"
        );
        assert_eq!(lines[2].trim(), "hint: start the proxy", "{text}");
        assert_eq!(lines[3], "1 ok, 0 warnings, 1 failures");
    }

    #[test]
    fn json_has_name_status_detail_and_hint() {
        let json = report(vec![
            Item::ok("a", "fine"),
            Item::warn("b", "meh", "look closer"),
        ])
        .to_json();
        assert_eq!(json["status"], "warn");
        let items = json["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0],
            serde_json::json!({"name": "a", "status": "ok", "detail": "fine", "hint": null})
        );
        assert_eq!(
            items[1],
            serde_json::json!({"name": "b", "status": "warn", "detail": "meh", "hint": "look closer"})
        );
    }
}
