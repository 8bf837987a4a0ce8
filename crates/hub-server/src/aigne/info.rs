//! The probes AIGNE clients make: discovery (`/__blocklet__.js`), the model catalog
//! (`/api/ai/models`), availability (`/api/v2/status`) and the caller's account
//! (`/api/user/info`). Pure renderers.

use hub_core::types::{ModelInfo, ModelType};
use hub_core::{ErrorKind, HubError};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::wire::error_message;

/// The original hub's blocklet DID: `@aigne/aigne-hub` finds the hub's mount point by it.
pub const AIGNE_HUB_DID: &str = "z8ia3xzq2tMq8CRHfaXj1BTYJyYnEcHbqP8cJ";

/// `/__blocklet__.js?type=json` of a standalone hub: one component, the hub itself, mounted at `/`.
pub fn blocklet_json(version: &str) -> Value {
    json!({
        "appName": "AIGNE Hub",
        "appDescription": "A self-hosted AI gateway",
        "prefix": "/",
        "version": version,
        "componentMountPoints": [{
            "title": "AIGNE Hub",
            "name": "ai-kit",
            "did": AIGNE_HUB_DID,
            "version": version,
            "mountPoint": "/",
            "status": "running",
        }],
    })
}

/// The same as a script (what a browser loads without `type=json`).
pub fn blocklet_js(version: &str) -> String {
    format!("window.blocklet = {};\n", blocklet_json(version))
}

/// Which models `/api/ai/models?type=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFilter {
    /// No `type`: every model.
    All,
    Only(ModelType),
    /// A type this hub serves no models of (`video`, for one): an empty list.
    Unserved,
}

/// `?type=` of `/api/ai/models`: `chat`, `image` (`image_generation`), `embedding`.
pub fn model_type(q: Option<&str>) -> TypeFilter {
    match q {
        None | Some("") => TypeFilter::All,
        Some("chat" | "chatCompletion") => TypeFilter::Only(ModelType::Chat),
        Some("image" | "image_generation" | "imageGeneration") => {
            TypeFilter::Only(ModelType::Image)
        }
        Some("embedding") => TypeFilter::Only(ModelType::Embedding),
        Some(_) => TypeFilter::Unserved,
    }
}

/// Per-token rates of one model, as decimal strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates {
    pub input: String,
    pub output: String,
}

impl Rates {
    /// No credits are charged (internal billing): the caller pays nothing per token.
    pub fn free() -> Rates {
        Rates {
            input: "0".into(),
            output: "0".into(),
        }
    }
}

/// `/api/ai/models`: the schema `@aigne/aigne-hub` validates — rates as strings and `status` as an
/// object, in every billing mode (the original's billing-off catalog fails the client's check).
/// A model `rates` has no rates for (unpriced in credits mode: it cannot be billed) is left out.
pub fn render_models(models: &[ModelInfo], rates: impl Fn(&ModelInfo) -> Option<Rates>) -> Value {
    Value::Array(
        models
            .iter()
            .filter_map(|m| {
                let r = rates(m)?;
                let provider = hub_core::providers::ProviderKind::from_name(&m.provider);
                Some(json!({
                    "key": m.id,
                    "model": m.model,
                    "type": m.model_type.as_str(),
                    "provider": m.provider,
                    "providerDisplayName": provider.map(|p| p.display_name()).unwrap_or(m.provider.as_str()),
                    "input_credits_per_token": r.input,
                    "output_credits_per_token": r.output,
                    "modelMetadata": Value::Null,
                    "status": {"available": true},
                }))
            })
            .collect(),
    )
}

/// `/api/v2/status`: `{available:true}`, or why not with the status it would have answered (a
/// credit error as the original's: type `NOT_ENOUGH` and the buy `link`).
pub fn render_status(result: &Result<(), HubError>, link: Option<&str>) -> Value {
    match result {
        Ok(()) => json!({"available": true}),
        Err(e) if e.kind == ErrorKind::InsufficientCredits => {
            let mut v = json!({
                "available": false,
                "error": error_message(e),
                "code": e.status(),
                "type": "NOT_ENOUGH",
            });
            if let (Some(l), Some(o)) = (link, v.as_object_mut()) {
                o.insert("link".into(), json!(l));
            }
            v
        }
        Err(e) => json!({
            "available": false,
            "error": error_message(e),
            "code": e.status(),
            "type": e.code.as_deref().unwrap_or_else(|| e.class_name()),
        }),
    }
}

/// What `/api/user/info` knows of the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInfo {
    pub did: String,
    pub full_name: Option<String>,
}

/// The caller's credit standing (credits mode), in credits.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditStanding {
    /// Available now.
    pub balance: Decimal,
    /// Everything ever granted.
    pub total: Decimal,
    /// Grants received (starter credits included).
    pub grant_count: u64,
    /// Held for calls in flight.
    pub pending: Decimal,
    pub payment_link: Option<String>,
    pub prefix: String,
}

/// `/api/user/info` (`UserInfoResult`): with credit billing off there is no balance and no
/// payment link; with it on, the balance (amounts as decimal strings, as the original converts
/// them) and where to buy more.
pub fn render_user_info(user: &UserInfo, credits: Option<&CreditStanding>) -> Value {
    let mut u = serde_json::Map::new();
    u.insert("did".into(), json!(user.did));
    if let Some(n) = &user.full_name {
        u.insert("fullName".into(), json!(n));
    }
    match credits {
        None => json!({
            "user": Value::Object(u),
            "enableCredit": false,
            "creditBalance": Value::Null,
            "paymentLink": Value::Null,
            "profileLink": Value::Null,
            "creditPrefix": "",
        }),
        Some(c) => json!({
            "user": Value::Object(u),
            "enableCredit": true,
            "creditBalance": {
                "balance": c.balance.normalize().to_string(),
                "total": c.total.normalize().to_string(),
                "grantCount": c.grant_count,
                "pendingCredit": c.pending.normalize().to_string(),
            },
            "paymentLink": c.payment_link,
            "profileLink": Value::Null,
            "creditPrefix": c.prefix,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_the_hub_component() {
        let v = blocklet_json("1.2.3");
        let c = &v["componentMountPoints"][0];
        assert_eq!(c["did"], json!(AIGNE_HUB_DID));
        assert_eq!(c["mountPoint"], json!("/"));
        assert!(blocklet_js("1").starts_with("window.blocklet = {"));
    }

    /// Golden: one catalog entry as `@aigne/aigne-hub`'s zod schema requires it.
    #[test]
    fn models_have_string_rates_and_object_status() {
        let m = ModelInfo {
            id: "openai/gpt-4o-mini".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            model_type: ModelType::Chat,
            display_name: None,
        };
        let v = render_models(std::slice::from_ref(&m), |_| Some(Rates::free()));
        assert_eq!(
            v,
            json!([{
                "key": "openai/gpt-4o-mini",
                "model": "gpt-4o-mini",
                "type": "chat",
                "provider": "openai",
                "providerDisplayName": "OpenAI",
                "input_credits_per_token": "0",
                "output_credits_per_token": "0",
                "modelMetadata": null,
                "status": {"available": true},
            }])
        );
        assert_eq!(render_models(&[m], |_| None), json!([]));
        assert_eq!(
            model_type(Some("image_generation")),
            TypeFilter::Only(ModelType::Image)
        );
        assert_eq!(model_type(None), TypeFilter::All);
        assert_eq!(model_type(Some("video")), TypeFilter::Unserved);
    }

    #[test]
    fn status_shapes() {
        assert_eq!(render_status(&Ok(()), None), json!({"available": true}));
        let e = HubError::new(ErrorKind::Unavailable, "No providers available")
            .with_code("no_providers");
        assert_eq!(
            render_status(&Err(e), Some("https://pay")),
            json!({"available": false, "error": "No providers available", "code": 503, "type": "no_providers"})
        );
        let e = HubError::new(ErrorKind::InsufficientCredits, "buy credits");
        assert_eq!(
            render_status(&Err(e), Some("https://pay")),
            json!({"available": false, "error": "buy credits", "code": 402, "type": "NOT_ENOUGH", "link": "https://pay"})
        );
    }

    #[test]
    fn user_info_without_credits() {
        let user = UserInfo {
            did: "u1".into(),
            full_name: Some("Owner".into()),
        };
        assert_eq!(
            render_user_info(&user, None),
            json!({"user":{"did":"u1","fullName":"Owner"},"enableCredit":false,"creditBalance":null,
                   "paymentLink":null,"profileLink":null,"creditPrefix":""})
        );
        let standing = CreditStanding {
            balance: Decimal::new(12_5000, 4),
            total: Decimal::from(20),
            grant_count: 2,
            pending: Decimal::ZERO,
            payment_link: Some("https://pay".into()),
            prefix: "$".into(),
        };
        assert_eq!(
            render_user_info(&user, Some(&standing)),
            json!({"user":{"did":"u1","fullName":"Owner"},"enableCredit":true,
                   "creditBalance":{"balance":"12.5","total":"20","grantCount":2,"pendingCredit":"0"},
                   "paymentLink":"https://pay","profileLink":null,"creditPrefix":"$"})
        );
    }
}
