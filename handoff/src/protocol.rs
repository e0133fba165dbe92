//! The handoff messages and their framing, without I/O.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of JSON. The
//! [`Message::Offer`] frame travels with the offered sockets as `SCM_RIGHTS`, in the order of
//! its `sockets` list.
//!
//! ```text
//! new process                          running process
//!   Hello { versions }          ──▶
//!                               ◀──    Offer { version, sockets } + descriptors
//!                                      (or Unsupported { versions }: replace it the classic way)
//!   (starts accepting once every local certificate is loaded)
//!   Accepting                   ──▶
//!                                      stops accepting, GOAWAY on HBONE, keeps relaying
//!                               ◀──    Released { connections }
//! ```
//! Either side may send [`Message::Abort`] instead of its next message; the running process
//! then goes on as if nothing happened.

use serde::{Deserialize, Serialize};

/// The protocol versions this build speaks, newest first.
pub const VERSIONS: &[u32] = &[1];

/// The largest frame either side accepts (a message is a few hundred bytes).
pub const MAX_FRAME: usize = 64 * 1024;

/// The most descriptors one offer carries.
pub const MAX_SOCKETS: usize = 32;

/// What a socket is for, so the new process puts each where it belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The outbound capture listener (15001).
    Outbound,
    /// An HBONE listener (15008).
    Hbone,
    /// An inbound plaintext capture listener (15006).
    Plaintext,
    /// The admin API (15000).
    Admin,
    /// Prometheus metrics (15020).
    Metrics,
    /// Readiness (15021).
    Readiness,
    /// The handoff socket itself, so the next upgrade finds the new process at the same path.
    Handoff,
}

impl Role {
    /// The role's name in messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::Hbone => "hbone",
            Role::Plaintext => "plaintext",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
            Role::Readiness => "readiness",
            Role::Handoff => "handoff",
        }
    }
}

/// One offered socket: its role and where it listens (a TCP address, or the Unix path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// What it is for.
    pub role: Role,
    /// Where it listens, as the running process sees it.
    pub address: String,
}

/// A handoff message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// New → running: the versions the new process speaks, and who it is.
    Hello {
        /// Protocol versions, newest first.
        versions: Vec<u32>,
        /// The new process's pid.
        pid: u32,
        /// The new binary's version (for the logs).
        binary: String,
    },
    /// Running → new: the chosen version and the sockets, sent with their descriptors.
    Offer {
        /// The version both speak.
        version: u32,
        /// The sockets, in the order of the descriptors.
        sockets: Vec<SocketInfo>,
        /// The running process's pid.
        pid: u32,
        /// The running binary's version.
        binary: String,
    },
    /// Running → new: no version in common.
    Unsupported {
        /// What the running process speaks.
        versions: Vec<u32>,
    },
    /// New → running: it accepts on every offered socket.
    Accepting,
    /// Running → new: it no longer accepts; it relays this many connections until they end.
    Released {
        /// Connections it still relays.
        connections: usize,
    },
    /// Either way: the handoff is off; the running process keeps serving.
    Abort {
        /// Why.
        reason: String,
    },
}

impl Message {
    /// The message's type name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Offer { .. } => "offer",
            Message::Unsupported { .. } => "unsupported",
            Message::Accepting => "accepting",
            Message::Released { .. } => "released",
            Message::Abort { .. } => "abort",
        }
    }
}

/// Why a frame or a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The length prefix is past [`MAX_FRAME`].
    #[error("a handoff frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    /// The frame ended early.
    #[error("the handoff frame is truncated: {expected} bytes announced, {got} received")]
    Truncated {
        /// The announced length.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// The frame is not a message.
    #[error("the handoff message is malformed: {0}")]
    Malformed(String),
    /// A message arrived where another was due.
    #[error("expected a handoff `{expected}` message, got `{got}`")]
    Unexpected {
        /// What was due.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// An offer's descriptors do not match its list.
    #[error("the offer lists {listed} sockets but carries {carried} descriptors")]
    Descriptors {
        /// Sockets in the list.
        listed: usize,
        /// Descriptors received.
        carried: usize,
    },
    /// An offer chose a version the new process did not offer.
    #[error("the running process chose handoff version {0}, which this binary does not speak")]
    Version(u32),
}

/// Frames `message`: length prefix and JSON.
pub fn encode(message: &Message) -> Vec<u8> {
    // Serializing these plain enums cannot fail.
    let body = serde_json::to_vec(message).unwrap_or_default();
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The body length a frame announces, checked against [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ProtocolError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame's body.
pub fn decode(body: &[u8]) -> Result<Message, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// The newest version both sides speak.
pub fn negotiate(ours: &[u32], theirs: &[u32]) -> Option<u32> {
    ours.iter().copied().filter(|v| theirs.contains(v)).max()
}

/// Checks an offer against what the new process asked for and the descriptors that came with
/// it.
pub fn check_offer(message: &Message, descriptors: usize) -> Result<(), ProtocolError> {
    match message {
        Message::Offer {
            version, sockets, ..
        } => {
            if !VERSIONS.contains(version) {
                return Err(ProtocolError::Version(*version));
            }
            if sockets.len() != descriptors {
                return Err(ProtocolError::Descriptors {
                    listed: sockets.len(),
                    carried: descriptors,
                });
            }
            Ok(())
        }
        other => Err(ProtocolError::Unexpected {
            expected: "offer",
            got: other.kind(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_message_round_trips_through_its_frame() {
        let m = Message::Offer {
            version: 1,
            sockets: vec![SocketInfo {
                role: Role::Hbone,
                address: "0.0.0.0:15008".into(),
            }],
            pid: 7,
            binary: "0.1.0".into(),
        };
        let frame = encode(&m);
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]).unwrap(), m);
        let text = String::from_utf8(frame[4..].to_vec()).unwrap();
        assert!(text.contains(r#""type":"offer""#), "{text}");
        assert!(text.contains(r#""role":"hbone""#), "{text}");
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        assert_eq!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(ProtocolError::TooLarge(MAX_FRAME + 1))
        );
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
    }

    #[test]
    fn unknown_messages_and_fields_are_malformed() {
        for body in [
            r#"{"type":"steal"}"#,
            r#"{"type":"released","connections":1,"extra":1}"#,
            r#"{"type":"released"}"#,
            "not json",
        ] {
            let err = decode(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_)), "{body}: {err}");
        }
    }

    #[test]
    fn the_newest_common_version_is_chosen() {
        assert_eq!(negotiate(&[1, 2, 3], &[3, 1]), Some(3));
        assert_eq!(negotiate(&[1], &[2]), None);
        assert_eq!(negotiate(VERSIONS, VERSIONS), Some(1));
    }

    #[test]
    fn an_offer_must_carry_one_descriptor_per_listed_socket() {
        let offer = |version| Message::Offer {
            version,
            sockets: vec![
                SocketInfo {
                    role: Role::Outbound,
                    address: "127.0.0.1:15001".into(),
                },
                SocketInfo {
                    role: Role::Handoff,
                    address: "/var/lib/nodemesh/handoff.sock".into(),
                },
            ],
            pid: 1,
            binary: "x".into(),
        };
        assert_eq!(check_offer(&offer(1), 2), Ok(()));
        assert_eq!(
            check_offer(&offer(1), 1),
            Err(ProtocolError::Descriptors {
                listed: 2,
                carried: 1
            })
        );
        assert_eq!(check_offer(&offer(9), 2), Err(ProtocolError::Version(9)));
        assert_eq!(
            check_offer(&Message::Accepting, 0),
            Err(ProtocolError::Unexpected {
                expected: "offer",
                got: "accepting"
            })
        );
    }
}
