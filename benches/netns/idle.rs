//! Memory per idle connection: a client pod opens many TCP connections to a server pod's nginx
//! and sends nothing; the proxies' RSS grows by what each connection costs them end to end.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nodemesh_testbed::Netns;

/// Connections held open for the measurement.
pub const CONNECTIONS: usize = 1000;

/// Bytes of RSS per idle connection, summed over the processes `pids`: their RSS with
/// [`CONNECTIONS`] connections from `client` to `server` held open, less their RSS before.
pub fn bytes_per_connection(client: &Netns, server: SocketAddr, pids: &[u32]) -> f64 {
    let before: f64 = pids.iter().map(|&p| crate::rss_bytes(p)).sum();
    let (hold, release) = std::sync::mpsc::channel::<()>();
    let (opened, all_open) = std::sync::mpsc::channel::<usize>();
    let task = client
        .spawn(move || {
            let streams: Vec<TcpStream> = (0..CONNECTIONS)
                .filter_map(|_| TcpStream::connect_timeout(&server, Duration::from_secs(5)).ok())
                .collect();
            let _ = opened.send(streams.len());
            let _ = release.recv();
            drop(streams);
        })
        .unwrap();
    let n = all_open.recv().unwrap();
    assert_eq!(
        n, CONNECTIONS,
        "only {n} of {CONNECTIONS} idle connections opened"
    );
    // Let the far ends (the tunnels, the upstream connections) come up.
    std::thread::sleep(Duration::from_secs(2));
    let during: f64 = pids.iter().map(|&p| crate::rss_bytes(p)).sum();
    drop(hold);
    task.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    (during - before) / CONNECTIONS as f64
}
