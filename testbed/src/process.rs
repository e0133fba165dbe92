//! [`Process`]: a child process of the testbed (the CA, a proxy, a pod's app) with its output
//! in a log file; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::netns::{Netns, command_line};

/// A running child process; dropping it kills it (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// The log's length when the process started (an earlier run may have written before).
    log_start: u64,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Self, TestbedError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| TestbedError::File {
                path: log.to_owned(),
                source,
            })?;
        let err = file.try_clone().map_err(|source| TestbedError::File {
            path: log.to_owned(),
            source,
        })?;
        let log_start = file.metadata().map_or(0, |m| m.len());
        let line = command_line(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| TestbedError::Spawn {
                command: line,
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            log_start,
        })
    }

    /// The process's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// What it has written to its log since it started.
    pub fn output(&self) -> String {
        use std::io::{Read as _, Seek as _};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log)
            && f.seek(std::io::SeekFrom::Start(self.log_start)).is_ok()
        {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` and waits up to `grace` for the process to exit (then SIGKILL). Returns
    /// its exit status as text.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, signal);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().map_or_else(
                        |e| e.to_string(),
                        |s| format!("{s} (killed after {grace:?})"),
                    );
                }
            }
        }
    }

    /// Leaves the process running after this value is dropped (`--keep`).
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a process may take to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The testbed's processes, by key: `ca`, `proxy/<node>`, `app/<pod>`, and whatever a test
/// starts with [`Testbed::start_process`].
impl Testbed {
    /// Starts `argv` inside namespace `ns` (a pod or node of this testbed) as the process
    /// `key`, with its output in `<dir>/<key>.log`; it is killed at teardown.
    pub fn start_process(
        &mut self,
        key: &str,
        ns: &Netns,
        argv: &[&str],
    ) -> Result<(), TestbedError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| TestbedError::Spec("empty command".into()))?;
        let mut cmd = ns.command(program);
        cmd.args(args);
        let log = self.dir.join(format!("{}.log", key.replace('/', "-")));
        let process = Process::start(key, cmd, &log)?;
        self.processes.insert(key.to_owned(), process);
        Ok(())
    }

    /// Waits until process `key` has written `needle` to its log (since it started), failing
    /// early if it exits, and after 30 s.
    pub fn await_log(&mut self, key: &str, needle: &str) -> Result<(), TestbedError> {
        let start = Instant::now();
        loop {
            let process = self
                .processes
                .get(key)
                .ok_or_else(|| TestbedError::Spec(format!("no process {key:?}")))?;
            if process.output().contains(needle) {
                return Ok(());
            }
            if let Some(e) = self.gave_up(key, start) {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The pid of a running process (`ca`, `proxy/<node>`, `app/<pod>`, or a key given to
    /// [`Testbed::start_process`]).
    pub fn pid(&self, process: &str) -> Option<u32> {
        self.processes.get(process).and_then(Process::pid)
    }

    /// Whether the process `key` is known and has not exited.
    pub fn is_running(&mut self, key: &str) -> bool {
        self.processes.get_mut(key).is_some_and(Process::is_running)
    }

    /// Stops the process `key` with `signal`, waiting up to 10 s before SIGKILL, and returns
    /// how it ended (as [`Process::stop`]).
    pub fn stop_process(&mut self, key: &str, signal: Signal) -> Result<String, TestbedError> {
        let mut process = self
            .processes
            .remove(key)
            .ok_or_else(|| TestbedError::Spec(format!("no process {key:?} running")))?;
        Ok(process.stop(signal, Duration::from_secs(10)))
    }

    /// Files the running process `from` under `to` (replacing what `to` named); whether `from`
    /// was there.
    pub fn rename_process(&mut self, from: &str, to: &str) -> bool {
        match self.processes.remove(from) {
            Some(process) => {
                self.processes.insert(to.to_owned(), process);
                true
            }
            None => false,
        }
    }

    /// The log of a process (`ca`, `proxy/<node>`, `app/<pod>`), for messages.
    pub fn log_tail(&self, process: &str, lines: usize) -> String {
        self.processes
            .get(process)
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Why waiting for `process` (since `start`) ends: it exited, or took too long.
    pub(crate) fn gave_up(&mut self, process: &str, start: Instant) -> Option<TestbedError> {
        let running = self
            .processes
            .get_mut(process)
            .is_some_and(Process::is_running);
        (!running || start.elapsed() > READY_TIMEOUT).then(|| TestbedError::NotReady {
            what: format!("{process} ({})", if running { "running" } else { "exited" }),
            waited_ms: start.elapsed().as_millis(),
            log: self.log_tail(process, 20),
        })
    }
}
