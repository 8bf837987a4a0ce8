//! What the AIGNE routes share: model strings, usage and tool-call shapes, error bodies, and small
//! typed accessors over JSON objects that name the offending parameter. Pure.

use hub_core::router::{ModelRef, parse_model};
use hub_core::types::{ToolCall, Usage};
use hub_core::{ErrorKind, HubError};
use serde_json::{Map, Value, json};

/// The original's default chat model (`DEFAULT_MODEL` in `routes/v2.ts`).
pub const DEFAULT_CHAT_MODEL: &str = "openai/gpt-5-mini";
/// The original's default image model on `/api/v2/image` and `/image/generations`.
pub const DEFAULT_IMAGE_MODEL: &str = "openai/dall-e-2";

/// What a call cost the caller, when the hub knows (credit billing). Absent fields are left out
/// of the response: the client's schema has them optional, and a number we do not know is never
/// made up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credits {
    /// Credits charged for this call.
    pub amount: Option<f64>,
    /// `$`, `€` or `¥` (the only values `@aigne/aigne-hub` accepts).
    pub prefix: Option<String>,
}

/// Checks a model string of the invoke protocol: `provider/model` with a known provider, or a
/// bare model name the router resolves (as the original rotates bare names). A string that looks
/// like `prefix/model` with an unknown provider is the original's 400 `Invalid model format`.
pub fn check_model(model: &str, param: &str) -> Result<String, HubError> {
    let m = model.trim();
    match parse_model(m) {
        ModelRef::Pinned { .. } => Ok(m.to_string()),
        ModelRef::Bare(b) if !b.is_empty() && !b.contains('/') => Ok(m.to_string()),
        ModelRef::Bare(_) => Err(HubError::invalid_param(
            param,
            format!("Invalid model format: {m}, should be {{provider}}/{{model}}"),
        )),
    }
}

/// `provider/model` when the caller pinned the provider (the original's `modelWithProvider`).
/// A bare name may be served by any of several providers, so it has none to report up front.
pub fn model_with_provider(model: &str) -> Option<String> {
    match parse_model(model) {
        ModelRef::Pinned { provider, model } => Some(format!("{}/{model}", provider.name())),
        ModelRef::Bare(_) => None,
    }
}

/// The model id without its provider prefix (`openai/dall-e-3` -> `dall-e-3`).
pub fn model_name(model: &str) -> String {
    match parse_model(model) {
        ModelRef::Pinned { model, .. } => model.to_string(),
        ModelRef::Bare(m) => m.to_string(),
    }
}

/// `usage` of a ChatModelOutput (`chatModelOutputUsageSchema` in `@aigne/core`): token counts as
/// numbers, credits and prefix only when known, and the hub's call id (`modelCallId`).
pub fn usage_json(u: &Usage, call_id: Option<&str>, credits: &Credits) -> Value {
    let mut m = Map::new();
    m.insert("inputTokens".into(), json!(u.prompt_tokens));
    m.insert("outputTokens".into(), json!(u.completion_tokens));
    m.insert(
        "cacheCreationInputTokens".into(),
        json!(u.cache_write_tokens),
    );
    m.insert("cacheReadInputTokens".into(), json!(u.cache_read_tokens));
    if let Some(a) = credits.amount {
        m.insert("aigneHubCredits".into(), json!(a));
    }
    if let Some(p) = credits
        .prefix
        .as_deref()
        .filter(|p| matches!(*p, "$" | "€" | "¥"))
    {
        m.insert("creditPrefix".into(), json!(p));
    }
    if let Some(id) = call_id {
        m.insert("modelCallId".into(), json!(id));
    }
    Value::Object(m)
}

/// Tool-call arguments as the framework carries them: an object. Arguments that are not a JSON
/// object are passed on as the model wrote them, so the client's schema check fails loudly rather
/// than the tool running with arguments the model never gave.
pub fn arguments_value(args: &str) -> Value {
    if args.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(args.to_string()),
    }
}

/// Tool calls, with `arguments` as an object (invoke protocol) or as JSON text (legacy).
pub fn tool_calls_json(calls: &[ToolCall], object_arguments: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let arguments = if object_arguments {
                    arguments_value(&c.arguments)
                } else {
                    json!(c.arguments)
                };
                json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
            })
            .collect(),
    )
}

/// The media type of base64 image bytes, from their first bytes.
pub fn sniff_image_mime(b64: &str) -> Option<&'static str> {
    let t = b64.trim_start();
    [
        ("iVBORw0KGgo", "image/png"),
        ("/9j/", "image/jpeg"),
        ("R0lGOD", "image/gif"),
        ("UklGR", "image/webp"),
    ]
    .into_iter()
    .find(|(prefix, _)| t.starts_with(prefix))
    .map(|(_, mime)| mime)
}

/// A framework file object for an image the hub got back: `{type:"url", url}` for a remote URL,
/// `{type:"file", data, mimeType}` for inline bytes (a `data:` URL or raw base64).
pub fn file_object(image: &str) -> Value {
    if let Some(rest) = image.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(mime) = meta.strip_suffix(";base64")
    {
        return json!({"type": "file", "data": data, "mimeType": mime});
    }
    if image.starts_with("http://") || image.starts_with("https://") {
        return json!({"type": "url", "url": image});
    }
    json!({"type": "file", "data": image, "mimeType": sniff_image_mime(image).unwrap_or("image/png")})
}

/// The error body of the `/api` routes: `{"error":{"message","type"}}`. A missing or wrong key
/// reads "User not authenticated", as the original says it; a credit error is the original's
/// `CreditError`: type `NOT_ENOUGH`, the buy `link` when the hub has one, and a `timestamp`.
pub fn error_body(e: &HubError, link: Option<&str>) -> Value {
    error_body_at(e, link, hub_core::hub::now_ms())
}

/// `error_body` at a given time (milliseconds since the epoch).
pub fn error_body_at(e: &HubError, link: Option<&str>, now_ms: i64) -> Value {
    let message = if e.kind == ErrorKind::Unauthenticated {
        format!("User not authenticated: {}", e.message)
    } else {
        e.message.clone()
    };
    if e.kind == ErrorKind::InsufficientCredits {
        let mut o = Map::new();
        o.insert("message".into(), json!(message));
        o.insert("type".into(), json!("NOT_ENOUGH"));
        if let Some(l) = link {
            o.insert("link".into(), json!(l));
        }
        o.insert("timestamp".into(), json!(rfc3339(now_ms)));
        return json!({"error": Value::Object(o)});
    }
    let kind = e.code.as_deref().unwrap_or_else(|| e.class_name());
    json!({"error": {"message": message, "type": kind}})
}

/// `2026-11-28T03:14:02.123Z` for milliseconds since the epoch (UTC, proleptic Gregorian).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        tod / 3600,
        (tod % 3600) / 60,
        tod % 60
    )
}

/// The message a stream's error event carries.
pub fn error_message(e: &HubError) -> String {
    match error_body(e, None)
        .pointer("/error/message")
        .and_then(Value::as_str)
    {
        Some(m) => m.to_string(),
        None => e.message.clone(),
    }
}

/// Typed access to the fields of a JSON object, naming the offending parameter on error.
pub struct Fields<'a> {
    pub obj: &'a Map<String, Value>,
    /// Path of this object in the body (`input.modelOptions`), for error params.
    pub path: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>, path: &'a str) -> Fields<'a> {
        Fields { obj, path }
    }

    /// The full parameter path of `key` in this object.
    pub fn param(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// The first of `keys` present (camelCase first, then its snake_case alias).
    fn first<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &'a Value)> {
        keys.iter().find_map(|k| self.present(k).map(|v| (*k, v)))
    }

    pub fn str(&self, keys: &[&str]) -> Result<Option<&'a str>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.as_str())),
            Some((k, _)) => Err(HubError::invalid_param(
                &self.param(k),
                format!("`{}` must be a string", self.param(k)),
            )),
        }
    }

    pub fn bool(&self, keys: &[&str]) -> Result<Option<bool>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((k, _)) => Err(HubError::invalid_param(
                &self.param(k),
                format!("`{}` must be a boolean", self.param(k)),
            )),
        }
    }

    /// A number within `[min, max]`.
    pub fn f64_in(&self, keys: &[&str], min: f64, max: f64) -> Result<Option<f64>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => match v.as_f64() {
                Some(n) if n >= min && n <= max => Ok(Some(n)),
                _ => Err(HubError::invalid_param(
                    &self.param(k),
                    format!("`{}` must be a number from {min} to {max}", self.param(k)),
                )),
            },
        }
    }

    /// A positive integer no larger than `max`.
    pub fn u32_in(&self, keys: &[&str], min: u32, max: u32) -> Result<Option<u32>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => match v.as_u64() {
                Some(n) if n >= u64::from(min) && n <= u64::from(max) => Ok(Some(n as u32)),
                _ => Err(HubError::invalid_param(
                    &self.param(k),
                    format!("`{}` must be an integer from {min} to {max}", self.param(k)),
                )),
            },
        }
    }

    pub fn i64(&self, keys: &[&str]) -> Result<Option<i64>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => v.as_i64().map(Some).ok_or_else(|| {
                HubError::invalid_param(
                    &self.param(k),
                    format!("`{}` must be an integer", self.param(k)),
                )
            }),
        }
    }

    pub fn value<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &'a Value)> {
        self.first(keys)
    }

    /// A nested object (or `None` when absent or null).
    pub fn object(&self, keys: &[&str]) -> Result<Option<&'a Map<String, Value>>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((_, Value::Object(o))) => Ok(Some(o)),
            Some((k, _)) => Err(HubError::invalid_param(
                &self.param(k),
                format!("`{}` must be an object", self.param(k)),
            )),
        }
    }

    pub fn array(&self, keys: &[&str]) -> Result<Option<&'a Vec<Value>>, HubError> {
        match self.first(keys) {
            None => Ok(None),
            Some((_, Value::Array(a))) => Ok(Some(a)),
            Some((k, _)) => Err(HubError::invalid_param(
                &self.param(k),
                format!("`{}` must be an array", self.param(k)),
            )),
        }
    }

    /// `stop`: a string or an array of strings.
    pub fn stop(&self) -> Result<Vec<String>, HubError> {
        match self.first(&["stop"]) {
            None => Ok(Vec::new()),
            Some((_, Value::String(s))) => Ok(vec![s.clone()]),
            Some((_, Value::Array(a))) if a.iter().all(Value::is_string) => Ok(a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()),
            Some((k, _)) => Err(HubError::invalid_param(
                &self.param(k),
                "stop must be a string or an array of strings",
            )),
        }
    }
}

/// Parses a body that must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, HubError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(HubError::invalid("The request body must be a JSON object.")),
        Err(e) => Err(HubError::invalid(format!(
            "We could not parse the JSON body of your request. ({e}) The API expects a JSON payload."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_strings() {
        assert_eq!(
            check_model(" openai/gpt-4o-mini ", "m").ok().as_deref(),
            Some("openai/gpt-4o-mini")
        );
        assert_eq!(
            check_model("gpt-4o-mini", "m").ok().as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            check_model("gpt-oss:20b", "m").ok().as_deref(),
            Some("gpt-oss:20b")
        );
        for bad in ["nosuch/model", "", "openai/"] {
            let e = check_model(bad, "input.modelOptions.model").err();
            assert!(
                e.as_ref().is_some_and(
                    |e| e.status() == 400 && e.message.starts_with("Invalid model format")
                ),
                "{bad}: {e:?}"
            );
        }
        assert_eq!(
            model_with_provider("google:gemini-2.5-flash").as_deref(),
            Some("google/gemini-2.5-flash")
        );
        assert_eq!(model_with_provider("gpt-4o"), None);
        assert_eq!(model_name("openai/dall-e-3"), "dall-e-3");
    }

    #[test]
    fn usage_leaves_out_unknown_credits_and_foreign_prefixes() {
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cache_read_tokens: 4,
            ..Usage::default()
        };
        let v = usage_json(&u, Some("id1"), &Credits::default());
        assert_eq!(
            v,
            json!({"inputTokens":10,"outputTokens":3,"cacheCreationInputTokens":0,"cacheReadInputTokens":4,"modelCallId":"id1"})
        );
        let v = usage_json(
            &u,
            None,
            &Credits {
                amount: Some(0.25),
                prefix: Some("credits".into()),
            },
        );
        assert_eq!(v["aigneHubCredits"], json!(0.25));
        assert!(v.get("creditPrefix").is_none() && v.get("modelCallId").is_none());
        let v = usage_json(
            &u,
            None,
            &Credits {
                amount: None,
                prefix: Some("€".into()),
            },
        );
        assert_eq!(v["creditPrefix"], json!("€"));
    }

    #[test]
    fn arguments_become_objects() {
        assert_eq!(
            arguments_value(r#"{"city":"Paris"}"#),
            json!({"city":"Paris"})
        );
        assert_eq!(arguments_value(""), json!({}));
        assert_eq!(arguments_value("{oops"), json!("{oops"));
        assert_eq!(arguments_value("[1]"), json!("[1]"));
    }

    #[test]
    fn images_become_file_objects() {
        assert_eq!(
            file_object("data:image/jpeg;base64,/9j/AA"),
            json!({"type":"file","data":"/9j/AA","mimeType":"image/jpeg"})
        );
        assert_eq!(
            file_object("https://x/y.png"),
            json!({"type":"url","url":"https://x/y.png"})
        );
        assert_eq!(
            file_object("iVBORw0KGgoAAA"),
            json!({"type":"file","data":"iVBORw0KGgoAAA","mimeType":"image/png"})
        );
        assert_eq!(sniff_image_mime("UklGRxx"), Some("image/webp"));
        assert_eq!(sniff_image_mime("AAAA"), None);
    }

    #[test]
    fn errors_render_in_the_hub_shape() {
        let e = HubError::unauthenticated("Incorrect API key provided.");
        assert_eq!(
            error_body(&e, None),
            json!({"error":{"message":"User not authenticated: Incorrect API key provided.","type":"invalid_api_key"}})
        );
        let e = HubError::invalid("bad");
        assert_eq!(
            error_body(&e, Some("https://x")),
            json!({"error":{"message":"bad","type":"invalid_request"}})
        );
        let e = HubError::new(ErrorKind::InsufficientCredits, "buy some credits");
        assert_eq!(
            error_body_at(&e, Some("https://pay/x"), 1_764_299_642_123),
            json!({"error":{"message":"buy some credits","type":"NOT_ENOUGH",
                   "link":"https://pay/x","timestamp":"2025-11-28T03:14:02.123Z"}})
        );
        assert_eq!(
            error_body_at(&e, None, 0)["error"]["timestamp"],
            json!("1970-01-01T00:00:00.000Z")
        );
    }
}
