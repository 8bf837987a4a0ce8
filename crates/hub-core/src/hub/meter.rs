//! Metering: usage records for every outcome, and the stream meter that records a stream exactly
//! once (before its terminator, or from `Drop` when the caller went away).

use futures::{Stream, StreamExt};

use super::billing::{Delivered, Hold};
use super::dispatch::Attempted;
use super::{CallContext, Hub, StreamItem};
use crate::error::HubError;
use crate::providers::EventStream;
use crate::store::{CallStatus, UsageRecord};
use crate::tokenize;
use crate::types::{ChatRequest, ChatResponse, StreamEvent, Usage};

impl Hub {
    pub(crate) fn record(
        &self,
        ctx: &CallContext,
        endpoint: &str,
        model: &str,
        stream: bool,
    ) -> UsageRecord {
        UsageRecord {
            id: ctx.request_id.clone(),
            created_at_ms: ctx.started_ms,
            client_request_id: ctx.client_request_id.clone(),
            principal: ctx.principal.key_id.clone(),
            user_id: ctx.principal.user_id.clone(),
            team_id: ctx.principal.team_id.clone(),
            app: ctx.app.clone(),
            ingress: ctx.ingress.to_string(),
            endpoint: endpoint.to_string(),
            requested_model: model.to_string(),
            provider: None,
            credential: None,
            upstream_model: None,
            stream,
            prompt_tokens: 0,
            completion_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            images: 0,
            estimated: false,
            latency_ms: ctx.started.elapsed().as_millis() as u64,
            ttfb_ms: None,
            status: CallStatus::Success,
            http_status: 200,
            error_class: None,
            error_message: None,
            provider_cost: None,
            attempts: 0,
            billing: crate::store::Billing::default(),
        }
    }

    /// A call's record once its upstream attempts are done: the one its hold was armed with when
    /// credit was reserved (moved, not built again), else a new one. Taking it disarms the hold:
    /// the caller charges and commits the record, or hands it to a stream's meter, before its
    /// next await.
    pub(crate) fn record_after_dispatch(
        &self,
        hold: &mut Hold,
        ctx: &CallContext,
        endpoint: &str,
        model: &str,
        stream: bool,
    ) -> UsageRecord {
        match hold.take_armed() {
            Some(mut rec) => {
                rec.latency_ms = ctx.started.elapsed().as_millis() as u64;
                rec
            }
            None => self.record(ctx, endpoint, model, stream),
        }
    }

    /// Commits a record; the caller must not see the end of the response unless this succeeded.
    /// Settles the call's spend budget first (in memory, exactly once per request id): the cost
    /// counts even if the caller goes away while the record is written.
    pub(crate) async fn commit(&self, record: UsageRecord) -> Result<(), HubError> {
        self.settle_budget(&record);
        self.observe(&record);
        self.inner.writer.commit(record).await.map_err(|e| {
            tracing::error!(error = %e, "usage record could not be committed");
            HubError::internal("the call could not be metered; it was not delivered")
        })
    }

    /// Records a call that made no upstream request (e.g. a model listing), so every authenticated
    /// call leaves its record.
    pub async fn record_local(&self, ctx: &CallContext, endpoint: &str) -> Result<(), HubError> {
        let rec = self.record(ctx, endpoint, "", false);
        self.commit(rec).await
    }

    /// Records a call that failed before reaching a provider (e.g. a body the ingress rejected).
    ///
    /// Boxed: an error path, but inline its commit (~3.5 KB) would sit in the state of every
    /// call that might take it (a handler, `chat_stream`) while the call runs.
    pub fn record_rejected<'a>(
        &'a self,
        ctx: &'a CallContext,
        endpoint: &'a str,
        model: &'a str,
        stream: bool,
        err: &'a HubError,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut rec = self.record(ctx, endpoint, model, stream);
            fail(&mut rec, err);
            let _ = self.commit(rec).await;
        })
    }
}

pub(crate) fn apply_attempt(rec: &mut UsageRecord, att: &Attempted) {
    rec.provider = att.provider.map(|p| p.name().to_string());
    rec.credential = att.credential.clone();
    rec.upstream_model = att.upstream_model.clone();
    rec.attempts = att.attempts;
    rec.ttfb_ms = att.ttfb_ms;
}

pub(crate) fn apply_usage(rec: &mut UsageRecord, u: &Usage) {
    rec.prompt_tokens = u.prompt_tokens;
    rec.completion_tokens = u.completion_tokens;
    rec.cache_read_tokens = u.cache_read_tokens;
    rec.cache_write_tokens = u.cache_write_tokens;
    rec.reasoning_tokens = u.reasoning_tokens;
    rec.images = u.images;
    rec.estimated = u.estimated;
}

pub(crate) fn fail(rec: &mut UsageRecord, e: &HubError) {
    rec.status = CallStatus::Failed;
    rec.http_status = e.status();
    rec.error_class = Some(e.class_name().to_string());
    let mut msg = e.message.clone();
    if msg.len() > 1000 {
        let mut end = 1000;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    rec.error_message = Some(msg);
}

pub(crate) fn estimate_chat_usage(req: &ChatRequest, resp: &ChatResponse) -> Usage {
    let mut text = resp.output.content.clone().unwrap_or_default();
    if let Some(r) = &resp.output.reasoning {
        text.push_str(r);
    }
    for c in &resp.output.tool_calls {
        text.push_str(&c.name);
        text.push_str(&c.arguments);
    }
    Usage {
        prompt_tokens: tokenize::estimate_prompt(req),
        completion_tokens: tokenize::count(&text),
        estimated: true,
        ..Usage::default()
    }
}

/// Meters one stream: sees every event, and records the call exactly once, either when the stream
/// ends (awaited, before the terminator) or, if the caller goes away, from `Drop`.
pub(crate) struct StreamMeter {
    pub(crate) hub: Hub,
    /// When the call started (its record's latency).
    pub(crate) started: std::time::Instant,
    pub(crate) req: std::sync::Arc<ChatRequest>,
    /// Shared with the heartbeat's entry for the stream (credit held); taken at the end.
    pub(crate) record: Option<std::sync::Arc<UsageRecord>>,
    /// Usage reported and output delivered so far (the text kept for estimation while the
    /// provider has sent no usage); shared with the heartbeat when credit is held.
    pub(crate) delivered: std::sync::Arc<parking_lot::Mutex<Delivered>>,
    /// Token-limit reservation, settled with the recorded usage.
    pub(crate) permit: Option<crate::policy::Permit>,
    /// The credit held for this stream; settled with the record.
    pub(crate) hold: Hold,
    /// Counts the stream as a call in flight until the meter is dropped.
    pub(crate) _call: super::CallGuard,
}

impl StreamMeter {
    fn observe(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::TextDelta { text } | StreamEvent::ReasoningDelta { text } => {
                let mut d = self.delivered.lock();
                if d.usage.is_none() {
                    d.push(text);
                }
            }
            StreamEvent::ToolCallDelta {
                name, arguments, ..
            } => {
                let mut d = self.delivered.lock();
                if d.usage.is_none() {
                    if let Some(n) = name {
                        d.push(n);
                    }
                    d.push(arguments);
                }
            }
            StreamEvent::Usage { usage } => self.delivered.lock().usage = Some(*usage),
            // Signatures and redacted reasoning are opaque; the tokens behind them are billed
            // from the provider's usage.
            StreamEvent::Start { .. }
            | StreamEvent::Finish { .. }
            | StreamEvent::ReasoningSignature { .. }
            | StreamEvent::RedactedReasoning { .. }
            | StreamEvent::ToolCallSignature { .. } => {}
        }
    }

    /// The record as of now, with usage (reported, or estimated from what was delivered).
    fn take_record(
        &mut self,
        status: CallStatus,
        err: Option<&HubError>,
    ) -> Option<(UsageRecord, Usage, Option<rust_decimal::Decimal>)> {
        let rec = self.record.take()?;
        self.hub.untrack_stream(&rec.id);
        // Unshared now, unless a heartbeat holds the entry this moment.
        let mut rec = std::sync::Arc::unwrap_or_clone(rec);
        let (reported, output, counted) = {
            let mut d = self.delivered.lock();
            (d.usage, std::mem::take(&mut d.output), d.counted)
        };
        let usage = match reported {
            Some(u) if u.prompt_tokens > 0 || u.completion_tokens > 0 => u,
            _ => Usage {
                prompt_tokens: tokenize::estimate_prompt(&self.req),
                // What the heartbeats counted (and dropped) is not counted again.
                completion_tokens: counted + tokenize::count(&output),
                estimated: true,
                ..Usage::default()
            },
        };
        apply_usage(&mut rec, &usage);
        if let Some(p) = self.permit.take() {
            p.settle(usage.prompt_tokens + usage.completion_tokens);
        }
        rec.latency_ms = self.started.elapsed().as_millis() as u64;
        rec.status = status;
        if let Some(e) = err {
            fail(&mut rec, e);
        } else if status == CallStatus::Cancelled {
            rec.http_status = 499;
            rec.error_class = Some("client_closed".to_string());
        }
        let cost = self.hub.charge(&mut rec, &mut self.hold, &usage);
        Some((rec, usage, cost))
    }
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        // Reached with a record still open only when the caller went away mid-stream: meter what
        // was delivered.
        if let Some((rec, _, _)) = self.take_record(CallStatus::Cancelled, None) {
            self.hub.settle_budget(&rec);
            self.hub.observe(&rec);
            self.hub.inner.writer.submit(rec);
        }
    }
}

/// The stream's end is boxed (`finish`): the commit's future (~3.5 KB) and the record being
/// committed would otherwise sit in every open stream's state from its first byte, though they
/// are needed once, at its end.
pub(crate) fn metered_stream(
    mut meter: StreamMeter,
    mut upstream: EventStream,
    first: StreamEvent,
    provider: String,
) -> impl Stream<Item = StreamItem> + Send {
    async_stream::stream! {
        meter.observe(&first);
        yield StreamItem::Event(first);
        loop {
            match upstream.next().await {
                Some(Ok(ev)) => {
                    meter.observe(&ev);
                    yield StreamItem::Event(ev);
                }
                Some(Err(e)) => {
                    drop(upstream);
                    let err = HubError::from_provider(&provider, &e);
                    drop(e);
                    yield Box::pin(finish(&mut meter, Some(err))).await;
                    return;
                }
                None => {
                    drop(upstream);
                    yield Box::pin(finish(&mut meter, None)).await;
                    return;
                }
            }
        }
    }
}

/// The last item of a stream that ended (`err`: how it failed), once its record is committed.
async fn finish(meter: &mut StreamMeter, err: Option<HubError>) -> StreamItem {
    match err {
        Some(err) => {
            if let Some((rec, _, _)) = meter.take_record(CallStatus::Failed, Some(&err)) {
                let _ = meter.hub.commit(rec).await;
            }
            StreamItem::Error(err)
        }
        None => match meter.take_record(CallStatus::Success, None) {
            Some((rec, usage, cost)) => match meter.hub.commit(rec).await {
                Ok(()) => StreamItem::Done { usage, cost },
                Err(e) => StreamItem::Error(e),
            },
            None => StreamItem::Error(HubError::internal("stream already settled")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_testkit::returned_size;

    /// Every open stream keeps its metered state (the stream's generator, with its meter) for as
    /// long as it is open; 5,000 streams multiply it (BENCHMARKS.md, open streams). Its end is
    /// boxed: with the commit future inline this state was ~6 KB, and with the record being
    /// committed inline 2.7 KB; it should be the meter and little more.
    #[test]
    fn an_open_streams_metered_state_stays_small() {
        let generator = returned_size(&|(m, u, f, p): (
            StreamMeter,
            EventStream,
            StreamEvent,
            String,
        )| { metered_stream(m, u, f, p) });
        let meter = std::mem::size_of::<StreamMeter>();
        assert!(
            generator < meter + 640,
            "metered stream state {generator} B, its meter {meter} B: is the end inline again?"
        );
        // An unarmed hold (every stream's) does not carry a whole record inline.
        assert!(
            std::mem::size_of::<Hold>() < std::mem::size_of::<UsageRecord>(),
            "Hold is {} B",
            std::mem::size_of::<Hold>()
        );
        // Nor do the meter and the heartbeat's entry for the stream: they share one record.
        let in_flight = std::mem::size_of::<super::super::billing::InFlight>();
        assert!(
            meter < std::mem::size_of::<UsageRecord>()
                && in_flight < std::mem::size_of::<UsageRecord>(),
            "StreamMeter {meter} B, InFlight {in_flight} B: a record inline again?"
        );
    }
}
