//! Thin handlers for the AIGNE routes: authenticate, parse, call the hub, render. Every call is
//! recorded with ingress `aigne` and the calling app from `x-aigne-hub-client-did`.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hub_core::{CallContext, ErrorKind, HubError, StreamItem};

use super::info::{self, Rates, TypeFilter, UserInfo};
use super::invoke::{self, StreamWriter};
use super::legacy::{self, LegacyStream};
use super::media;
use super::wire::{Credits, error_body};
use crate::AppState;
use crate::errors::error_headers;
use crate::openai::handlers::sse_response;
use crate::request::{authenticate, body_error, call_context};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn with_request_id(mut resp: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// An error as JSON `{"error":{"message","type"}}` with its status.
pub(crate) fn error(e: &HubError, ctx: Option<&CallContext>) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(error_body(e, None))).into_response();
    error_headers(e, resp.headers_mut());
    match ctx {
        Some(ctx) => with_request_id(resp, &ctx.request_id),
        None => resp,
    }
}

/// Authenticates and reads the body; on failure returns the response to send (rendered by
/// `render`, so SSE callers get their errors in-stream).
pub(crate) async fn prepare(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: &str,
    render: fn(&HubError, Option<&CallContext>) -> Response,
) -> Result<(CallContext, Bytes), Response> {
    let principal = authenticate(&st.hub, headers)
        .await
        .map_err(|e| render(&e, None))?;
    let ctx = call_context(principal, headers, "aigne");
    match body {
        Ok(b) => Ok((ctx, b)),
        Err(rej) => {
            let e = body_error(&rej);
            st.hub.record_rejected(&ctx, endpoint, "", false, &e).await;
            Err(render(&e, Some(&ctx)))
        }
    }
}

/// `POST /api/v2/chat`.
pub async fn chat(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ctx, body) = match prepare(&st, &headers, body, "chat", error).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let call = match invoke::parse_chat(&body) {
        Ok(c) => c,
        Err(e) => {
            st.hub
                .record_rejected(&ctx, "chat", &invoke::peek_model(&body), false, &e)
                .await;
            return error(&e, Some(&ctx));
        }
    };
    let credits = Credits::default();
    if !call.streaming {
        return match st.hub.chat(&ctx, call.request).await {
            Ok(resp) => with_request_id(
                Json(invoke::render_output(
                    &resp,
                    &call.meta,
                    &ctx.request_id,
                    &credits,
                ))
                .into_response(),
                &ctx.request_id,
            ),
            Err(e) => error(&e, Some(&ctx)),
        };
    }
    let request_id = ctx.request_id.clone();
    match st.hub.chat_stream(ctx.clone(), call.request).await {
        Ok(mut stream) => {
            let mut writer = StreamWriter::new(call.meta);
            let call_id = request_id.clone();
            let body = async_stream::stream! {
                yield Ok::<_, Infallible>(Bytes::from(writer.open()));
                while let Some(item) = stream.next().await {
                    match item {
                        StreamItem::Event(ev) => {
                            if let Some(f) = writer.event(&ev) {
                                yield Ok(Bytes::from(f));
                            }
                        }
                        StreamItem::Done { usage, .. } => {
                            yield Ok(Bytes::from(writer.done(&usage, &call_id, &credits)));
                            return;
                        }
                        StreamItem::Error(e) => {
                            yield Ok(Bytes::from(StreamWriter::error(&e)));
                            return;
                        }
                    }
                }
            };
            sse_response(Body::from_stream(body), &request_id)
        }
        Err(e) => error(&e, Some(&ctx)),
    }
}

/// Does the caller take `text/event-stream` (the legacy route's SSE mode)?
fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// An error sent to an SSE caller: status 200, `data: {"error":{...}}` (aigne-hub.md §2.7).
fn sse_error(e: &HubError, ctx: Option<&CallContext>) -> Response {
    let id = ctx.map(|c| c.request_id.as_str()).unwrap_or_default();
    sse_response(Body::from(legacy::sse_error(e)), id)
}

/// `POST /api/v2/chat/completions` and `/api/v2/completions` (legacy AI Kit body).
pub async fn completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let sse = wants_sse(&headers);
    let render: fn(&HubError, Option<&CallContext>) -> Response =
        if sse { sse_error } else { error };
    let (ctx, body) = match prepare(&st, &headers, body, "chat", render).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let call = match legacy::parse(&body) {
        Ok(c) => c,
        Err(e) => {
            st.hub
                .record_rejected(
                    &ctx,
                    "chat",
                    &media::peek_model(&body),
                    sse || legacy_stream(&body),
                    &e,
                )
                .await;
            return render(&e, Some(&ctx));
        }
    };
    if !sse && !call.stream {
        return match st.hub.chat(&ctx, call.request).await {
            Ok(resp) => with_request_id(
                Json(legacy::render_json(&resp)).into_response(),
                &ctx.request_id,
            ),
            Err(e) => error(&e, Some(&ctx)),
        };
    }
    let mut request = call.request;
    request.stream = true;
    let request_id = ctx.request_id.clone();
    match st.hub.chat_stream(ctx.clone(), request).await {
        Ok(mut stream) => {
            let mut writer = LegacyStream::new(sse);
            let body = async_stream::stream! {
                while let Some(item) = stream.next().await {
                    let out = match item {
                        StreamItem::Event(ev) => writer.event(&ev),
                        StreamItem::Done { usage, .. } => Some(writer.done(&usage)),
                        StreamItem::Error(e) => Some(writer.error(&e)),
                    };
                    if let Some(text) = out.filter(|t| !t.is_empty()) {
                        yield Ok::<_, Infallible>(Bytes::from(text));
                    }
                }
            };
            if sse {
                sse_response(Body::from_stream(body), &request_id)
            } else {
                let resp = (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; charset=utf-8"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    ],
                    Body::from_stream(body),
                )
                    .into_response();
                with_request_id(resp, &request_id)
            }
        }
        Err(e) => render(&e, Some(&ctx)),
    }
}

/// `stream: true` in a body, for records of bodies that did not parse.
fn legacy_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// `POST /api/v2/image` (invoke) and `/api/v2/image/generations` (flat).
async fn image(
    st: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    flat: bool,
) -> Response {
    let (ctx, body) = match prepare(&st, &headers, body, "images", error).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let parsed = if flat {
        media::parse_image_flat(&body)
    } else {
        media::parse_image_invoke(&body)
    };
    let call = match parsed {
        Ok(c) => c,
        Err(e) => {
            st.hub
                .record_rejected(&ctx, "images", &media::peek_model(&body), false, &e)
                .await;
            return error(&e, Some(&ctx));
        }
    };
    let credits = Credits::default();
    match st.hub.images(&ctx, call.request.clone()).await {
        Ok(resp) => {
            let v = if flat {
                media::render_image_flat(&resp, &call, &credits)
            } else {
                media::render_image_invoke(&resp, &call, &credits)
            };
            with_request_id(Json(v).into_response(), &ctx.request_id)
        }
        Err(e) => error(&e, Some(&ctx)),
    }
}

pub async fn image_invoke(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    image(st, headers, body, false).await
}

pub async fn image_generations(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    image(st, headers, body, true).await
}

/// `POST /api/v2/embeddings` (invoke shape or `{model, input}`).
pub async fn embeddings(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ctx, body) = match prepare(&st, &headers, body, "embeddings", error).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let call = match media::parse_embeddings(&body) {
        Ok(c) => c,
        Err(e) => {
            st.hub
                .record_rejected(&ctx, "embeddings", &media::peek_model(&body), false, &e)
                .await;
            return error(&e, Some(&ctx));
        }
    };
    match st.hub.embeddings(&ctx, call.request.clone()).await {
        Ok(resp) => with_request_id(
            Json(media::render_embeddings(&resp, &call, &Credits::default())).into_response(),
            &ctx.request_id,
        ),
        Err(e) => error(&e, Some(&ctx)),
    }
}

/// `GET /__blocklet__.js[?type=json]`: discovery for `@aigne/aigne-hub` (public, static).
pub async fn blocklet(Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("type").is_some_and(|t| t == "json") {
        Json(info::blocklet_json(VERSION)).into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/javascript; charset=utf-8"),
            )],
            info::blocklet_js(VERSION),
        )
            .into_response()
    }
}

/// `GET /api/ai/models?type=`: the public catalog of what this hub serves.
pub async fn models(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let models = match info::model_type(q.get("type").map(String::as_str)) {
        TypeFilter::All => st.hub.models(None),
        TypeFilter::Only(t) => st.hub.models(Some(t)),
        TypeFilter::Unserved => Vec::new(),
    };
    Json(info::render_models(&models, |_| Rates::free())).into_response()
}

/// `GET /api/v2/status?model=`: can this caller use this model right now? Authentication is
/// optional, as on the original.
pub async fn status(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let result = if st.hub.configured_providers().is_empty() {
        Err(
            HubError::new(ErrorKind::Unavailable, "No providers available")
                .with_code("no_providers"),
        )
    } else {
        match q.get("model").map(|m| m.trim()).filter(|m| !m.is_empty()) {
            Some(m) => st.hub.check_model(m),
            None => Ok(()),
        }
    };
    Json(info::render_status(&result)).into_response()
}

/// `GET /api/user/info`: who the caller is and their credit standing.
pub async fn user_info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let principal = match authenticate(&st.hub, &headers).await {
        Ok(p) => p,
        Err(e) => return error(&e, None),
    };
    let full_name = match st.hub.store().list_users().await {
        Ok(users) => users
            .into_iter()
            .find(|u| u.id == principal.user_id)
            .map(|u| u.name),
        Err(e) => {
            tracing::error!(error = %e, "listing users for /api/user/info failed");
            return error(
                &HubError::internal("the user directory is unavailable"),
                None,
            );
        }
    };
    Json(info::render_user_info(&UserInfo {
        did: principal.user_id.clone(),
        full_name,
    }))
    .into_response()
}
