//! Stable names for sets and chains: a prefix and a hash of what they stand for, so the same
//! selector or policy gets the same name in every render (small deltas) and names stay within
//! nftables' limits whatever the policy names are.

/// FNV-1a, 64 bits: deterministic across runs and builds (unlike `DefaultHasher`'s seed).
fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `<prefix>-<12 hex digits of the hash of key>`: letters, digits and `-`, under 32 bytes (the
/// oldest kernels' limit for chain names).
pub(crate) fn hashed(prefix: &str, key: &str) -> String {
    format!("{prefix}-{:012x}", fnv1a(key) >> 16)
}

/// A string for an nft `comment "..."`: no quotes or backslashes, at most 128 bytes.
pub(crate) fn comment(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect();
    if out.len() > 120 {
        let mut end = 120;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_are_stable_and_short() {
        assert_eq!(hashed("pods", "a"), hashed("pods", "a"));
        assert_ne!(hashed("pods", "a"), hashed("pods", "b"));
        assert!(hashed("cnp", &"x".repeat(300)).len() < 32);
    }

    #[test]
    fn comments_lose_quotes_and_length() {
        assert_eq!(comment("a\"b\\c"), "a_b_c");
        assert_eq!(comment(&"é".repeat(100)).len(), 120);
    }
}
