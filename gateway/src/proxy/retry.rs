//! Retries: which failed tries are retried, and taking a retry from the route's budget and
//! the upstream's breaker. The budget itself lives in [`crate::limit::RetryBudget`], beside
//! the snapshot state it is part of.

use std::time::Instant;

use meshgate_policy::compiled::RetryOn;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

use super::context::RequestCtx;
use super::MeshProxy;

/// Whether a failure to connect is retried under `on`.
pub fn connect_failure_retried(on: &RetryOn, error: &ErrorType) -> bool {
    on.connect_failure
        || on.server_error
        || on.gateway_error
        || (on.refused && matches!(error, ErrorType::ConnectRefused))
}

/// Whether a failure after the connection was made (reset, per-try timeout) is retried.
pub fn reset_retried(on: &RetryOn) -> bool {
    on.reset || on.server_error
}

impl MeshProxy {
    /// Decides whether a failed try is retried, and if so takes the retry from the route's
    /// budget and the upstream's breaker. `sent` is whether the request already went out.
    /// A retry of a request that never reached an upstream (`sent == false`) moves the
    /// request rather than adding work, so it does not draw on the budget; `attempts` and
    /// `max_retries` still bound it.
    pub(super) fn take_retry(&self, session: &Session, ctx: &mut RequestCtx, sent: bool) -> bool {
        let Some(snapshot) = ctx.snapshot.clone() else {
            return false;
        };
        let Some(route_index) = ctx.route else {
            return false;
        };
        let Some(retry) = snapshot.policy.routes[route_index].retry.as_ref() else {
            return false;
        };
        if ctx.retries >= retry.retries {
            return false;
        }
        if sent && !retry.non_idempotent && !session.req_header().method.is_idempotent() {
            return false;
        }
        if session.as_ref().retry_buffer_truncated() {
            return false;
        }
        if ctx
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return false;
        }
        let Some(upstream) = ctx.upstream_state().cloned() else {
            return false;
        };
        if sent
            && !snapshot.routes[route_index]
                .retry_budget
                .try_retry(retry.budget_percent, retry.min_retries_per_second)
        {
            return false;
        }
        if !upstream.admit_retry() {
            return false;
        }
        ctx.held_retries += 1;
        ctx.retries += 1;
        self.telemetry
            .metrics
            .retries_total
            .with_label_values(&[snapshot.policy.routes[route_index].name.as_str()])
            .inc();
        true
    }
}

/// Waits `pause`, or fails early when the client closes its connection meanwhile, so that no
/// retry is started for a client that has gone.
pub(super) async fn client_gone_during(
    session: &mut Session,
    pause: std::time::Duration,
) -> Result<()> {
    let downstream = session.as_downstream_mut();
    if !downstream.is_body_done() {
        // Reading would consume the body; the retry buffer holds what the next try sends.
        tokio::time::sleep(pause).await;
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => Ok(()),
        gone = downstream.read_body_or_idle(true) => match gone {
            Err(mut e) => {
                e.as_down();
                Err(e)
            }
            // Pipelined bytes are kept for the next request; keep waiting out the pause.
            Ok(_) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
        },
    }
}
