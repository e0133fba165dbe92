//! I/O: feeds the scripts to `nft -f -`, keeping the last applied ruleset so only the delta is
//! sent.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nodemesh_config::Config;
use nodemesh_policy::netpol::NetworkPolicySet;

use crate::render::{Ruleset, TABLE};
use crate::transaction::{Delta, from_scratch, transaction};

/// Why the firewall could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` could not be started or fed.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused the script (also when re-applied from scratch after a refused delta).
    #[error("nft refused the {what}: {stderr}")]
    Refused {
        /// `delta` or `table` (the from-scratch script).
        what: &'static str,
        /// nft's standard error.
        stderr: String,
        /// nft's standard error for the delta refused before, when the table was re-applied.
        delta_stderr: Option<String>,
    },
}

/// What one [`Firewall::sync`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The delta applied; `None` when the rules were already up to date.
    pub applied: Option<Delta>,
    /// A delta was refused and the table was re-created from scratch instead.
    pub recovered: bool,
}

/// The node firewall of one node: table `inet nodemesh-netpol`, updated by deltas.
#[derive(Debug)]
pub struct Firewall {
    argv: Vec<String>,
    applied: Option<Ruleset>,
}

impl Firewall {
    /// Runs `nft_path` (e.g. `/usr/sbin/nft`) in this network namespace.
    pub fn new(nft_path: impl Into<PathBuf>) -> Self {
        Self {
            argv: vec![nft_path.into().to_string_lossy().into_owned()],
            applied: None,
        }
    }

    /// Runs `nft_path` in the named network namespace (`ip netns exec <netns>`): for tests.
    pub fn in_netns(nft_path: impl Into<PathBuf>, netns: &str) -> Self {
        let nft = nft_path.into().to_string_lossy().into_owned();
        Self {
            argv: ["ip", "netns", "exec", netns, &nft]
                .map(str::to_owned)
                .to_vec(),
            applied: None,
        }
    }

    /// The ruleset last applied, when the table is known to hold it.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// Renders the rules of `node` and applies what changed since the last sync (the whole table
    /// the first time) in one transaction. A refused delta is retried once as the whole table;
    /// when that fails too, the next sync starts from scratch.
    pub fn sync(
        &mut self,
        config: &Config,
        policies: &NetworkPolicySet,
        node: &str,
    ) -> Result<Outcome, FirewallError> {
        self.apply(Ruleset::render(config, policies, node))
    }

    /// Applies `new` (see [`Firewall::sync`]).
    pub fn apply(&mut self, new: Ruleset) -> Result<Outcome, FirewallError> {
        let Some((script, delta)) = transaction(self.applied.as_ref(), &new) else {
            return Ok(Outcome::default());
        };
        let was_delta = !delta.from_scratch;
        match self.run(&script)? {
            Ok(()) => {
                self.applied = Some(new);
                Ok(Outcome {
                    applied: Some(delta),
                    recovered: false,
                })
            }
            Err(stderr) if !was_delta => {
                self.applied = None;
                Err(FirewallError::Refused {
                    what: "table",
                    stderr,
                    delta_stderr: None,
                })
            }
            Err(stderr) => {
                self.applied = None;
                let (script, delta) = from_scratch(&new);
                match self.run(&script)? {
                    Ok(()) => {
                        self.applied = Some(new);
                        Ok(Outcome {
                            applied: Some(delta),
                            recovered: true,
                        })
                    }
                    Err(again) => Err(FirewallError::Refused {
                        what: "table",
                        stderr: again,
                        delta_stderr: Some(stderr),
                    }),
                }
            }
        }
    }

    /// Deletes the table (nothing when it is absent).
    pub fn remove(&mut self) -> Result<(), FirewallError> {
        self.applied = None;
        let script = format!("add table inet {TABLE}\ndelete table inet {TABLE}\n");
        self.run(&script)?.map_err(|stderr| FirewallError::Refused {
            what: "table",
            stderr,
            delta_stderr: None,
        })
    }

    /// Checks a script without applying it (`nft -c -f -`).
    pub fn check(&self, script: &str) -> Result<(), FirewallError> {
        self.exec(&["-c", "-f", "-"], script)?
            .map_err(|stderr| FirewallError::Refused {
                what: "table",
                stderr,
                delta_stderr: None,
            })
    }

    fn run(&self, script: &str) -> Result<Result<(), String>, FirewallError> {
        self.exec(&["-f", "-"], script)
    }

    fn exec(&self, args: &[&str], script: &str) -> Result<Result<(), String>, FirewallError> {
        let program = self.argv.join(" ");
        let spawn = |source| FirewallError::Spawn {
            program: program.clone(),
            source,
        };
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        if out.status.success() {
            Ok(Ok(()))
        } else {
            Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }
}
