//! URL query strings of admin requests, decoded.

/// Splits a query string into decoded `(name, value)` pairs (`+` is a space, `%XX` a byte;
/// a malformed escape is kept as is), in order, repeats kept.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(name), decode_component(value))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        assert_eq!(
            parse_query(
                "namespace=shop&principal=spiffe%3A%2F%2Fcluster.local%2Fns%2Fa&path=%2Fa+b&x"
            ),
            vec![
                ("namespace".into(), "shop".into()),
                ("principal".into(), "spiffe://cluster.local/ns/a".into()),
                ("path".into(), "/a b".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(
            parse_query("a=%zz&b=%4&&c=%e2%82%ac&d=%ff&e=%+1"),
            vec![
                ("a".into(), "%zz".into()),
                ("b".into(), "%4".into()),
                ("c".into(), "€".into()),
                ("d".into(), "\u{fffd}".into()),
                ("e".into(), "% 1".into()),
            ]
        );
        assert!(parse_query("").is_empty());
    }
}
