//! Pod -> pod across two nodes of a testbed, back to back in one run: direct (pods outside the
//! mesh: no capture), through nodemesh (mesh pods: TPROXY, HBONE mTLS, L4 policy) and, when
//! `NODEMESH_BENCH_ZTUNNEL` names a ztunnel binary, through Istio's ztunnel (see [`ztunnel`]):
//! iperf3 single stream and `-P 4`; wrk against nginx with keep-alive and with one connection per
//! request; memory per idle connection; RSS of each proxy after the runs. Needs root, iperf3, wrk
//! and nginx (`scripts/bench-netns` installs them and runs this). Prints a Markdown table for
//! BENCHMARKS.md. `NODEMESH_BENCH_BINARY` runs another nodemesh binary than the one built with
//! the bench.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A bench script: a panic is a failed run.

mod idle;
mod ztunnel;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use nodemesh_testbed::{MeshOptions, Netns, Testbed, scenario};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");
const SECONDS: &str = "5";
const NGINX_PORT: u16 = 8081;
const IPERF_PORT: u16 = 5201;

/// One way from a client pod to a server pod.
struct Route {
    name: &'static str,
    client: &'static str,
    server: &'static str,
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the netns bench runs under `cargo bench --bench netns` (scripts/bench-netns)");
        return;
    }
    nodemesh_testbed::check_prerequisites().expect("the netns bench needs root");
    let workers: usize = std::env::var("NODEMESH_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let ztunnel_binary = std::env::var_os("NODEMESH_BENCH_ZTUNNEL").map(PathBuf::from);
    let mut spec = scenario::shop();
    spec.policies.clear();
    if ztunnel_binary.is_some() {
        ztunnel::add_pods(&mut spec);
    }
    let mut bed = Testbed::build(spec).unwrap();
    // Another build of nodemesh (e.g. another profile), to compare builds with one bench.
    let binary = std::env::var("NODEMESH_BENCH_BINARY").unwrap_or_else(|_| BINARY.to_owned());
    let mut opts = MeshOptions::new(&binary);
    opts.worker_threads = workers;
    bed.start_mesh(&opts).unwrap();
    let mut paths = vec![Route {
        name: "direct",
        client: "legacy-a",
        server: "legacy-b",
    }];
    if let Some(binary) = &ztunnel_binary {
        ztunnel::start(&mut bed, binary, workers);
        paths.push(Route {
            name: "ztunnel",
            client: ztunnel::CLIENT,
            server: ztunnel::SERVER,
        });
    }
    paths.push(Route {
        name: "nodemesh",
        client: "frontend-a",
        server: "web-b",
    });
    for path in &paths {
        let ns = bed.pod(path.server).unwrap().clone();
        let port = IPERF_PORT.to_string();
        bed.start_process(
            &format!("iperf3/{}", path.server),
            &ns,
            &["iperf3", "-s", "-p", &port],
        )
        .unwrap();
        let conf = nginx_conf(&bed, path.server);
        bed.start_process(
            &format!("nginx/{}", path.server),
            &ns,
            &["nginx", "-c", conf.to_str().unwrap(), "-g", "daemon off;"],
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "proxy worker threads: {workers}; each run {SECONDS} s; load average before: {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let table = Table::new(&paths);
    table.header();
    // What the proxies hold before any connection, then memory per idle connection, before the
    // load grows the allocators' pools.
    let at_start = proxy_rss_mib(&bed, &paths);
    let idle: Vec<Option<f64>> = paths
        .iter()
        .map(|p| {
            let pids = proxy_pids(&bed, p.name);
            (!pids.is_empty()).then(|| {
                let server = SocketAddr::from((bed.pod_ip(p.server).unwrap(), NGINX_PORT));
                idle::bytes_per_connection(bed.pod(p.client).unwrap(), server, &pids) / 1024.0
            })
        })
        .collect();
    for streams in ["1", "4"] {
        let r = paths
            .iter()
            .map(|p| Some(iperf(&bed, p.client, p.server, streams)))
            .collect();
        table.row(&format!("iperf3 -P {streams} (Gbit/s)"), r, 2);
    }
    for (what, close) in [("keep-alive", false), ("`Connection: close`", true)] {
        let r: Vec<Wrk> = paths
            .iter()
            .map(|p| wrk(&bed, p.client, p.server, close))
            .collect();
        let col = |f: fn(&Wrk) -> f64| r.iter().map(|w| Some(f(w))).collect::<Vec<_>>();
        table.row(&format!("wrk {what}, 10 conns (req/s)"), col(|w| w.rps), 0);
        table.row(&format!("wrk {what} p50 (ms)"), col(|w| w.p50_ms), 3);
        table.row(&format!("wrk {what} p99 (ms)"), col(|w| w.p99_ms), 3);
    }
    table.row(
        &format!(
            "RSS per idle connection, both proxies (KiB; {} conns)",
            idle::CONNECTIONS
        ),
        idle,
        1,
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss = proxy_rss_mib(&bed, &paths);
    let [at_start, anon_at_start] = at_start;
    let [rss, anon] = rss;
    table.row("RSS at start, per proxy (MiB)", at_start, 1);
    table.row("RSS after the runs, per proxy (MiB)", rss, 1);
    table.row(
        "anonymous RSS (heap, stacks) at start (MiB)",
        anon_at_start,
        1,
    );
    table.row("anonymous RSS (heap, stacks) after the runs (MiB)", anon, 1);
    if ztunnel_binary.is_some() {
        let opened = ztunnel::connections_opened(&bed, ztunnel::SERVER);
        assert!(
            opened > 1000.0,
            "the ztunnel path's server-side ztunnel reports {opened} connections: traffic went around it"
        );
        println!("\nztunnel (server side) opened {opened} connections: the ztunnel path used it");
    }
}

/// The proxy processes a path's traffic crosses.
fn proxy_pids(bed: &Testbed, path: &str) -> Vec<u32> {
    match path {
        "nodemesh" => ["node-a", "node-b"]
            .iter()
            .map(|n| bed.pid(&format!("proxy/{n}")).unwrap())
            .collect(),
        "ztunnel" => ztunnel::pids(bed),
        _ => Vec::new(),
    }
}

/// The Markdown table: one column per path, then nodemesh against ztunnel (when it ran) and
/// against direct.
struct Table {
    names: Vec<&'static str>,
}

impl Table {
    fn new(paths: &[Route]) -> Self {
        Self {
            names: paths.iter().map(|p| p.name).collect(),
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name)
    }

    fn header(&self) {
        let mut head = format!("| measure | {} |", self.names.join(" | "));
        let mut rule = format!("|---|{}", "---|".repeat(self.names.len()));
        if self.index("ztunnel").is_some() {
            head.push_str(" nodemesh / ztunnel |");
            rule.push_str("---|");
        }
        head.push_str(" nodemesh / direct |");
        rule.push_str("---|");
        println!("{head}\n{rule}");
    }

    fn row(&self, what: &str, values: Vec<Option<f64>>, decimals: usize) {
        let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.decimals$}"));
        let mut line = format!("| {what} |");
        for v in &values {
            line.push_str(&format!(" {} |", cell(*v)));
        }
        let mesh = self.index("nodemesh").and_then(|i| values[i]);
        let ratio = |other: Option<usize>| match (mesh, other.and_then(|i| values[i])) {
            (Some(m), Some(o)) if o > 0.0 => format!("{:.2}", m / o),
            _ => String::new(),
        };
        if self.index("ztunnel").is_some() {
            line.push_str(&format!(" {} |", ratio(self.index("ztunnel"))));
        }
        line.push_str(&format!(" {} |", ratio(self.index("direct"))));
        println!("{line}");
    }
}

/// A plain HTTP/1.0 GET to `127.0.0.1:port` inside `ns`: the status (0 if none) and the body.
fn http_get(ns: &Netns, port: u16, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    ns.run(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Some((status, body))
    })
    .ok()
    .flatten()
    .unwrap_or((0, String::new()))
}

fn nginx_conf(bed: &Testbed, pod: &str) -> std::path::PathBuf {
    let dir = bed.dir().join(format!("nginx-{pod}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
           server {{ listen {NGINX_PORT}; location / {{ return 200 \"hello from {pod}\\n\"; }} }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn iperf(bed: &Testbed, client: &str, server: &str, streams: &str) -> f64 {
    let ip = bed.pod_ip(server).unwrap().to_string();
    let port = IPERF_PORT.to_string();
    let out = bed
        .pod(client)
        .unwrap()
        .exec(&[
            "iperf3", "-c", &ip, "-p", &port, "-t", SECONDS, "-P", streams, "-J",
        ])
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 -J has end.sum_received")
        / 1e9
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(bed: &Testbed, client: &str, server: &str, close: bool) -> Wrk {
    let url = format!("http://{}:{NGINX_PORT}/", bed.pod_ip(server).unwrap());
    let duration = format!("{SECONDS}s");
    let mut argv = vec!["wrk", "-t", "1", "-c", "10", "-d", &duration, "--latency"];
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(&url);
    let out = bed.pod(client).unwrap().exec(&argv).unwrap();
    let field = |prefix: &str| -> &str {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("wrk output has no {prefix:?}:\n{out}"))
            .trim()
    };
    Wrk {
        rps: field("Requests/sec:").parse().unwrap(),
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    }
}

/// wrk's `123.45us`, `1.20ms` or `2.00s` in milliseconds.
fn millis(text: &str) -> f64 {
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let n: f64 = num.parse().unwrap();
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        other => panic!("unknown wrk unit {other}"),
    }
}

/// Each path's proxies' mean RSS and its anonymous part (heap and stacks; the rest is the
/// binary's and libraries' pages), in MiB (none for the direct path).
fn proxy_rss_mib(bed: &Testbed, paths: &[Route]) -> [Vec<Option<f64>>; 2] {
    ["VmRSS", "RssAnon"].map(|field| {
        paths
            .iter()
            .map(|p| {
                let pids = proxy_pids(bed, p.name);
                (!pids.is_empty()).then(|| {
                    let sum: f64 = pids.iter().map(|&pid| status_bytes(pid, field)).sum();
                    sum / pids.len() as f64 / 1048576.0
                })
            })
            .collect()
    })
}

fn rss_bytes(pid: u32) -> f64 {
    status_bytes(pid, "VmRSS")
}

/// A size field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`), in bytes.
fn status_bytes(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    nodemesh_proxy::heap::status_bytes(&status, field).unwrap() as f64
}
