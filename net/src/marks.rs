//! Firewall marks (DESIGN.md "Marks, tables and rule priorities").

use std::fmt;

/// A firewall mark with the bits it owns (`value/mask`, as iptables and `ip rule` print it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    /// The bits set.
    pub value: u32,
    /// The bits owned.
    pub mask: u32,
}

impl Mark {
    /// A mark that owns every bit (`SO_MARK` sets the whole value).
    pub const fn exact(value: u32) -> Self {
        Self {
            value,
            mask: u32::MAX,
        }
    }
}

impl fmt::Display for Mark {
    /// `0x111/0xfff`; a mark owning every bit prints as its value alone (`0x539`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == u32::MAX {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "{:#x}/{:#x}", self.value, self.mask)
        }
    }
}

/// `SO_MARK` on every socket the proxy opens: capture skips them.
pub const PROXY: Mark = Mark::exact(0x539);
/// TPROXY delivery: routed by [`crate::routing::TPROXY_TABLE`] to the local listeners.
pub const TPROXY: Mark = Mark {
    value: 0x111,
    mask: 0xfff,
};
/// HBONE (the proxy's TCP to port 15008 of a remote pod, and the answers of its HBONE
/// listener): kept in `main`, never in the WireGuard tunnel.
pub const HBONE: Mark = Mark {
    value: 0x222,
    mask: 0xfff,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_print_as_the_tools_take_them() {
        assert_eq!(TPROXY.to_string(), "0x111/0xfff");
        assert_eq!(HBONE.to_string(), "0x222/0xfff");
        assert_eq!(PROXY.to_string(), "0x539");
    }

    #[test]
    fn marks_do_not_overlap_under_their_masks() {
        assert_ne!(TPROXY.value & HBONE.mask, HBONE.value);
        assert_ne!(HBONE.value & TPROXY.mask, TPROXY.value);
        assert_ne!(PROXY.value & TPROXY.mask, TPROXY.value);
        assert_ne!(PROXY.value & HBONE.mask, HBONE.value);
    }
}
