//! Flow log: exact JSON keys and values in a file target; a full channel drops instead of blocking.

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use nodemesh_proxy::observe::{
    Direction, FlowEndpoint, FlowLog, FlowLogTarget, FlowRecord, FlowVerdict, HttpFlow, Metrics,
    RefusalReason,
};
use serde_json::{Value, json};

fn tcp_record() -> FlowRecord {
    FlowRecord {
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_735_787_045_678),
        src: FlowEndpoint {
            workload: Some("client".into()),
            namespace: Some("shop".into()),
            identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
            ip: "127.0.1.2".parse::<IpAddr>().ok(),
            port: Some(40312),
        },
        dst: FlowEndpoint {
            workload: Some("web".into()),
            namespace: Some("shop".into()),
            identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            ip: "127.0.2.3".parse::<IpAddr>().ok(),
            port: Some(8080),
        },
        service: Some("web.shop.svc.cluster.local".into()),
        policy: Some("shop/allow-client".into()),
        bytes_sent: 512,
        bytes_received: 128,
        duration: Duration::from_micros(12_900),
        ..FlowRecord::new(Direction::Outbound, FlowVerdict::Allow)
    }
}

fn http_record() -> FlowRecord {
    FlowRecord {
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_735_787_046_001),
        dst: FlowEndpoint {
            ip: "127.0.2.3".parse::<IpAddr>().ok(),
            port: Some(8080),
            ..FlowEndpoint::default()
        },
        policy: Some("shop/deny-admin".into()),
        reason: Some(RefusalReason::Policy),
        bytes_sent: 19,
        duration: Duration::from_millis(3),
        http: Some(HttpFlow {
            method: "POST".into(),
            path: "/admin?x=1".into(),
            status: 403,
        }),
        ..FlowRecord::new(Direction::Inbound, FlowVerdict::Deny)
    }
}

#[tokio::test]
async fn file_target_writes_one_json_line_per_record_with_the_exact_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let target: FlowLogTarget = path.to_str().unwrap().parse().unwrap();
    assert_eq!(target, FlowLogTarget::File(path.clone()));

    let metrics = Metrics::new();
    let log = FlowLog::start(&target, &metrics).unwrap();
    assert!(log.is_enabled());
    log.record(tcp_record());
    log.record(http_record());
    log.flush().await;

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");

    // Key order is stable too (it is the order the design lists).
    assert!(
        lines[0].starts_with(r#"{"time":"2025-01-02T03:04:05.678Z","direction":"outbound","src":{"workload":"client","#),
        "{}",
        lines[0]
    );
    let tcp: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        tcp,
        json!({
            "time": "2025-01-02T03:04:05.678Z",
            "direction": "outbound",
            "src": {
                "workload": "client",
                "namespace": "shop",
                "identity": "spiffe://cluster.local/ns/shop/sa/client",
                "ip": "127.0.1.2",
                "port": 40312,
            },
            "dst": {
                "workload": "web",
                "namespace": "shop",
                "identity": "spiffe://cluster.local/ns/shop/sa/web",
                "ip": "127.0.2.3",
                "port": 8080,
            },
            "service": "web.shop.svc.cluster.local",
            "verdict": "allow",
            "policy": "shop/allow-client",
            "reason": null,
            "bytes_sent": 512,
            "bytes_received": 128,
            "duration_ms": 12,
        })
    );

    let http: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        http,
        json!({
            "time": "2025-01-02T03:04:06.001Z",
            "direction": "inbound",
            "src": {"workload": null, "namespace": null, "identity": null, "ip": null, "port": null},
            "dst": {"workload": null, "namespace": null, "identity": null, "ip": "127.0.2.3", "port": 8080},
            "service": null,
            "verdict": "deny",
            "policy": "shop/deny-admin",
            "reason": "policy",
            "bytes_sent": 19,
            "bytes_received": 0,
            "duration_ms": 3,
            "method": "POST",
            "path": "/admin?x=1",
            "status": 403,
        })
    );

    // Appends: a second log on the same file keeps the earlier lines.
    drop(log);
    let again = FlowLog::start(&target, &metrics).unwrap();
    again.record(tcp_record());
    again.flush().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    assert_eq!(again.dropped(), 0);
}

#[tokio::test]
async fn off_records_nothing() {
    assert_eq!("off".parse::<FlowLogTarget>().unwrap(), FlowLogTarget::Off);
    let log = FlowLog::start(&FlowLogTarget::Off, &Metrics::new()).unwrap();
    assert!(!log.is_enabled());
    log.record(tcp_record());
    log.flush().await;
    assert_eq!(log.dropped(), 0);
}

#[test]
fn unopenable_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("flows.jsonl");
    let err = FlowLog::start(&FlowLogTarget::File(path.clone()), &Metrics::new()).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!("".parse::<FlowLogTarget>().is_err());
}

/// A writer that blocks on its first write until released, and forwards what it writes.
struct BlockedWriter {
    entered: Option<std_mpsc::Sender<()>>,
    release: std_mpsc::Receiver<()>,
    written: std_mpsc::Sender<Vec<u8>>,
}

impl Write for BlockedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(entered) = self.entered.take() {
            entered.send(()).expect("test listens");
            self.release
                .recv_timeout(Duration::from_secs(10))
                .expect("test releases the writer");
        }
        self.written.send(buf.to_vec()).expect("test listens");
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_channel_drops_and_counts_instead_of_blocking() {
    let (entered_tx, entered_rx) = std_mpsc::channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let (written_tx, written_rx) = std_mpsc::channel();
    let writer = BlockedWriter {
        entered: Some(entered_tx),
        release: release_rx,
        written: written_tx,
    };
    let metrics = Metrics::new();
    let log = FlowLog::with_writer(writer, 2, &metrics).unwrap();

    // The writer takes the first record and blocks writing it.
    log.record(tcp_record());
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("writer started writing");

    // Two fit in the channel; the next five are dropped, and none of this waits for the writer.
    let start = Instant::now();
    for _ in 0..7 {
        log.record(tcp_record());
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "record() blocked for {:?}",
        start.elapsed()
    );
    assert_eq!(log.dropped(), 5);
    assert!(
        metrics
            .render()
            .contains("\nnodemesh_flow_log_dropped_total 5\n"),
        "{}",
        metrics.render()
    );

    release_tx.send(()).unwrap();
    log.flush().await;
    let written: Vec<u8> = written_rx.try_iter().flatten().collect();
    let text = String::from_utf8(written).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["bytes_sent"], 512);
    }

    // With room again, records are written.
    log.record(http_record());
    log.flush().await;
    let more: Vec<u8> = written_rx.try_iter().flatten().collect();
    assert_eq!(String::from_utf8(more).unwrap().lines().count(), 1);
    assert_eq!(log.dropped(), 5);
}

#[test]
fn zero_capacity_is_refused() {
    assert!(FlowLog::with_writer(io::sink(), 0, &Metrics::new()).is_err());
}
