//! Destinations whose policies need L7 decisions: every HTTP request is authorized, counted in
//! `istio_requests_total` (with its response flags) and flow-logged; a stream that is not HTTP
//! is decided at L4 (L7 conditions false in ALLOW rules, true in DENY rules).

use std::sync::Arc;

use nodemesh_policy::Verdict;
use nodemesh_state::MeshState;

use crate::conns::{AdmittedOn, Carried};
use crate::ctx::Ctx;
use crate::flow::{Flow, FlowGuard, Refused};
use crate::l7::{
    ConnectFuture, L7Context, L7Destination, L7Outcome, L7Source, PolicySource, RequestRecord,
    serve_l7,
};
use crate::observe::{
    ConnectionLabels, FlowLog, FlowVerdict, HttpFlow, Metrics, RefusalReason, Reporter,
    RequestProtocol,
};
use crate::relay::{RelayIo, Transferred, relay_logged_in};

/// Serves a tunnel to a destination that needs L7 authorization, admitted on `state`: each
/// request is decided against the policies in force when it arrives, and the connection is
/// closed when a change no longer admits it.
pub(super) async fn serve<S>(
    ctx: &Ctx,
    state: &Arc<MeshState>,
    on: AdmittedOn,
    downstream: S,
    guard: &mut FlowGuard,
) -> Result<Transferred, Refused>
where
    S: RelayIo + Send + 'static,
{
    let arrival = &on.arrival;
    let Some(dst) = state.workload(arrival.target.ip()) else {
        return Err(Refused::new(RefusalReason::UnknownDestination));
    };
    let l7 = L7Context::new(
        PolicySource::Current(Arc::clone(&ctx.store)),
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
    .with_limits(ctx.l7_limits)
    .with_on_request(RequestReporter::new(ctx, guard.flow()).into_sink());
    let connect_options = ctx.connect;
    let target = arrival.target.0;
    let source = ctx.pod_source(arrival.src);
    let connect = move || -> ConnectFuture {
        Box::pin(async move { connect_options.connect(target, source).await })
    };
    let http = AdmittedOn {
        carried: Carried::Http,
        ..on.clone()
    };
    let served = ctx
        .conns
        .open(state, http)
        .run(serve_l7(downstream, l7, connect))
        .await?;
    match served {
        Ok(L7Outcome::Served(summary)) => Ok(summary
            .upgraded
            .map(|up| Transferred {
                downstream_to_upstream: up.from_client,
                upstream_to_downstream: up.from_pod,
            })
            .unwrap_or_default()),
        Ok(L7Outcome::NotHttp(not_http)) => {
            // Decided on the current state, and watched from it on as an opaque stream.
            let now = ctx.store.load();
            let decision = not_http.decide();
            let (verdict, policy) = (decision.verdict, decision.policy);
            ctx.metrics()
                .policy_decision(verdict.as_str(), policy.as_deref());
            guard.flow().policy.clone_from(&policy);
            if verdict == Verdict::Deny {
                return Err(Refused::by_policy(policy));
            }
            let mut downstream = not_http.stream;
            let mut upstream = ctx.connect.connect(target, source).await.map_err(|error| {
                tracing::debug!(%target, %error, "connect to pod failed");
                Refused::new(RefusalReason::UpstreamConnect)
            })?;
            ctx.conns
                .open(&now, on)
                .run(relay_logged_in(
                    &ctx.bounds.memory,
                    &mut downstream,
                    &mut upstream,
                ))
                .await
        }
        Err(error) => {
            tracing::debug!(%error, "L7 stream ended with an error");
            Ok(Transferred::default())
        }
    }
}

/// Turns each request record into `istio_requests_total`, a policy-decision count and a
/// flow-log line.
struct RequestReporter {
    labels: ConnectionLabels,
    metrics: Arc<Metrics>,
    log: FlowLog,
    base: Flow,
}

impl RequestReporter {
    fn new(ctx: &Ctx, flow: &Flow) -> Self {
        Self {
            labels: ConnectionLabels {
                request_protocol: RequestProtocol::Http,
                ..flow.labels(Reporter::Destination)
            },
            metrics: Arc::clone(ctx.metrics()),
            log: ctx.flows.log().clone(),
            base: flow.clone(),
        }
    }

    fn into_sink(self) -> impl Fn(RequestRecord) + Send + Sync + 'static {
        move |record| self.report(record)
    }

    fn report(&self, record: RequestRecord) {
        self.metrics
            .request(&self.labels, record.status, record.response_flags);
        self.metrics
            .policy_decision(record.verdict.as_str(), record.policy.as_deref());
        if self.log.is_enabled() {
            let mut line = self.base.to_record();
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
            self.log.record(line);
        }
    }
}
