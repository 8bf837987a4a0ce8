//! Thin handlers for the Anthropic ingress: authenticate, parse, call the hub, render.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hub_core::{CallContext, HubError, StreamItem};

use super::codec::{self, EventWriter};
use crate::AppState;
use crate::errors::ApiError;
use crate::openai::codec::peek_model;
use crate::openai::handlers::sse_response;
use crate::request::{authenticate, body_error, call_context};

/// Sets the hub's request id as `x-request-id` and as Anthropic's `request-id`.
fn with_request_id(mut resp: Response, ctx: &CallContext) -> Response {
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("request-id", v.clone());
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// An Anthropic-shaped error. Before authentication there is no call context; the error still gets
/// a fresh id (body `request_id`, `request-id`, `x-request-id`), as Anthropic's own errors do.
fn error(e: HubError, ctx: Option<&CallContext>) -> Response {
    let id = match ctx {
        Some(ctx) => ctx.request_id.clone(),
        None => hub_core::hub::new_request_id(),
    };
    ApiError::anthropic(e).with_request_id(&id).into_response()
}

/// Authenticates and reads the body; on failure returns the response to send.
async fn prepare(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: &str,
) -> Result<(CallContext, Bytes), Response> {
    let principal = authenticate(&st.hub, headers)
        .await
        .map_err(|e| error(e, None))?;
    let ctx = call_context(principal, headers, "anthropic");
    match body {
        Ok(b) => Ok((ctx, b)),
        Err(rej) => {
            let e = body_error(&rej);
            st.hub.record_rejected(&ctx, endpoint, "", false, &e).await;
            Err(error(e, Some(&ctx)))
        }
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ctx, body) = match prepare(&st, &headers, body, "chat").await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let req = match codec::parse_messages(&body, codec::Body::Messages) {
        Ok(r) => r,
        Err(e) => {
            st.hub
                .record_rejected(&ctx, "chat", &peek_model(&body), false, &e)
                .await;
            return error(e, Some(&ctx));
        }
    };
    drop(body); // as soon as it is parsed (see `request::body_error`)
    if !req.stream {
        // Boxed: inline, a non-streaming call's state (~5.8 KB) would size every stream's too.
        return match Box::pin(st.hub.chat(&ctx, req)).await {
            Ok(resp) => {
                let id = codec::message_id(&resp.id, &ctx.request_id);
                with_request_id(
                    Json(codec::render_message(&resp, &id)).into_response(),
                    &ctx,
                )
            }
            Err(e) => error(e, Some(&ctx)),
        };
    }
    // `message_start` carries the prompt estimate (real usage only arrives at the end); it is
    // tokenized on a blocking thread while the upstream works on its first byte.
    let for_estimate = req.clone();
    let estimate =
        tokio::task::spawn_blocking(move || hub_core::tokenize::estimate_prompt(&for_estimate));
    let requested_model = req.model.clone();
    match st.hub.chat_stream(&ctx, req).await {
        Ok(stream) => {
            let input_estimate = estimate.await.unwrap_or(0);
            let mut writer = EventWriter::new(&ctx.request_id, &requested_model, input_estimate);
            let body = stream.filter_map(move |item| {
                let text = match item {
                    StreamItem::Event(ev) => writer.event(&ev),
                    StreamItem::Done { usage, .. } => Some(writer.done(&usage)),
                    StreamItem::Error(e) => Some(writer.error(&e)),
                };
                std::future::ready(text.map(|t| Ok::<_, Infallible>(Bytes::from(t))))
            });
            let mut resp = sse_response(Body::from_stream(body), &ctx.request_id);
            if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                resp.headers_mut().insert("request-id", v);
            }
            resp
        }
        Err(e) => {
            estimate.abort();
            error(e, Some(&ctx))
        }
    }
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`: the provider's own count where its
/// module can count (Anthropic, Gemini, Bedrock), else the hub's estimate, marked by the
/// `x-aigne-hub-estimated: true` header.
pub async fn count_tokens(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ctx, body) = match prepare(&st, &headers, body, "count_tokens").await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let req = match codec::parse_messages(&body, codec::Body::CountTokens) {
        Ok(r) => r,
        Err(e) => {
            st.hub
                .record_rejected(&ctx, "count_tokens", &peek_model(&body), false, &e)
                .await;
            return error(e, Some(&ctx));
        }
    };
    drop(body); // as soon as it is parsed (see `request::body_error`)
    match st.hub.count_tokens(&ctx, req).await {
        Ok(count) => {
            let mut resp = with_request_id(
                Json(serde_json::json!({"input_tokens": count.input_tokens})).into_response(),
                &ctx,
            );
            if count.estimated {
                resp.headers_mut()
                    .insert("x-aigne-hub-estimated", HeaderValue::from_static("true"));
            }
            resp
        }
        Err(e) => error(e, Some(&ctx)),
    }
}
