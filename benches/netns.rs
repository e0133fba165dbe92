//! Pod -> pod across two nodes of a testbed, direct (pods outside the mesh: no capture) against
//! through nodemesh (mesh pods: TPROXY, HBONE mTLS, L4 policy), back to back in one run:
//! iperf3 single stream and `-P 4`; wrk against nginx with keep-alive and with one connection per
//! request; idle RSS of each proxy. Needs root, iperf3, wrk and nginx (`scripts/bench-netns`
//! installs them and runs this). Prints a Markdown table for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A bench script: a panic is a failed run.

use std::time::Duration;

use nodemesh_testbed::{MeshOptions, Testbed, scenario};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");
const SECONDS: &str = "5";
const NGINX_PORT: u16 = 8081;
const IPERF_PORT: u16 = 5201;

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
    let mut spec = scenario::shop();
    spec.policies.clear();
    let mut bed = Testbed::build(spec).unwrap();
    let mut opts = MeshOptions::new(BINARY);
    opts.worker_threads = workers;
    bed.start_mesh(&opts).unwrap();
    for server in ["web-b", "legacy-b"] {
        let ns = bed.pod(server).unwrap().clone();
        let port = IPERF_PORT.to_string();
        bed.start_process(
            &format!("iperf3/{server}"),
            &ns,
            &["iperf3", "-s", "-p", &port],
        )
        .unwrap();
        let conf = nginx_conf(&bed, server);
        bed.start_process(
            &format!("nginx/{server}"),
            &ns,
            &["nginx", "-c", conf.to_str().unwrap(), "-g", "daemon off;"],
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let paths = [
        ("direct", "legacy-a", "legacy-b"),
        ("nodemesh", "frontend-a", "web-b"),
    ];
    println!("proxy worker threads: {workers}; each run {SECONDS} s\n");
    println!("| measure | direct | nodemesh | nodemesh / direct |");
    println!("|---|---|---|---|");
    for streams in ["1", "4"] {
        let r: Vec<f64> = paths
            .iter()
            .map(|(_, client, server)| iperf(&bed, client, server, streams))
            .collect();
        row(&format!("iperf3 -P {streams} (Gbit/s)"), r[0], r[1], 2);
    }
    for (what, close) in [("keep-alive", false), ("new connection per request", true)] {
        let r: Vec<Wrk> = paths
            .iter()
            .map(|(_, client, server)| wrk(&bed, client, server, close))
            .collect();
        row(
            &format!("wrk {what}, 10 conns (req/s)"),
            r[0].rps,
            r[1].rps,
            0,
        );
        println!(
            "| wrk {what} p50 / p99 (ms) | {:.3} / {:.3} | {:.3} / {:.3} | |",
            r[0].p50_ms, r[0].p99_ms, r[1].p50_ms, r[1].p99_ms
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    for node in ["node-a", "node-b"] {
        let pid = bed.pid(&format!("proxy/{node}")).unwrap();
        println!(
            "| proxy {node} RSS after the runs (MiB) | | {:.1} | |",
            rss_mib(pid)
        );
    }
}

fn row(what: &str, direct: f64, mesh: f64, decimals: usize) {
    println!(
        "| {what} | {direct:.decimals$} | {mesh:.decimals$} | {:.0}% |",
        100.0 * mesh / direct
    );
}

fn nginx_conf(bed: &Testbed, pod: &str) -> std::path::PathBuf {
    let dir = bed.dir().join(format!("nginx-{pod}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
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

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}
