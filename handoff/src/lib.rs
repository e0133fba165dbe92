//! The upgrade handoff: a new `nodemesh proxy` takes the listening sockets of the running one.
//!
//! The running process serves a Unix socket in its state directory. A new process connects,
//! says which protocol versions it speaks, and receives the listening sockets as `SCM_RIGHTS`
//! descriptors; once it accepts on them it says so, and the running process stops accepting,
//! drains, and exits when its last connection ends. [`protocol`] holds the messages without
//! I/O; [`channel`] moves them (and the descriptors) over a Unix stream; [`exchange`] is the
//! sequence each side follows.

pub mod channel;
pub mod exchange;
pub mod protocol;

pub use channel::{Channel, HandoffError, bind_listener};
pub use exchange::{Accepted, Offered, Request, Takeover, offer, request};
pub use protocol::{Message, Role, SocketInfo};
