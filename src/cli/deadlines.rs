//! The deadlines and L7 limits of `nodemesh proxy`: every wait of the data path is bounded, and
//! each bound is a flag.

use std::time::Duration;

use nodemesh_proxy::l7::L7Limits;

/// Deadlines of outbound connects and of connections under L7 enforcement.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Deadlines and L7 limits")]
pub struct DeadlineArgs {
    /// How long a TCP connect (HBONE to a peer, plain TCP to a pod or outside the mesh) may
    /// take; past it the client's connection is reset (`connect_timeout`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// L7: how long the pod may take to send a response's head (else 504, flag `UT`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    l7_upstream_timeout: Duration,
    /// L7: the longest pause a client may make inside a request body (else 408, flag `SI`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    l7_body_timeout: Duration,
    /// L7, HTTP/1: time allowed to receive a request head (also bounds an idle keep-alive
    /// connection between requests).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    l7_header_timeout: Duration,
    /// L7: a connection with no request in flight for this long is closed.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    l7_idle_timeout: Duration,
    /// L7: how long a client may stay silent before its stream is taken for a server-first
    /// protocol and relayed as TCP.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    l7_sniff_timeout: Duration,
    /// L7: the largest request head (HTTP/1) or header list (h2), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    l7_max_header_bytes: usize,
    /// L7, h2: concurrent streams per connection.
    #[arg(long, value_name = "N", default_value_t = 200)]
    l7_max_concurrent_streams: u32,
}

impl DeadlineArgs {
    /// The connect deadline.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The L7 limits.
    pub fn l7_limits(&self) -> L7Limits {
        L7Limits {
            sniff_timeout: self.l7_sniff_timeout,
            header_read_timeout: self.l7_header_timeout,
            max_header_bytes: self.l7_max_header_bytes,
            idle_timeout: self.l7_idle_timeout,
            max_concurrent_streams: self.l7_max_concurrent_streams,
            upstream_timeout: self.l7_upstream_timeout,
            body_timeout: self.l7_body_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        deadlines: DeadlineArgs,
    }

    #[test]
    fn the_flag_defaults_are_the_library_defaults() {
        let cli = Cli::parse_from(["nodemesh"]);
        assert_eq!(cli.deadlines.l7_limits(), L7Limits::default());
        assert_eq!(
            cli.deadlines.connect_timeout(),
            nodemesh_proxy::ProxyOptions::default().connect_timeout
        );
    }

    #[test]
    fn flags_reach_the_limits() {
        let cli = Cli::parse_from([
            "nodemesh",
            "--connect-timeout",
            "1s",
            "--l7-upstream-timeout",
            "2s",
            "--l7-body-timeout",
            "3s",
        ]);
        let limits = cli.deadlines.l7_limits();
        assert_eq!(cli.deadlines.connect_timeout(), Duration::from_secs(1));
        assert_eq!(limits.upstream_timeout, Duration::from_secs(2));
        assert_eq!(limits.body_timeout, Duration::from_secs(3));
    }
}
