//! Policy-routing tables and `ip rule` priorities (lower runs first).

/// Table with `local 0.0.0.0/0 dev lo`: delivers TPROXY-marked packets to the listeners.
pub const TPROXY_TABLE: u32 = 133;
/// The WireGuard tunnel's table (routes to remote pod networks).
pub const WIREGUARD_TABLE: u32 = 134;
/// `ip rule pref 100 fwmark 0x111/0xfff lookup 133`.
pub const TPROXY_RULE_PREF: u32 = 100;
/// `ip rule pref 105 fwmark 0x222/0xfff lookup main`: HBONE never enters WireGuard.
pub const HBONE_RULE_PREF: u32 = 105;
/// `ip rule pref 110 to <remote podCIDR> lookup 134`.
pub const WIREGUARD_RULE_PREF: u32 = 110;

// The order is the design: TPROXY delivery first, then HBONE's exemption, then the tunnel.
const _: () = assert!(TPROXY_RULE_PREF < HBONE_RULE_PREF && HBONE_RULE_PREF < WIREGUARD_RULE_PREF);
