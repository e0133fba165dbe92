//! For tests that run programs: a command that must succeed ([`sh`]); for `nodemesh` as a
//! process, the line it prints once it listens and the fields in it ([`line_with`],
//! [`field`]), plain HTTP/1.1 GETs to its endpoints ([`http_get`], [`await_http_ok`]), and a
//! child killed when the test ends ([`Killed`]).

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Runs `argv` (program and arguments) and returns its stdout; panics with its stderr unless
/// it succeeds.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET path` on `addr` with `connection: close`; the whole answer (status line, headers and
/// body), or `None` if it could not be had within 5 s.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `GET path` on `addr` every 100 ms until it answers `200`; panics after `within`.
/// Blocks the thread: in a Tokio test, use a multi-threaded runtime.
pub fn await_http_ok(addr: &str, path: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = http_get(addr, path).unwrap_or_default();
        if r.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}{path} never 200: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads lines from `from` until one contains `marker` and returns it; a thread keeps draining
/// `from` afterwards so the child never blocks on a full pipe. Panics if `from` ends first.
pub fn line_with(from: impl Read + Send + 'static, marker: &str) -> String {
    let mut reader = BufReader::new(from);
    let mut line = String::new();
    while !line.contains(marker) {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "exited before {marker:?}"
        );
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = reader.read_to_string(&mut sink);
    });
    line
}

/// The word after `name ` in `line` (`admin 127.0.0.1:4000, ...` -> `127.0.0.1:4000`).
pub fn field(line: &str, name: &str) -> String {
    let rest = &line[line.find(&format!("{name} ")).unwrap() + name.len() + 1..];
    rest.split([',', ' ', '\n']).next().unwrap().to_owned()
}

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_returns_stdout() {
        assert_eq!(sh(&["echo", "hi"]), "hi\n");
    }

    #[test]
    fn fields_and_lines() {
        let line = "nodemesh proxy: outbound 127.0.0.1:1, admin 127.0.0.1:2 readiness x\n";
        assert_eq!(field(line, "admin"), "127.0.0.1:2");
        assert_eq!(field(line, "readiness"), "x");
        let text = "starting\nnodemesh proxy: outbound a\nmore\n";
        assert_eq!(
            line_with(std::io::Cursor::new(text), "nodemesh proxy:"),
            "nodemesh proxy: outbound a\n"
        );
    }
}
