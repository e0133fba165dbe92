//! [`Netns`]: a named network namespace of the testbed, and running things inside it — a
//! command (`ip netns exec`) or a closure on a thread that entered it (`setns` applies only to
//! the calling thread, so each call gets a thread of its own).

use std::fs::File;
use std::process::{Command, Output};

use crate::error::TestbedError;

/// A named network namespace (`/run/netns/NAME`). Deleting it is [`Netns::destroy`]'s job; the
/// testbed calls it at teardown, after killing the processes inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace, brings its `lo` up (a new namespace has it down) and turns IPv6
    /// off for the links it will get: the testbed is IPv4, and link-local addresses appearing
    /// a moment after each link comes up would make snapshots of its routes race.
    pub fn create(name: &str) -> Result<Self, TestbedError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        Ok(ns)
    }

    /// Turns IPv6 on for the links this namespace gets from now on, without duplicate address
    /// detection (addresses are usable at once): a dual-stack testbed.
    pub fn enable_ipv6(&self) -> Result<(), TestbedError> {
        for (key, value) in [
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.all.disable_ipv6", "0"),
        ] {
            self.sysctl(key, value)?;
        }
        Ok(())
    }

    /// A handle to an existing namespace.
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, TestbedError> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`); `ip`
    /// execs the program, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its stdout; a non-zero exit is an error.
    pub fn exec(&self, argv: &[&str]) -> Result<String, TestbedError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| TestbedError::Spec("empty command".into()))?;
        run(self.command(program).args(args))
    }

    /// Writes a sysctl of the namespace (`net.ipv4.ip_forward` -> `/proc/sys/net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), TestbedError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec(&["sh", "-c", &format!("echo {value} > {path}")])
            .map(drop)
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns its result. Sockets
    /// `f` creates belong to the namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, TestbedError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(f)?.join()
    }

    /// Runs `fut` to completion on a single-threaded runtime on a thread inside the namespace.
    pub fn block_on<F>(&self, fut: F) -> Result<F::Output, TestbedError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
        })?
        .map_err(|source| self.error("start a runtime", source))
    }

    /// Starts `f` on a new thread that has entered the namespace.
    pub fn spawn<T, F>(&self, f: F) -> Result<NetnsTask<T>, TestbedError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
                drop(file);
                let ok = entered.is_ok();
                let _ = tx.send(entered.map_err(std::io::Error::from));
                // Nothing may run outside the namespace: on failure the caller gets the error.
                ok.then(f)
            })
            .map_err(|source| self.error("spawn a thread", source))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NetnsTask {
                netns: self.name.clone(),
                handle,
            }),
            Ok(Err(source)) => Err(self.error("setns", source)),
            Err(_) => Err(self.error("enter", std::io::Error::other("thread ended early"))),
        }
    }

    fn error(&self, what: &'static str, source: std::io::Error) -> TestbedError {
        TestbedError::Netns {
            netns: self.name.clone(),
            what,
            source,
        }
    }

    /// Kills every process inside (`ip netns pids`), then deletes the namespace. A process left
    /// inside would otherwise outlive `ip netns del`.
    pub fn destroy(&self) -> Result<(), TestbedError> {
        for _ in 0..50 {
            let pids =
                run(Command::new("ip").args(["netns", "pids", &self.name])).unwrap_or_default();
            let pids: Vec<i32> = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run(Command::new("ip").args(["netns", "del", &self.name])).map(drop)
    }

    fn open(&self) -> Result<File, TestbedError> {
        File::open(format!("/run/netns/{}", self.name))
            .map_err(|source| self.error("open /run/netns", source))
    }
}

/// A closure running on a thread inside a namespace.
#[derive(Debug)]
pub struct NetnsTask<T> {
    netns: String,
    handle: std::thread::JoinHandle<Option<T>>,
}

impl<T> NetnsTask<T> {
    /// Waits for the closure and returns its result.
    pub fn join(self) -> Result<T, TestbedError> {
        match self.handle.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) | Err(_) => Err(TestbedError::Netns {
                netns: self.netns,
                what: "task",
                source: std::io::Error::other("the task panicked or never entered the namespace"),
            }),
        }
    }

    /// Whether the closure has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// The names of every network namespace on the machine.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error carrying
/// the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, TestbedError> {
    let line = command_line(cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().map_err(|source| TestbedError::Spawn {
        command: line.clone(),
        source,
    })?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(TestbedError::Command {
            command: line,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        })
    }
}

/// `cmd` as a shell-like line, for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
