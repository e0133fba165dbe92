//! The IPv6 guard's drops, reported: nodemesh meshes IPv4 only, so the node drops IPv6
//! forwarded to or from its mesh pods (`nodemesh_redirect::ipv6`). The metric
//! `nodemesh_ipv6_dropped_packets_total` follows the firewall's own counter, and the first drop
//! is logged, once.

use std::time::Duration;

use nodemesh_redirect::{Backend, Host, ipv6_dropped};

/// How often the firewall's counter is read.
const POLL: Duration = Duration::from_secs(2);

/// Follows the guard's counter on `host` into `counter` until the runtime stops.
pub async fn report_drops(host: Host, backend: Backend, counter: metrics::Counter) {
    let (mut warned, mut failed) = (false, false);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let host = host.clone();
        let read = tokio::task::spawn_blocking(move || ipv6_dropped(&host, backend)).await;
        match read {
            Ok(Ok(packets)) => {
                counter.absolute(packets);
                if packets > 0 && !warned {
                    warned = true;
                    tracing::warn!(
                        packets,
                        "IPv6 traffic to or from mesh pods dropped: nodemesh meshes IPv4 only \
                         (SECURITY.md, \"IPv6\"); further drops are counted in \
                         nodemesh_ipv6_dropped_packets_total"
                    );
                }
            }
            Ok(Err(error)) if !failed => {
                failed = true;
                tracing::warn!(%error, "cannot read the IPv6 guard's counter; not retried in the log");
            }
            Ok(Err(_)) => {}
            Err(_) => return,
        }
    }
}
