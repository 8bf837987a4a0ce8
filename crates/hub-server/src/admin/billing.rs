//! Prices, credits, billing settings and usage reports (`/api/admin/{prices,credits,billing}`,
//! `/api/admin/usage/{report,records,export}`), and the caller's own quota and report
//! (`/api/me/{quota,usage/report}`). Thin: scopes, validation and auditing live in
//! `hub_core::ledger_admin`.

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_core::HubError;
use hub_core::iam::Actor;
use hub_core::ledger::report::{Dim, EXPORT_HEADER, Period, ReportZone, csv_line, export_line};
use hub_core::ledger::{GrantKind, Quota, ReportQuery, UsageFilter};
use hub_core::ledger_admin::{
    self as la, AccountRef, BalanceView, BillingPatch, BillingView, CreditIn, CreditOut,
    EntriesPage, PriceFilter, PriceIn, PriceView, ReportView, RepriceIn, RepriceOut,
};
use hub_core::store::UsageRecord;
use serde::{Deserialize, Serialize};

use super::applied;
use super::auth::{AdminCaller, AdminError, Body, Caller, ErrorBody, Query};
use crate::AppState;

// ---------------------------------------------------------------------------------------------
// prices

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PriceParams {
    /// Every version, oldest first (default: the current version of each price).
    pub history: Option<bool>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// The price book: the current version of every price (disabled ones flagged), or its history.
#[utoipa::path(get, path = "/api/admin/prices", tag = "prices", params(PriceParams),
    responses((status = 200, body = [PriceView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_prices(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<PriceParams>,
) -> Result<Json<Vec<PriceView>>, AdminError> {
    let f = PriceFilter {
        history: q.history.unwrap_or(false),
        provider: q.provider,
        model: q.model,
    };
    Ok(Json(
        la::list_prices(st.hub.store().as_ref(), &c.actor, &f).await?,
    ))
}

/// Sets a model's price: a new version (earlier versions stay). Give `unit_cost` (USD per 1M
/// tokens; rates derived with the margin) or `rates` (credits per 1M tokens).
#[utoipa::path(post, path = "/api/admin/prices", tag = "prices", request_body = PriceIn,
    responses((status = 201, body = PriceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_price(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<PriceIn>,
) -> Result<(StatusCode, Json<PriceView>), AdminError> {
    let cfg = st.hub.billing();
    let p = la::set_price(st.hub.store().as_ref(), &c.actor, &cfg, &b).await?;
    applied(&st).await;
    Ok((StatusCode::CREATED, Json(p)))
}

/// Disables the price whose current version is `version` (appends a disabled version; the
/// history stays). A version that is no longer current is a 409.
#[utoipa::path(delete, path = "/api/admin/prices/{version}", tag = "prices",
    params(("version" = i64, Path, description = "the current price version")),
    responses((status = 200, body = PriceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn disable_price(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(version): Path<String>,
) -> Result<Json<PriceView>, AdminError> {
    let version: i64 = version.parse().map_err(|_| {
        AdminError(HubError::invalid_param(
            "version",
            format!("`{version}` is not a price version"),
        ))
    })?;
    let p = la::disable_price(st.hub.store().as_ref(), &c.actor, version).await?;
    applied(&st).await;
    Ok(Json(p))
}

/// Bulk re-price: re-derives every price that has unit costs (of one provider, or all) with a new
/// margin; without `provider` the margin setting changes too.
#[utoipa::path(post, path = "/api/admin/prices/reprice", tag = "prices", request_body = RepriceIn,
    responses((status = 200, body = RepriceOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn reprice(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<RepriceIn>,
) -> Result<Json<RepriceOut>, AdminError> {
    let cfg = st.hub.billing();
    let out = la::reprice(st.hub.store().as_ref(), &c.actor, &cfg, &b).await?;
    applied(&st).await;
    Ok(Json(out))
}

// ---------------------------------------------------------------------------------------------
// credits and billing settings

async fn credit(
    st: &AppState,
    actor: &Actor,
    kind: GrantKind,
    b: &CreditIn,
) -> Result<Json<CreditOut>, AdminError> {
    let cfg = st.hub.billing();
    Ok(Json(
        la::credit(st.hub.store().as_ref(), actor, &cfg, kind, b).await?,
    ))
}

/// Grants credits to a user or team; idempotent by `idempotency_key` (a replay answers
/// `replayed: true` and changes nothing).
#[utoipa::path(post, path = "/api/admin/credits/grant", tag = "credits", request_body = CreditIn,
    responses((status = 200, body = CreditOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn grant_credits(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<CreditIn>,
) -> Result<Json<CreditOut>, AdminError> {
    credit(&st, &c.actor, GrantKind::Grant, &b).await
}

/// Adjusts a balance up or down (never below zero: 409), with a `reason`; idempotent by key.
#[utoipa::path(post, path = "/api/admin/credits/adjust", tag = "credits", request_body = CreditIn,
    responses((status = 200, body = CreditOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn adjust_credits(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<CreditIn>,
) -> Result<Json<CreditOut>, AdminError> {
    credit(&st, &c.actor, GrantKind::Adjust, &b).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccountParams {
    /// User id.
    pub user: Option<String>,
    /// Team id or name.
    pub team: Option<String>,
}

/// The balance and quota of a user or team (a team admin: their team and its members).
#[utoipa::path(get, path = "/api/admin/credits/balance", tag = "credits", params(AccountParams),
    responses((status = 200, body = BalanceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn credit_balance(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<AccountParams>,
) -> Result<Json<BalanceView>, AdminError> {
    let store = st.hub.store().as_ref();
    let acc = la::resolve_account(
        store,
        &c.actor,
        &AccountRef {
            user: q.user,
            team: q.team,
        },
    )
    .await?;
    Ok(Json(la::balance_of(store, &st.hub.billing(), &acc).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesParams {
    pub user: Option<String>,
    pub team: Option<String>,
    /// Entries after this id (the previous page's `next_after`).
    pub after: Option<i64>,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
}

/// Ledger entries of a user's or team's account, oldest first, one page.
#[utoipa::path(get, path = "/api/admin/credits/entries", tag = "credits", params(EntriesParams),
    responses((status = 200, body = EntriesPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn credit_entries(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<EntriesParams>,
) -> Result<Json<EntriesPage>, AdminError> {
    let store = st.hub.store().as_ref();
    let acc = la::resolve_account(
        store,
        &c.actor,
        &AccountRef {
            user: q.user,
            team: q.team,
        },
    )
    .await?;
    Ok(Json(
        la::entries_page(store, &acc, q.after, q.limit.unwrap_or(100)).await?,
    ))
}

/// The billing settings in force (mode `internal` or `credits`, margin, starter credits, ...).
#[utoipa::path(get, path = "/api/admin/billing", tag = "billing",
    responses((status = 200, body = BillingView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_billing(
    State(st): State<AppState>,
    AdminCaller(_c): AdminCaller,
) -> Result<Json<BillingView>, AdminError> {
    Ok(Json(BillingView::of(&st.hub.billing())))
}

/// Changes billing settings; running instances apply them within a second (this one at once).
#[utoipa::path(patch, path = "/api/admin/billing", tag = "billing", request_body = BillingPatch,
    responses((status = 200, body = BillingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn update_billing(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<BillingPatch>,
) -> Result<Json<BillingView>, AdminError> {
    let cfg = st.hub.billing();
    la::update_billing(st.hub.store().as_ref(), &c.actor, &cfg, &b).await?;
    applied(&st).await;
    Ok(Json(BillingView::of(&st.hub.billing())))
}

// ---------------------------------------------------------------------------------------------
// usage reports, records, CSV

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Group by: comma list of user, team, app, provider, model.
    pub by: Option<String>,
    /// hour | day | month
    pub period: Option<String>,
    /// Time zone as a UTC offset (`+08:00`, `-05:30`, `UTC`) for periods and dates.
    pub tz: Option<String>,
    /// From (inclusive): `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` in `tz`, or epoch milliseconds.
    pub since: Option<String>,
    /// Until (exclusive), same forms.
    pub until: Option<String>,
    /// User id.
    pub user: Option<String>,
    /// Team id.
    pub team: Option<String>,
    pub app: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

fn invalid(param: &str, msg: impl Into<String>) -> AdminError {
    AdminError(HubError::invalid_param(param, msg))
}

/// A time zone: an IANA name (`Asia/Shanghai`) or a UTC offset (`+08:00`, `UTC`).
fn tz_of(tz: Option<&str>) -> Result<ReportZone, AdminError> {
    ReportZone::parse(tz.unwrap_or("UTC")).map_err(|m| invalid("tz", m))
}

fn time_of(param: &str, v: Option<&str>, zone: &ReportZone) -> Result<Option<i64>, AdminError> {
    v.map(|s| crate::ledger_cli::parse_time_in(s, zone).map_err(|m| invalid(param, m)))
        .transpose()
}

fn report_query(q: &ReportParams) -> Result<ReportQuery, AdminError> {
    let tz = tz_of(q.tz.as_deref())?;
    let mut group_by = Vec::new();
    for d in
        q.by.as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    {
        let dim = Dim::parse(d).ok_or_else(|| {
            invalid(
                "by",
                format!("unknown dimension `{d}` (user, team, app, provider, model)"),
            )
        })?;
        if !group_by.contains(&dim) {
            group_by.push(dim);
        }
    }
    let period = q
        .period
        .as_deref()
        .map(|p| {
            Period::parse(p).ok_or_else(|| {
                invalid(
                    "period",
                    format!("`period` must be hour, day or month, got `{p}`"),
                )
            })
        })
        .transpose()?;
    let since_ms = time_of("since", q.since.as_deref(), &tz)?;
    let until_ms = time_of("until", q.until.as_deref(), &tz)?;
    if let (Some(s), Some(u)) = (since_ms, until_ms)
        && u <= s
    {
        return Err(invalid("until", "`until` must be after `since`"));
    }
    Ok(ReportQuery {
        group_by,
        period,
        tz_offset_minutes: match tz {
            ReportZone::Fixed(m) => m,
            ReportZone::Named(..) => 0,
        },
        zone: Some(tz.clone()),
        since_ms,
        until_ms,
        user_id: q.user.clone(),
        team_id: q.team.clone(),
        app: q.app.clone(),
    })
}

fn csv_response(body: HttpBody, name: &str) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// A report as CSV: one row per group, then a `TOTAL` row.
fn report_csv(q: &ReportQuery, v: &ReportView) -> String {
    let mut header: Vec<String> = Vec::new();
    if q.period.is_some() {
        header.push("period".into());
    }
    header.extend(
        q.group_by
            .iter()
            .map(|d| d.column().trim_end_matches("_id").to_string()),
    );
    header.extend(
        [
            "calls",
            "success_calls",
            "prompt_tokens",
            "completion_tokens",
            "images",
            "cost",
            "provider_cost",
        ]
        .map(String::from),
    );
    let mut out = csv_line(&header);
    let mut line = |r: &la::ReportRowView, label: Option<&str>| {
        let mut c: Vec<String> = Vec::new();
        if q.period.is_some() {
            c.push(label.map_or_else(|| r.period.clone().unwrap_or_default(), str::to_string));
        }
        for d in &q.group_by {
            let k = d.column().trim_end_matches("_id");
            c.push(r.group.get(k).cloned().unwrap_or_default());
        }
        if q.period.is_none() && !q.group_by.is_empty() && label.is_some() {
            // No period column: mark the totals row in the first group column.
            c[0] = "TOTAL".into();
        }
        c.extend([
            r.calls.to_string(),
            r.success_calls.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
            r.images.to_string(),
            r.cost.clone(),
            r.provider_cost.clone(),
        ]);
        out.push_str(&csv_line(&c));
    };
    for r in &v.rows {
        line(r, None);
    }
    line(&v.totals, Some("TOTAL"));
    out
}

async fn report(st: &AppState, actor: &Actor, q: &ReportParams) -> Result<Response, AdminError> {
    let query = report_query(q)?;
    let csv = match q.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        other => {
            return Err(invalid(
                "format",
                format!("`format` must be json or csv, got `{other}`"),
            ));
        }
    };
    let view = la::usage_report(st.hub.store().as_ref(), actor, query.clone()).await?;
    if csv {
        return Ok(csv_response(
            HttpBody::from(report_csv(&query, &view)),
            "usage-report.csv",
        ));
    }
    Ok(Json(view).into_response())
}

/// Usage and cost grouped by user / team / app / provider / model and hour / day / month in a time
/// zone, with totals (a team admin: their team; JSON or `format=csv`).
#[utoipa::path(get, path = "/api/admin/usage/report", tag = "usage", params(ReportParams),
    responses((status = 200, body = ReportView, description = "JSON, or text/csv with format=csv"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn usage_report(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<ReportParams>,
) -> Result<Response, AdminError> {
    report(&st, &c.actor, &q).await
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordParams {
    /// Time zone of `since` / `until` dates (a UTC offset).
    pub tz: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
    pub app: Option<String>,
    /// Page size, 1 to 1000 (default 100). Records only.
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`. Records only.
    pub cursor: Option<String>,
}

fn record_filter(q: &RecordParams) -> Result<UsageFilter, AdminError> {
    let tz = tz_of(q.tz.as_deref())?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            c.split_once(':')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
                .filter(|(_, id)| !id.is_empty())
                .ok_or_else(|| invalid("cursor", "`cursor` is not a cursor this API returned"))
        })
        .transpose()?;
    Ok(UsageFilter {
        since_ms: time_of("since", q.since.as_deref(), &tz)?,
        until_ms: time_of("until", q.until.as_deref(), &tz)?,
        user_id: q.user.clone(),
        team_id: q.team.clone(),
        app: q.app.clone(),
        limit: None,
        after,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordsPage {
    pub records: Vec<UsageRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Usage records, oldest first, filtered and paged (a team admin: their team).
#[utoipa::path(get, path = "/api/admin/usage/records", tag = "usage", params(RecordParams),
    responses((status = 200, body = RecordsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn usage_records(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<RecordParams>,
) -> Result<Json<RecordsPage>, AdminError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit", "`limit` must be 1 to 1000"));
    }
    let mut f = record_filter(&q)?;
    f.limit = Some(limit + 1);
    let mut records = la::usage_records(st.hub.store().as_ref(), &c.actor, f).await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next_cursor = more
        .then(|| {
            records
                .last()
                .map(|r| format!("{}:{}", r.created_at_ms, r.id))
        })
        .flatten();
    Ok(Json(RecordsPage {
        records,
        next_cursor,
    }))
}

/// Records per page of the CSV export (each page one query; memory stays flat for any range).
const EXPORT_PAGE: u32 = 2000;

/// Usage records as CSV (RFC 4180, formula cells neutralised), streamed page by page.
#[utoipa::path(get, path = "/api/admin/usage/export", tag = "usage", params(RecordParams),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn usage_export(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<RecordParams>,
) -> Result<Response, AdminError> {
    if q.limit.is_some() || q.cursor.is_some() {
        return Err(invalid(
            "limit",
            "the export has every matching record; `limit` and `cursor` are for /usage/records",
        ));
    }
    let f = la::scoped_filter(&c.actor, record_filter(&q)?)?;
    let store = st.hub.store().clone();
    // State: (filter for the next page, header written, finished).
    let pages = futures::stream::unfold((f, false, false), move |(mut f, started, done)| {
        let store = store.clone();
        async move {
            if done {
                return None;
            }
            let mut chunk = String::new();
            if !started {
                chunk.push_str(&csv_line(EXPORT_HEADER));
            }
            f.limit = Some(EXPORT_PAGE);
            match store.usage_records(&f).await {
                Ok(rows) => {
                    for r in &rows {
                        chunk.push_str(&export_line(r));
                    }
                    let last = rows.len() < EXPORT_PAGE as usize;
                    f.after = rows.last().map(|r| (r.created_at_ms, r.id.clone()));
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)),
                        (f, true, last),
                    ))
                }
                Err(e) => {
                    // The status is already sent: end the body with an error, so the client
                    // sees a broken transfer rather than a short file that looks complete.
                    tracing::error!(error = %e, "usage export failed mid-stream");
                    Some((
                        Err(std::io::Error::other("usage export failed")),
                        (f, true, true),
                    ))
                }
            }
        }
    });
    Ok(csv_response(HttpBody::from_stream(pages), "usage.csv"))
}

// ---------------------------------------------------------------------------------------------
// the caller's own

/// The caller's quota (the account their key draws on: its team's, else their own): total
/// granted, used, remaining, and days left at the last 30 days' spend.
#[utoipa::path(get, path = "/api/me/quota", tag = "me",
    responses((status = 200, body = Object, description = "{total, used, remaining, estimatedDaysRemaining}"), (status = 401, body = ErrorBody)))]
pub async fn my_quota(State(st): State<AppState>, c: Caller) -> Result<Json<Quota>, AdminError> {
    let acc = la::own_account(&c.actor);
    let view = la::balance_of(st.hub.store().as_ref(), &st.hub.billing(), &acc).await?;
    Ok(Json(view.quota))
}

/// The caller's own usage report (same parameters as the admin report; `user` and `team` are
/// the caller's whatever their role).
#[utoipa::path(get, path = "/api/me/usage/report", tag = "me", params(ReportParams),
    responses((status = 200, body = ReportView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn my_usage_report(
    State(st): State<AppState>,
    c: Caller,
    Query(q): Query<ReportParams>,
) -> Result<Response, AdminError> {
    let own = Actor {
        role: hub_core::auth::Role::Member,
        ..c.actor.clone()
    };
    report(&st, &own, &q).await
}
