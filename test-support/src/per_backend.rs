//! [`per_backend!`](crate::per_backend): a root-tier test once per capture backend.

/// Declares one `#[test]` per capture backend for each named function taking a
/// [`nodemesh_redirect::Backend`]: modules `iptables` and `nftables` with a test of the same name.
#[macro_export]
macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod iptables {
            $(#[test] fn $test() { super::$test(::nodemesh_redirect::Backend::Iptables) })*
        }
        mod nftables {
            $(#[test] fn $test() { super::$test(::nodemesh_redirect::Backend::Nftables) })*
        }
    };
}
