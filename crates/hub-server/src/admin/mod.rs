//! The admin API (`/api/admin/*`), the caller's own keys and usage (`/api/me/*`), and the OpenAPI
//! document (`/api/openapi.json`) generated from the handlers' annotations: a route registered
//! here is in the document by construction.

pub mod auth; // Caller / AdminCaller extractors, hub-format errors, JSON body and query extractors
pub mod billing; // prices, credits, billing settings, usage reports / records / CSV; /api/me quota
pub mod config; // providers, credentials, audit log
pub mod iam; // teams, users, keys, usage; /api/me

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "AIGNE Hub admin API", description = "Administration of AIGNE Hub: providers, credentials, teams, users, API keys, prices, credits, billing settings, usage reports and the audit log. Authenticate with `Authorization: Bearer <API key>`; errors are `{\"error\":{\"message\",\"type\"}}`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The documented routes: `/api/*` and the operational `GET /metrics`.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(iam::list_teams, iam::create_team))
        .routes(routes!(iam::list_users, iam::create_user))
        .routes(routes!(iam::update_user))
        .routes(routes!(iam::list_keys, iam::create_key))
        .routes(routes!(iam::revoke_key))
        .routes(routes!(iam::set_key_policy))
        .routes(routes!(iam::list_usage))
        .routes(routes!(iam::my_keys, iam::create_my_key))
        .routes(routes!(iam::revoke_my_key))
        .routes(routes!(iam::my_usage))
        .routes(routes!(config::list_providers))
        .routes(routes!(config::put_provider, config::delete_provider))
        .routes(routes!(
            config::get_provider_timeouts,
            config::put_provider_timeouts
        ))
        .routes(routes!(config::list_credentials, config::create_credential))
        .routes(routes!(
            config::update_credential,
            config::delete_credential
        ))
        .routes(routes!(config::test_credential))
        .routes(routes!(config::list_audit))
        .routes(routes!(crate::observability::health))
        .routes(routes!(crate::observability::metrics))
        .routes(routes!(billing::list_prices, billing::set_price))
        .routes(routes!(billing::disable_price))
        .routes(routes!(billing::reprice))
        .routes(routes!(billing::grant_credits))
        .routes(routes!(billing::adjust_credits))
        .routes(routes!(billing::credit_balance))
        .routes(routes!(billing::credit_entries))
        .routes(routes!(billing::get_billing, billing::update_billing))
        .routes(routes!(billing::usage_report))
        .routes(routes!(billing::usage_records))
        .routes(routes!(billing::usage_export))
        .routes(routes!(billing::my_quota))
        .routes(routes!(billing::my_usage_report))
}

/// The OpenAPI document of every `/api` route registered here.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// The admin routes, plus `/api/openapi.json`.
pub fn router() -> Router<AppState> {
    let (router, doc) = documented().split_for_parts();
    // Kept as its JSON, not as the document: the tree of schemas is ~1.6 MB of live heap for the
    // life of the process (heaptrack, BENCHMARKS.md), its text a fraction of that, and a request
    // no longer clones the tree to serialise it.
    let json = serde_json::to_vec(&doc)
        .map(axum::body::Bytes::from)
        .inspect_err(
            |e| tracing::error!(error = %e, "the OpenAPI document could not be serialised"),
        )
        .ok();
    drop(doc);
    router.route(
        "/api/openapi.json",
        get(move || {
            let json = json.clone();
            async move {
                match json {
                    Some(json) => {
                        ([(header::CONTENT_TYPE, "application/json")], json).into_response()
                    }
                    None => auth::AdminError(hub_core::HubError::internal(
                        "the OpenAPI document is unavailable",
                    ))
                    .into_response(),
                }
            }
        }),
    )
}

/// After a change through this process: reload now, so it holds for the next request here
/// (a revoked key stops working immediately). Other processes notice within a second.
pub(crate) async fn applied(st: &AppState) {
    if let Err(e) = st.hub.reload_if_changed().await {
        tracing::error!(error = %e, "reload after an admin change failed; keeping the previous configuration");
    }
}
