//! Connects the inbound path to L7 enforcement for destinations whose policies need it: every
//! HTTP request is authorized, counted in `istio_requests_total` and flow-logged; a stream that
//! is not HTTP is decided at L4 (L7 conditions false in ALLOW rules, true in DENY rules).

use std::sync::Arc;

use nodemesh_policy::Verdict;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::inbound::Arrival;
use crate::l7::{
    ConnectFuture, L7Context, L7Destination, L7Outcome, L7Source, RequestRecord, serve_l7,
};
use crate::observe::{
    ConnectionLabels, ConnectionMetrics, FlowVerdict, HttpFlow, RefusalReason, Reporter,
    RequestProtocol,
};
use crate::proxy::Ctx;
use crate::report::Flow;
use crate::state::MeshState;

/// Serves a tunnel to a destination that needs L7 authorization.
pub async fn serve<S>(
    ctx: &Ctx,
    state: &MeshState,
    arrival: &Arrival,
    downstream: S,
    flow: &mut Flow,
    metrics: &ConnectionMetrics,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(dst) = state.workload(arrival.target.ip()) else {
        return;
    };
    let l7 = L7Context::new(
        Arc::clone(state.policies()),
        L7Destination {
            namespace: dst.namespace.clone(),
            labels: dst.labels.clone(),
            ip: arrival.target.ip(),
            port: arrival.target.port(),
        },
        L7Source {
            principal: arrival.peer.clone(),
            ip: arrival.src.ip(),
        },
    )
    .with_on_request(request_reporter(ctx, flow));
    let connect_options = ctx.connect;
    let target = arrival.target;
    let source = ctx.preserve_source_ip.then(|| arrival.src.ip());
    let connect = move || -> ConnectFuture {
        Box::pin(async move { connect_options.connect(target, source).await })
    };
    match serve_l7(downstream, l7, connect).await {
        Ok(L7Outcome::Served(summary)) => {
            if let Some(up) = summary.upgraded {
                metrics.add_received(up.from_client);
                metrics.add_sent(up.from_pod);
            }
        }
        Ok(L7Outcome::NotHttp(not_http)) => {
            let (verdict, policy) = {
                let d = not_http.decide();
                (d.verdict, d.deciding_policy.as_ref().map(|p| p.to_string()))
            };
            ctx.metrics
                .policy_decision(verdict.as_str(), policy.as_deref());
            flow.policy = policy.clone();
            if verdict == Verdict::Deny {
                ctx.metrics.refused(RefusalReason::Policy);
                flow.deny(RefusalReason::Policy, policy);
                return;
            }
            let mut downstream = not_http.stream;
            match ctx.connect.connect(target, source).await {
                Ok(mut upstream) => {
                    if let Ok(t) = crate::relay::relay(&mut downstream, &mut upstream).await {
                        metrics.add_received(t.downstream_to_upstream);
                        metrics.add_sent(t.upstream_to_downstream);
                    }
                }
                Err(error) => {
                    tracing::debug!(%target, %error, "connect to pod failed");
                    ctx.metrics.refused(RefusalReason::UpstreamConnect);
                    flow.deny(RefusalReason::UpstreamConnect, None);
                }
            }
        }
        Err(error) => tracing::debug!(%error, "L7 stream ended with an error"),
    }
}

/// Turns each request record into `istio_requests_total`, a policy-decision count and a
/// flow-log line.
fn request_reporter(ctx: &Ctx, flow: &Flow) -> impl Fn(RequestRecord) + Send + Sync + 'static {
    let labels = ConnectionLabels {
        request_protocol: RequestProtocol::Http,
        ..flow.labels(Reporter::Destination)
    };
    let metrics = Arc::clone(&ctx.metrics);
    let flow_log = ctx.flow_log.clone();
    let base = flow.clone();
    move |record: RequestRecord| {
        metrics.request(&labels, record.status);
        metrics.policy_decision(record.verdict.as_str(), record.policy.as_deref());
        if flow_log.is_enabled() {
            let mut line = base.to_record();
            line.verdict = match record.verdict {
                Verdict::Allow => FlowVerdict::Allow,
                Verdict::Deny => FlowVerdict::Deny,
            };
            line.policy = record.policy.as_deref().map(Arc::from);
            line.duration = record.duration;
            line.http = Some(HttpFlow {
                method: record.method,
                path: record.path,
                status: record.status,
            });
            flow_log.record(line);
        }
    }
}
