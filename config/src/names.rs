//! Kubernetes name and label syntax (the rules of `k8s.io/apimachinery/pkg/util/validation`).
//!
//! Each check returns the reason a string is refused, ready to be reported at its path.

/// The longest DNS-1123 label (and label name or value).
const MAX_LABEL: usize = 63;
/// The longest DNS-1123 subdomain (and label key prefix).
const MAX_SUBDOMAIN: usize = 253;

/// A DNS-1123 label: namespaces. `[a-z0-9-]`, starting and ending with a letter or digit, at most
/// 63 characters.
pub(crate) fn dns1123_label(s: &str) -> Result<(), String> {
    label_like(s, "DNS-1123 label", false)
}

/// A DNS-1035 label: Service names. Like a DNS-1123 label, but starting with a letter.
pub(crate) fn dns1035_label(s: &str) -> Result<(), String> {
    label_like(s, "DNS-1035 label", true)
}

/// A DNS-1123 subdomain: node, pod and service account names. Dot-separated DNS-1123 labels,
/// at most 253 characters.
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), String> {
    const WHAT: &str = "DNS-1123 subdomain";
    if s.is_empty() {
        return Err(format!("must not be empty (a {WHAT})"));
    }
    if s.len() > MAX_SUBDOMAIN {
        return Err(format!(
            "{s:?} is longer than {MAX_SUBDOMAIN} characters (a {WHAT})"
        ));
    }
    for part in s.split('.') {
        check_label_chars(s, part, WHAT)?;
    }
    Ok(())
}

fn label_like(s: &str, what: &str, letter_first: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("must not be empty (a {what})"));
    }
    if s.len() > MAX_LABEL {
        return Err(format!(
            "{s:?} is longer than {MAX_LABEL} characters (a {what})"
        ));
    }
    if letter_first && !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{s:?} must start with a lowercase letter (a {what})"
        ));
    }
    check_label_chars(s, s, what)
}

/// One dot-free DNS label `part` of `whole`: `[a-z0-9-]`, alphanumeric at both ends.
fn check_label_chars(whole: &str, part: &str, what: &str) -> Result<(), String> {
    if let Some(c) = part
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(format!(
            "{whole:?} has invalid character {c:?}: a {what} has only lowercase letters, digits, '-'{}",
            if what.contains("subdomain") {
                " and '.'"
            } else {
                ""
            }
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(part.chars().next()) || !alnum(part.chars().last()) {
        return Err(format!(
            "{whole:?} must start and end with a letter or digit{} (a {what})",
            if what.contains("subdomain") {
                ", around every '.' too"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// A label (or selector) key: an optional DNS-1123 subdomain prefix and `/`, then a name of at
/// most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|e| format!("label key prefix: {e}"))?;
    }
    if name.contains('/') {
        return Err(format!("label key {key:?} has more than one '/'"));
    }
    if name.is_empty() {
        return Err(format!("label key {key:?} has an empty name"));
    }
    qualified_name(name).map_err(|e| format!("label key {key:?}: {e}"))
}

/// A label (or selector) value: empty, or at most 63 characters of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends.
pub(crate) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    qualified_name(value).map_err(|e| format!("label value {value:?}: {e}"))
}

fn qualified_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_LABEL {
        return Err(format!("longer than {MAX_LABEL} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "invalid character {c:?} (only letters, digits, '-', '_' and '.')"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Err("must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// A port name (IANA service name): at most 15 characters of `[a-z0-9-]`, at least one letter,
/// no leading, trailing or double `-`.
pub(crate) fn port_name(s: &str) -> Result<(), String> {
    let bad = if s.is_empty() {
        "must not be empty"
    } else if s.len() > 15 {
        "is longer than 15 characters"
    } else if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        "may only have lowercase letters, digits and '-'"
    } else if !s.chars().any(|c| c.is_ascii_lowercase()) {
        "must have at least one letter"
    } else if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        "must not start or end with '-' or have \"--\""
    } else {
        return Ok(());
    };
    Err(format!("port name {s:?} {bad}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "shop", "a-b", "0", "9lives", &"a".repeat(63)] {
            assert_eq!(dns1123_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert!(dns1035_label("web").is_ok());
        assert!(dns1035_label("9web").is_err());
    }

    #[test]
    fn subdomains() {
        for ok in ["node-a", "ip-10-0-0-1.ec2.internal", "a.b.c", "default"] {
            assert_eq!(dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a.-b", "A.b", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "app",
            "nodemesh.io/mesh",
            "app.kubernetes.io/name",
            "A_b.c-D",
        ] {
            assert_eq!(label_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/app",
            "a/b/c",
            "nodemesh.io/",
            "-app",
            "Nodemesh.IO/mesh",
            "a b",
        ] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "enabled", "v1.2_3-b", &"x".repeat(63)] {
            assert_eq!(label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-x", "x-", "a/b", "a b", &"x".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_names() {
        for ok in ["http", "grpc-web", "h2c", "a1"] {
            assert_eq!(port_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "HTTP",
            "80",
            "-http",
            "http-",
            "gr--pc",
            "abcdefghijklmnop",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
    }
}
