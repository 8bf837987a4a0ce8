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
use hub_core::auth::Principal;
use hub_core::ledger::{team_account, user_account};
use hub_core::pricing::{BillingMode, from_units};
use hub_core::providers::ProviderKind;
use hub_core::types::{ModelInfo, ModelType};
use hub_core::{CallContext, ErrorKind, HubError, StreamItem};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::info::{self, CreditStanding, Rates, TypeFilter, UserInfo};
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
pub(crate) fn error(st: &AppState, e: &HubError, ctx: Option<&CallContext>) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let link = st.hub.billing().payment_link.clone();
    let mut resp = (status, Json(error_body(e, link.as_deref()))).into_response();
    error_headers(e, resp.headers_mut());
    match ctx {
        Some(ctx) => with_request_id(resp, &ctx.request_id),
        None => resp,
    }
}

/// How a handler renders an error (JSON with its status, or in-stream for SSE callers).
type Render = fn(&AppState, &HubError, Option<&CallContext>) -> Response;

/// What a call cost the caller, for `usage.aigneHubCredits` / `creditPrefix`: only in credits
/// mode (in internal mode nothing is charged to the caller; the hub's own cost is not credits).
fn credits_for(st: &AppState, cost: Option<Decimal>) -> Credits {
    let b = st.hub.billing();
    if b.mode != BillingMode::Credits {
        return Credits::default();
    }
    Credits {
        amount: cost.and_then(|c| c.to_f64()),
        prefix: Some(b.credit_prefix.clone()),
    }
}

/// Authenticates and reads the body; on failure returns the response to send (rendered by
/// `render`, so SSE callers get their errors in-stream).
pub(crate) async fn prepare(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: &str,
    render: Render,
) -> Result<(CallContext, Bytes), Response> {
    let principal = authenticate(&st.hub, headers)
        .await
        .map_err(|e| render(st, &e, None))?;
    let ctx = call_context(principal, headers, "aigne");
    match body {
        Ok(b) => Ok((ctx, b)),
        Err(rej) => {
            let e = body_error(&rej);
            st.hub.record_rejected(&ctx, endpoint, "", false, &e).await;
            Err(render(st, &e, Some(&ctx)))
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
            return error(&st, &e, Some(&ctx));
        }
    };
    drop(body); // as soon as it is parsed (see `request::body_error`)
    if !call.streaming {
        // Boxed: inline, a non-streaming call's state (~5.8 KB) would size every stream's too.
        return match Box::pin(st.hub.chat(&ctx, call.request)).await {
            Ok(resp) => with_request_id(
                Json(invoke::render_output(
                    &resp,
                    &call.meta,
                    &ctx.request_id,
                    &credits_for(&st, resp.cost),
                ))
                .into_response(),
                &ctx.request_id,
            ),
            Err(e) => error(&st, &e, Some(&ctx)),
        };
    }
    let request_id = ctx.request_id.clone();
    match st.hub.chat_stream(&ctx, call.request).await {
        Ok(mut stream) => {
            let mut writer = StreamWriter::new(call.meta);
            let call_id = request_id.clone();
            let st = st.clone();
            let body = async_stream::stream! {
                yield Ok::<_, Infallible>(Bytes::from(writer.open()));
                while let Some(item) = stream.next().await {
                    match item {
                        StreamItem::Event(ev) => {
                            if let Some(f) = writer.event(&ev) {
                                yield Ok(Bytes::from(f));
                            }
                        }
                        StreamItem::Done { usage, cost } => {
                            let credits = credits_for(&st, cost);
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
        Err(e) => error(&st, &e, Some(&ctx)),
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
fn sse_error(st: &AppState, e: &HubError, ctx: Option<&CallContext>) -> Response {
    let id = ctx.map(|c| c.request_id.as_str()).unwrap_or_default();
    let link = st.hub.billing().payment_link.clone();
    sse_response(Body::from(legacy::sse_error(e, link.as_deref())), id)
}

/// `POST /api/v2/chat/completions` and `/api/v2/completions` (legacy AI Kit body).
pub async fn completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let sse = wants_sse(&headers);
    let render: Render = if sse { sse_error } else { error };
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
            return render(&st, &e, Some(&ctx));
        }
    };
    drop(body); // as soon as it is parsed (see `request::body_error`)
    if !sse && !call.stream {
        // Boxed: inline, a non-streaming call's state (~5.8 KB) would size every stream's too.
        return match Box::pin(st.hub.chat(&ctx, call.request)).await {
            Ok(resp) => with_request_id(
                Json(legacy::render_json(&resp)).into_response(),
                &ctx.request_id,
            ),
            Err(e) => error(&st, &e, Some(&ctx)),
        };
    }
    let mut request = call.request;
    request.stream = true;
    let request_id = ctx.request_id.clone();
    match st.hub.chat_stream(&ctx, request).await {
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
        Err(e) => render(&st, &e, Some(&ctx)),
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
            return error(&st, &e, Some(&ctx));
        }
    };
    drop(body); // as soon as it is parsed (see `request::body_error`)
    match st.hub.images(&ctx, call.request.clone()).await {
        Ok(resp) => {
            let credits = credits_for(&st, resp.cost);
            let v = if flat {
                media::render_image_flat(&resp, &call, &credits)
            } else {
                media::render_image_invoke(&resp, &call, &credits)
            };
            with_request_id(Json(v).into_response(), &ctx.request_id)
        }
        Err(e) => error(&st, &e, Some(&ctx)),
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
            return error(&st, &e, Some(&ctx));
        }
    };
    drop(body); // as soon as it is parsed (see `request::body_error`)
    match st.hub.embeddings(&ctx, call.request.clone()).await {
        Ok(resp) => with_request_id(
            Json(media::render_embeddings(
                &resp,
                &call,
                &credits_for(&st, resp.cost),
            ))
            .into_response(),
            &ctx.request_id,
        ),
        Err(e) => error(&st, &e, Some(&ctx)),
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
    let b = st.hub.billing();
    let rates = |m: &ModelInfo| -> Option<Rates> {
        if b.mode != BillingMode::Credits {
            // Nothing is charged to callers in internal billing.
            return Some(Rates::free());
        }
        let p = ProviderKind::from_name(&m.provider)?;
        let price = b.prices.get(p, &m.model, m.model_type)?;
        let output = match m.model_type {
            ModelType::Image => price.rates.image.unwrap_or(price.rates.output),
            ModelType::Chat | ModelType::Embedding => price.rates.output,
        };
        Some(Rates {
            input: price.rates.input.normalize().to_string(),
            output: output.normalize().to_string(),
        })
    };
    Json(info::render_models(&models, rates)).into_response()
}

/// The ledger account a principal's calls are charged to (its team's, else its own).
fn account_of(principal: &Principal) -> String {
    match &principal.team_id {
        Some(t) => team_account(t),
        None => user_account(&principal.user_id),
    }
}

/// Whether the caller can pay for a call now (credits mode): a positive balance, or no account
/// yet while new users get starter credits on their first call.
async fn credit_check(st: &AppState, principal: &Principal) -> Result<(), HubError> {
    let b = st.hub.billing();
    if b.mode != BillingMode::Credits {
        return Ok(());
    }
    let balance = st
        .hub
        .store()
        .balance(&account_of(principal))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading a balance for /api/v2/status failed");
            HubError::internal("the credit ledger is unavailable")
        })?;
    let can_pay = match balance {
        Some(bal) => bal.available > 0,
        None => b.starter_units > 0 && principal.team_id.is_none(),
    };
    if can_pay {
        Ok(())
    } else {
        Err(HubError::insufficient_credits(b.payment_link.clone()))
    }
}

/// `GET /api/v2/status?model=`: can this caller use this model right now? Authentication is
/// optional, as on the original; with a key in credits mode the balance is checked too.
pub async fn status(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let principal = authenticate(&st.hub, &headers).await.ok();
    let result = if st.hub.configured_providers().is_empty() {
        Err(
            HubError::new(ErrorKind::Unavailable, "No providers available")
                .with_code("no_providers"),
        )
    } else {
        let credit = match &principal {
            Some(p) => credit_check(&st, p).await,
            None => Ok(()),
        };
        credit.and_then(
            |()| match q.get("model").map(|m| m.trim()).filter(|m| !m.is_empty()) {
                Some(m) => st.hub.check_model(m),
                None => Ok(()),
            },
        )
    };
    let link = st.hub.billing().payment_link.clone();
    Json(info::render_status(&result, link.as_deref())).into_response()
}

/// The caller's balance, grants and holds (credits mode).
async fn credit_standing(
    st: &AppState,
    principal: &Principal,
) -> Result<Option<CreditStanding>, HubError> {
    let b = st.hub.billing();
    if b.mode != BillingMode::Credits {
        return Ok(None);
    }
    let account = account_of(principal);
    let store = st.hub.store();
    let unavailable = |e: hub_core::store::StoreError| {
        tracing::error!(error = %e, "reading the ledger for /api/user/info failed");
        HubError::internal("the credit ledger is unavailable")
    };
    let balance = store.balance(&account).await.map_err(unavailable)?;
    let entries = store.entries(&account).await.map_err(unavailable)?;
    let quota = hub_core::ledger::report::quota(balance.as_ref(), &entries, 0);
    Ok(Some(CreditStanding {
        balance: quota.remaining,
        total: quota.total,
        grant_count: entries
            .iter()
            .filter(|e| matches!(e.kind.as_str(), "grant" | "starter") && e.available_delta > 0)
            .count() as u64,
        pending: from_units(balance.as_ref().map_or(0, |b| b.reserved)),
        payment_link: b.payment_link.clone(),
        prefix: b.credit_prefix.clone(),
    }))
}

/// `GET /api/user/info`: who the caller is and their credit standing.
pub async fn user_info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let principal = match authenticate(&st.hub, &headers).await {
        Ok(p) => p,
        Err(e) => return error(&st, &e, None),
    };
    let full_name = match st.hub.store().get_user(&principal.user_id).await {
        Ok(user) => user.map(|u| u.name),
        Err(e) => {
            tracing::error!(error = %e, "reading the user for /api/user/info failed");
            return error(
                &st,
                &HubError::internal("the user directory is unavailable"),
                None,
            );
        }
    };
    let credits = match credit_standing(&st, &principal).await {
        Ok(c) => c,
        Err(e) => return error(&st, &e, None),
    };
    let user = UserInfo {
        did: principal.user_id.clone(),
        full_name,
    };
    Json(info::render_user_info(&user, credits.as_ref())).into_response()
}
