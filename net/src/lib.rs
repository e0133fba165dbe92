//! The node's network facts, defined once (DESIGN.md "Ports" and "Marks, tables and rule
//! priorities"): the proxy listens on [`ports`], capture and WireGuard route by [`marks`] through
//! [`routing`] tables and rule priorities. No I/O, no dependencies: every crate that opens a
//! socket, writes a rule or marks a packet takes its numbers from here.

pub mod marks;
pub mod ports;
pub mod routing;
pub mod timeouts;

pub use marks::Mark;
