//! L7 enforcement over real loopback TCP: a "tunnel" (a plain TCP connection whose server side
//! goes to `serve_l7`), an echo server standing in for the pod, and policies loaded from YAML.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodemesh_identity::SpiffeId;
use nodemesh_policy::load::load_texts;
use nodemesh_policy::{EngineOptions, PolicySet, Reason, Verdict};
use nodemesh_proxy::l7::{
    ConnectFuture, L7Context, L7Destination, L7Error, L7Limits, L7Outcome, L7Source, L7Summary,
    RequestRecord, serve_l7,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const POLICY: &str = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: public-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
    to: [{operation: {methods: [GET], paths: ['/public/*']}}]
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: staff-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ['/staff/*']}}]
    when: [{key: 'request.headers[x-role]', values: [staff]}]
";

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn policies() -> Arc<PolicySet> {
    let loaded = load_texts(&[("l7.yaml".to_owned(), POLICY.to_owned())]).expect("policy loads");
    Arc::new(PolicySet::new(loaded, EngineOptions::default()))
}

// ---- the pod: an HTTP echo server (HTTP/1.1 or h2c) that also echoes upgraded bytes ----

struct Pod {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Request targets received, in order.
    seen: mpsc::UnboundedReceiver<String>,
}

async fn pod_handler(
    mut req: Request<Incoming>,
    seen: mpsc::UnboundedSender<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_owned();
    let _ = seen.send(target.clone());
    // This pod switches to whatever protocol it is asked for, and on `/switch` unasked.
    let upgrade = req.headers().contains_key("upgrade") || target.ends_with("/switch");
    if upgrade {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", "upgrade".parse().expect("value"));
        let to = req.headers().get("upgrade").cloned();
        resp.headers_mut().insert(
            "upgrade",
            to.unwrap_or_else(|| "websocket".parse().expect("value")),
        );
        return Ok(resp);
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if target.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let body = format!("pod saw {} {target} host={host}", req.method());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    if target.ends_with("/close") {
        // The pod ends its keep-alive connection after this response.
        resp.headers_mut()
            .insert("connection", "close".parse().expect("value"));
    }
    Ok(resp)
}

async fn start_pod(h2: bool) -> Pod {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, seen) = mpsc::unbounded_channel();
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let service = service_fn(move |req| pod_handler(req, tx.clone()));
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Pod {
        addr,
        accepted,
        seen,
    }
}

fn connector(addr: SocketAddr) -> impl Fn() -> ConnectFuture + Send + Sync + 'static {
    move || Box::pin(TcpStream::connect(addr))
}

// ---- the tunnel: client side for the test, server side to serve_l7 ----

struct Tunnel {
    client: TcpStream,
    server: JoinHandle<Result<L7Outcome<TcpStream>, L7Error>>,
    records: mpsc::UnboundedReceiver<RequestRecord>,
}

fn context(
    principal: &str,
    limits: L7Limits,
) -> (L7Context, mpsc::UnboundedReceiver<RequestRecord>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = L7Context::new(
        policies(),
        L7Destination {
            namespace: "shop".into(),
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            ip: "127.0.0.1".parse().expect("ip"),
            port: 8080,
        },
        L7Source {
            principal: Some(SpiffeId::new(principal).expect("spiffe id")),
            ip: "127.0.1.2".parse().expect("ip"),
        },
    )
    .with_limits(limits)
    .with_on_request(move |r| {
        let _ = tx.send(r);
    });
    (ctx, rx)
}

async fn open_tunnel(pod: SocketAddr, principal: &str, limits: L7Limits) -> Tunnel {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tunnel");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect tunnel");
    let (server, _) = listener.accept().await.expect("accept tunnel");
    let (ctx, records) = context(principal, limits);
    let server = tokio::spawn(serve_l7(server, ctx, connector(pod)));
    Tunnel {
        client,
        server,
        records,
    }
}

fn fast_sniff() -> L7Limits {
    L7Limits {
        sniff_timeout: Duration::from_millis(100),
        ..L7Limits::default()
    }
}

async fn served(server: JoinHandle<Result<L7Outcome<TcpStream>, L7Error>>) -> L7Summary {
    let outcome = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve_l7 ends")
        .expect("serve_l7 does not panic")
        .expect("serve_l7 succeeds");
    match outcome {
        L7Outcome::Served(summary) => summary,
        L7Outcome::NotHttp(_) => panic!("expected HTTP"),
    }
}

fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Ok(x) = rx.try_recv() {
        out.push(x);
    }
    out
}

// ---- a raw HTTP/1.1 client, so that request targets go on the wire exactly as written ----

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_answer(io: &mut BufReader<&mut TcpStream>) -> Answer {
    let mut line = String::new();
    io.read_line(&mut line).await.expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        io.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut answer = Answer {
        status,
        headers,
        body: String::new(),
    };
    if status == 101 {
        return answer;
    }
    let mut body = Vec::new();
    if let Some(n) = answer.header("content-length") {
        let n: usize = n.parse().expect("content-length");
        body.resize(n, 0);
        io.read_exact(&mut body).await.expect("body");
    } else if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            io.read_line(&mut line).await.expect("chunk size");
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; n + 2];
            io.read_exact(&mut chunk).await.expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    answer.body = String::from_utf8(body).expect("utf-8 body");
    answer
}

async fn send(client: &mut TcpStream, raw: &str) -> Answer {
    client.write_all(raw.as_bytes()).await.expect("write");
    tokio::time::timeout(
        Duration::from_secs(5),
        read_answer(&mut BufReader::new(client)),
    )
    .await
    .expect("answer in time")
}

async fn get(client: &mut TcpStream, method: &str, target: &str) -> Answer {
    send(
        client,
        &format!("{method} {target} HTTP/1.1\r\nhost: web.shop\r\ncontent-length: 0\r\n\r\n"),
    )
    .await
}

/// Reads until the peer closes; true when it did in time.
async fn closes_within(client: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(limit, client.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

/// A request record as (method, path, status, verdict, policy, reason).
type Row<'a> = (&'a str, &'a str, u16, Verdict, Option<&'a str>, &'a str);

// ---- tests ----

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_authorized() {
    let mut pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;

    let a = get(&mut t.client, "GET", "/public/x").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "pod saw GET /public/x host=web.shop");

    for (method, target) in [
        ("POST", "/public/x"),
        ("GET", "/admin"),
        ("GET", "//admin"),
        ("GET", "/public/../admin"),
        ("get", "/admin"),
    ] {
        let a = get(&mut t.client, method, target).await;
        assert_eq!(a.status, 403, "{method} {target}");
        assert_eq!(a.body, "RBAC: access denied", "{method} {target}");
        assert_eq!(a.header("content-type"), Some("text/plain"));
    }
    for target in ["/public/a%2Fb", "/public/a%2fb", "/public/%00"] {
        let a = get(&mut t.client, "GET", target).await;
        assert_eq!(a.status, 400, "{target}");
    }

    // The pod receives the path the policy decided on, query kept.
    let a = get(&mut t.client, "GET", "/public/./y//z?q=%2F").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "pod saw GET /public/y/z?q=%2F host=web.shop");

    drop(t.client);
    let summary = served(t.server).await;
    assert_eq!(summary.requests, 10);
    assert_eq!(summary.denied, 8);
    assert_eq!(summary.upgraded, None);
    // Allowed requests shared one connection to the pod; denied ones never reached it.
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(drain(&mut pod.seen), ["/public/x", "/public/y/z?q=%2F"]);

    let records = drain(&mut t.records);
    let rows: Vec<Row<'_>> = records
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.status,
                r.verdict,
                r.policy.as_deref(),
                r.reason,
            )
        })
        .collect();
    let allowed = (Verdict::Allow, Some("shop/public-only"), "allow_matched");
    let denied = (Verdict::Deny, None, "no_allow_matched");
    let invalid = (Verdict::Deny, None, "invalid_path");
    let row =
        |m, p, s, (v, pol, r): (Verdict, Option<&'static str>, &'static str)| (m, p, s, v, pol, r);
    assert_eq!(
        rows,
        [
            row("GET", "/public/x", 200, allowed),
            row("POST", "/public/x", 403, denied),
            row("GET", "/admin", 403, denied),
            row("GET", "//admin", 403, denied),
            row("GET", "/public/../admin", 403, denied),
            row("get", "/admin", 403, denied),
            row("GET", "/public/a%2Fb", 400, invalid),
            row("GET", "/public/a%2fb", 400, invalid),
            row("GET", "/public/%00", 400, invalid),
            row("GET", "/public/./y//z?q=%2F", 200, allowed),
        ]
    );
    assert!(records.iter().all(|r| r.authority == "web.shop"));
    assert!(records.iter().all(|r| r.response_flags == "-"));
}

#[tokio::test]
async fn another_principal_is_denied_the_same_request() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(
        pod.addr,
        "spiffe://cluster.local/ns/shop/sa/other",
        fast_sniff(),
    )
    .await;
    let a = get(&mut t.client, "GET", "/public/x").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body, "RBAC: access denied");
    drop(t.client);
    assert_eq!(served(t.server).await.denied, 1);
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn allowed_websocket_upgrade_is_relayed_raw() {
    let mut pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;

    // A denied upgrade is an ordinary 403, and the connection stays HTTP.
    let upgrade = |target: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nhost: web.shop\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let a = send(&mut t.client, &upgrade("/admin/ws")).await;
    assert_eq!(a.status, 403);

    let a = send(&mut t.client, &upgrade("/public/ws")).await;
    assert_eq!(a.status, 101);
    assert_eq!(a.header("upgrade"), Some("websocket"));

    for msg in [
        &b"\x81\x05hello"[..],
        b"not even HTTP\r\n\r\n",
        &[0u8; 3000],
    ] {
        t.client.write_all(msg).await.expect("write");
        let mut back = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), t.client.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg);
    }
    t.client.shutdown().await.expect("half-close");
    assert!(closes_within(&mut t.client, Duration::from_secs(5)).await);

    let summary = served(t.server).await;
    let bytes = summary.upgraded.expect("upgraded");
    let sent = (7 + 17 + 3000) as u64;
    assert_eq!((bytes.from_client, bytes.from_pod), (sent, sent));
    assert_eq!(drain(&mut pod.seen), ["/public/ws"]);
    let statuses: Vec<u16> = drain(&mut t.records).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 101]);
}

#[tokio::test]
async fn only_websocket_upgrades_switch_protocols() {
    let mut pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    // An h2c upgrade would carry later requests past policy: the pod never sees it asked for.
    let a = send(
        &mut t.client,
        "GET /public/h2 HTTP/1.1\r\nhost: web.shop\r\nconnection: Upgrade, HTTP2-Settings\r\n\
         upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "pod saw GET /public/h2 host=web.shop");
    // A pod that switches protocols unasked gets no raw tunnel either.
    let a = get(&mut t.client, "GET", "/public/switch").await;
    assert_eq!(a.status, 502);
    // The client's connection is still HTTP, on a new pod connection.
    assert_eq!(get(&mut t.client, "GET", "/public/x").await.status, 200);
    drop(t.client);
    let summary = served(t.server).await;
    assert_eq!((summary.requests, summary.upgraded), (3, None));
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        drain(&mut pod.seen),
        ["/public/h2", "/public/switch", "/public/x"]
    );
    let flags: Vec<&str> = drain(&mut t.records)
        .iter()
        .map(|r| r.response_flags.as_str())
        .collect();
    assert_eq!(flags, ["-", "UPE", "-"]);
}

#[tokio::test]
async fn server_first_stream_is_not_http_after_the_timeout() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), t.server)
        .await
        .expect("in time")
        .expect("no panic")
        .expect("no error");
    assert!(started.elapsed() >= Duration::from_millis(100));
    let L7Outcome::NotHttp(mut not_http) = outcome else {
        panic!("a silent client is not HTTP");
    };
    // At L4 the engine takes the ALLOW rule's L7 fields as false: the connection is denied.
    let decision = not_http.decide();
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.reason, Reason::NoAllowMatched);
    assert!(decision.needs_l7);

    // The stream is intact: a server-first protocol could go on.
    not_http
        .stream
        .write_all(b"220 smtp ready\r\n")
        .await
        .expect("write");
    let mut banner = [0u8; 16];
    t.client.read_exact(&mut banner).await.expect("read");
    assert_eq!(&banner, b"220 smtp ready\r\n");
    assert!(drain(&mut t.records).is_empty());
}

#[tokio::test]
async fn client_first_non_http_is_handed_back_with_its_bytes() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, L7Limits::default()).await;
    let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
    t.client.write_all(hello).await.expect("write");
    let started = std::time::Instant::now();
    let outcome = t.server.await.expect("no panic").expect("no error");
    // Decided on the first byte, not by waiting for the timeout.
    assert!(started.elapsed() < Duration::from_millis(150));
    let L7Outcome::NotHttp(mut not_http) = outcome else {
        panic!("TLS is not HTTP");
    };
    let mut replay = vec![0; hello.len()];
    not_http
        .stream
        .read_exact(&mut replay)
        .await
        .expect("replayed");
    assert_eq!(replay, hello);
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_panic() {
    let pod = start_pod(false).await;
    for garbage in [
        "GET /public/x HTTP/1.1\r\nthis is no header\r\n\r\n",
        "GET /public/x HTTP/9.9\r\nhost: web.shop\r\n\r\n",
        "GET /public/\x7fx HTTP/1.1\r\n\r\n",
        "FOO bar baz qux\r\n\r\n",
    ] {
        let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
        let a = send(&mut t.client, garbage).await;
        assert_eq!(a.status, 400, "{garbage:?}");
        assert!(closes_within(&mut t.client, Duration::from_secs(5)).await);
        let result = tokio::time::timeout(Duration::from_secs(5), t.server)
            .await
            .expect("ends")
            .expect("serve_l7 does not panic");
        assert!(
            matches!(result, Err(L7Error::Downstream { .. })),
            "{garbage:?}: {result:?}"
        );
    }
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ambiguous_host_is_refused() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    let a = send(
        &mut t.client,
        "GET /public/x HTTP/1.1\r\nhost: web.shop\r\nhost: admin.shop\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 400);
    let a = send(
        &mut t.client,
        "GET http://web.shop/public/x HTTP/1.1\r\nhost: admin.shop\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 400);
    // Absolute-form with a matching Host is fine, and reaches the pod in origin-form.
    let a = send(
        &mut t.client,
        "GET http://web.shop/public/x HTTP/1.1\r\nhost: web.shop\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "pod saw GET /public/x host=web.shop");
}

#[tokio::test]
async fn http_1_1_without_host_is_refused() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    let a = send(&mut t.client, "GET /public/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (400, "bad request: HTTP/1.1 request without Host")
    );
    let a = send(
        &mut t.client,
        "GET http://web.shop/public/x HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(
        a.status, 400,
        "absolute-form does not excuse a missing Host"
    );
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_repeated_header_is_matched_as_its_joined_value() {
    let mut pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    let staff = |headers: &str| format!("GET /staff/x HTTP/1.1\r\nhost: web.shop\r\n{headers}\r\n");
    let a = send(&mut t.client, &staff("x-role: staff\r\n")).await;
    assert_eq!(a.status, 200, "{a:?}");
    // One matching value among several is not the header: Envoy matches `staff,guest`.
    for headers in [
        "x-role: staff\r\nx-role: guest\r\n",
        "x-role: guest\r\nX-Role: staff\r\n",
    ] {
        let a = send(&mut t.client, &staff(headers)).await;
        assert_eq!(a.status, 403, "{headers:?}: {a:?}");
    }
    assert_eq!(drain(&mut pod.seen), ["/staff/x"]);
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    // Complete, so that the server reads all of it (no reset hides the answer), but too large.
    let big = "a".repeat(66 * 1024);
    let a = send(
        &mut t.client,
        &format!("GET /public/x HTTP/1.1\r\nhost: web.shop\r\nx-big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(a.status, 431);
    let result = t.server.await.expect("no panic");
    assert!(result.is_err());
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slow_request_head_times_out() {
    let pod = start_pod(false).await;
    let limits = L7Limits {
        header_read_timeout: Duration::from_millis(300),
        ..fast_sniff()
    };
    let mut t = open_tunnel(pod.addr, WEB, limits).await;
    t.client
        .write_all(b"GET /public/x HTTP/1.1\r\nhost: web")
        .await
        .expect("write");
    assert!(closes_within(&mut t.client, Duration::from_secs(3)).await);
    let err = t
        .server
        .await
        .expect("no panic")
        .expect_err("a timed-out head is an error");
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let pod = start_pod(false).await;
    let limits = L7Limits {
        idle_timeout: Duration::from_millis(300),
        ..fast_sniff()
    };
    let mut t = open_tunnel(pod.addr, WEB, limits).await;
    assert_eq!(get(&mut t.client, "GET", "/public/x").await.status, 200);
    let started = std::time::Instant::now();
    assert!(closes_within(&mut t.client, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(served(t.server).await.requests, 1);
}

#[tokio::test]
async fn pod_connection_is_reopened_after_the_pod_closes_it() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    let a = get(&mut t.client, "GET", "/public/close").await;
    assert_eq!(a.status, 200);
    // The pod's `connection: close` is hop-by-hop: the client's connection stays open.
    assert_eq!(a.header("connection"), None);
    let a = get(&mut t.client, "GET", "/public/again").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "pod saw GET /public/again host=web.shop");
    assert_eq!(pod.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_pod_gets_503() {
    // A port nothing listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let mut t = open_tunnel(closed, WEB, fast_sniff()).await;
    let a = get(&mut t.client, "GET", "/public/x").await;
    assert_eq!(a.status, 503);
    // The denied request after it still gets its 403 on the same connection.
    assert_eq!(get(&mut t.client, "GET", "/admin").await.status, 403);
    drop(t.client);
    served(t.server).await;
    let records = drain(&mut t.records);
    assert_eq!(records[0].response_flags, "UF");
    assert_eq!(records[0].verdict, Verdict::Allow);
}

#[tokio::test]
async fn client_leaving_mid_request_is_recorded() {
    let pod = start_pod(false).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    t.client
        .write_all(b"GET /public/slow HTTP/1.1\r\nhost: web.shop\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(t.client);
    let ended = tokio::time::timeout(Duration::from_secs(1), t.server)
        .await
        .expect("the client's leaving ends serving before the pod answers")
        .expect("no panic");
    // Hyper reports the unanswered request as an incomplete message.
    assert!(
        matches!(&ended, Err(L7Error::Downstream { summary, .. }) if summary.requests == 1),
        "{ended:?}"
    );
    let records = drain(&mut t.records);
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].status, records[0].response_flags.as_str()),
        (0, "DC")
    );
    assert_eq!(records[0].verdict, Verdict::Allow);
}

#[tokio::test]
async fn h2c_streams_are_authorized_one_by_one() {
    let mut pod = start_pod(true).await;
    let mut t = open_tunnel(pod.addr, WEB, fast_sniff()).await;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(t.client))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);

    let call = |method: &'static str, path: &'static str| {
        let mut sender = sender.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://web.shop{path}"))
                .body(Empty::new())
                .expect("request");
            let resp = sender.send_request(req).await.expect("response");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (a, b, c, d) = tokio::join!(
        call("GET", "/public/x"),
        call("GET", "/admin"),
        call("DELETE", "/public/x"),
        call("GET", "/public/a%2Fb"),
    );
    assert_eq!(a, (200, "pod saw GET /public/x host=web.shop".to_owned()));
    assert_eq!(b, (403, "RBAC: access denied".to_owned()));
    assert_eq!(c.0, 403);
    assert_eq!(d.0, 400);
    drop(sender);

    let summary = served(t.server).await;
    assert_eq!(summary.protocol, nodemesh_proxy::l7::HttpProtocol::H2c);
    assert_eq!((summary.requests, summary.denied), (4, 3));
    assert_eq!(drain(&mut pod.seen), ["/public/x"]);
    let mut records: Vec<(String, u16)> = drain(&mut t.records)
        .into_iter()
        .map(|r| (format!("{} {}", r.method, r.path), r.status))
        .collect();
    records.sort();
    assert_eq!(
        records,
        [
            ("DELETE /public/x".to_owned(), 403),
            ("GET /admin".to_owned(), 403),
            ("GET /public/a%2Fb".to_owned(), 400),
            ("GET /public/x".to_owned(), 200),
        ]
    );
}
