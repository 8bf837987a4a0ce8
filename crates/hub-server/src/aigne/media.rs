//! Images and embeddings on the AIGNE routes:
//! - `POST /api/v2/image`: the invoke protocol (`{input:{prompt, n, modelOptions:{model,...}}}`),
//!   answered with framework file objects (`images:[{type:"file"|"url",...}]`);
//! - `POST /api/v2/image/generations`: the flat body (`{model, prompt, n, size, ...}`), answered
//!   with `images[]`, `data[]` (`base64`/`b64_json`/`b64Json`/`url`), `model`, `usage`;
//! - `POST /api/v2/embeddings`: both the invoke shape and `{model, input}` (the original's #527
//!   broke the latter; both work here).
//!
//! Unlike the original's Joi schema, `quality` and `style` are passed on, not dropped. Image edits
//! (`image`) are refused with a 400: the hub has no edit endpoint. Pure functions.

use hub_core::HubError;
use hub_core::types::{
    EmbeddingsRequest, EmbeddingsResponse, GeneratedImage, ImagesRequest, ImagesResponse,
};
use serde_json::{Map, Value, json};

use super::wire::{
    Credits, DEFAULT_IMAGE_MODEL, Fields, check_model, model_name, model_with_provider,
    parse_object, sniff_image_mime, usage_json,
};

/// A parsed image call.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCall {
    pub request: ImagesRequest,
    pub model_with_provider: Option<String>,
}

/// The framework's `responseFormat` for images (`base64` | `url`), or OpenAI's names.
fn image_response_format(f: &Fields<'_>) -> Result<Option<String>, HubError> {
    match f.str(&["responseFormat", "response_format"])? {
        None => Ok(None),
        Some("base64" | "b64_json" | "file") => Ok(Some("b64_json".into())),
        Some("url") => Ok(Some("url".into())),
        Some(other) => Err(HubError::invalid_param(
            &f.param("responseFormat"),
            format!("Invalid responseFormat `{other}`; expected base64 or url."),
        )),
    }
}

fn refuse_edits(f: &Fields<'_>) -> Result<(), HubError> {
    let present = match f.value(&["image"]) {
        None => false,
        Some((_, Value::String(s))) => !s.is_empty(),
        Some((_, Value::Array(a))) => !a.is_empty(),
        Some(_) => true,
    };
    if present {
        return Err(HubError::invalid_param(
            &f.param("image"),
            "Image editing (`image`) is not supported by this hub; send a prompt only.",
        ));
    }
    Ok(())
}

/// Options read from either the input itself or its `modelOptions` (the framework passes size,
/// quality and style in either place).
fn image_request(
    model: String,
    prompt: &str,
    f: &Fields<'_>,
    mo: Option<&Fields<'_>>,
) -> Result<ImagesRequest, HubError> {
    let pick_str = |keys: &[&str]| -> Result<Option<String>, HubError> {
        if let Some(v) = f.str(keys)? {
            return Ok(Some(v.to_string()));
        }
        match mo {
            Some(mo) => Ok(mo.str(keys)?.map(str::to_string)),
            None => Ok(None),
        }
    };
    let n = match f.u32_in(&["n"], 1, 10)? {
        Some(n) => Some(n),
        None => match mo {
            Some(mo) => mo.u32_in(&["n"], 1, 10)?,
            None => None,
        },
    };
    let response_format = match image_response_format(f)? {
        Some(r) => Some(r),
        None => match mo {
            Some(mo) => image_response_format(mo)?,
            None => None,
        },
    };
    if prompt.trim().is_empty() {
        return Err(HubError::invalid_param(
            &f.param("prompt"),
            "`prompt` must not be empty",
        ));
    }
    Ok(ImagesRequest {
        model,
        prompt: prompt.to_string(),
        n,
        size: pick_str(&["size"])?,
        quality: pick_str(&["quality"])?,
        style: pick_str(&["style"])?,
        response_format,
        user: pick_str(&["user"])?,
        extra: Map::new(),
    })
}

/// `POST /api/v2/image` (invoke protocol).
pub fn parse_image_invoke(body: &[u8]) -> Result<ImageCall, HubError> {
    let root = parse_object(body)?;
    let rf = Fields::new(&root, "");
    let input = rf
        .object(&["input"])?
        .ok_or_else(|| HubError::invalid_param("input", "`input` is required"))?;
    let f = Fields::new(input, "input");
    refuse_edits(&f)?;
    let mo_obj = f.object(&["modelOptions"])?;
    let mo = mo_obj.map(|o| Fields::new(o, "input.modelOptions"));
    let (model, param) = if let Some(m) = mo
        .as_ref()
        .map(|mo| mo.str(&["model"]))
        .transpose()?
        .flatten()
    {
        (m, "input.modelOptions.model")
    } else if let Some(m) = f.str(&["model"])? {
        (m, "input.model")
    } else if let Some(m) = rf.str(&["model"])? {
        (m, "model")
    } else {
        (DEFAULT_IMAGE_MODEL, "input.modelOptions.model")
    };
    let model = check_model(model, param)?;
    let prompt = f
        .str(&["prompt"])?
        .ok_or_else(|| HubError::invalid_param("input.prompt", "`input.prompt` is required"))?;
    let request = image_request(model.clone(), prompt, &f, mo.as_ref())?;
    Ok(ImageCall {
        request,
        model_with_provider: model_with_provider(&model),
    })
}

/// `POST /api/v2/image/generations` (flat body).
pub fn parse_image_flat(body: &[u8]) -> Result<ImageCall, HubError> {
    let root = parse_object(body)?;
    let f = Fields::new(&root, "");
    refuse_edits(&f)?;
    let model = check_model(f.str(&["model"])?.unwrap_or(DEFAULT_IMAGE_MODEL), "model")?;
    let prompt = f
        .str(&["prompt"])?
        .ok_or_else(|| HubError::invalid_param("prompt", "`prompt` is required"))?;
    let request = image_request(model.clone(), prompt, &f, None)?;
    Ok(ImageCall {
        request,
        model_with_provider: model_with_provider(&model),
    })
}

/// Extracts the model of an image or embeddings body for usage records, without failing.
pub fn peek_model(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    ["/input/modelOptions/model", "/input/model", "/model"]
        .iter()
        .find_map(|p| v.pointer(p).and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

fn image_file(img: &GeneratedImage) -> Option<Value> {
    if let Some(b64) = &img.b64_json {
        return Some(
            json!({"type": "file", "data": b64, "mimeType": sniff_image_mime(b64).unwrap_or("image/png")}),
        );
    }
    img.url.as_ref().map(|u| super::wire::file_object(u))
}

fn image_usage(resp: &ImagesResponse, credits: &Credits) -> Value {
    let mut u = usage_json(&resp.usage, None, credits);
    if let Some(o) = u.as_object_mut() {
        o.remove("cacheCreationInputTokens");
        o.remove("cacheReadInputTokens");
    }
    u
}

/// The invoke answer: `{images:[file objects], usage, model, modelWithProvider}`.
pub fn render_image_invoke(resp: &ImagesResponse, call: &ImageCall, credits: &Credits) -> Value {
    let mut o = Map::new();
    o.insert(
        "images".into(),
        Value::Array(resp.data.iter().filter_map(image_file).collect()),
    );
    o.insert("usage".into(), image_usage(resp, credits));
    o.insert("model".into(), json!(resp.model));
    if let Some(m) = &call.model_with_provider {
        o.insert("modelWithProvider".into(), json!(m));
    }
    Value::Object(o)
}

/// The flat answer: `images` and `data` (the same list), the model name without provider, usage.
pub fn render_image_flat(resp: &ImagesResponse, call: &ImageCall, credits: &Credits) -> Value {
    let images: Vec<Value> = resp
        .data
        .iter()
        .map(|i| {
            let mut m = Map::new();
            if let Some(b) = &i.b64_json {
                m.insert("base64".into(), json!(b));
                m.insert("b64_json".into(), json!(b));
                m.insert("b64Json".into(), json!(b));
            }
            if let Some(u) = &i.url {
                m.insert("url".into(), json!(u));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "images": images,
        "data": images,
        "model": model_name(&call.request.model),
        "usage": image_usage(resp, credits),
    })
}

/// A parsed embeddings call.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsCall {
    pub request: EmbeddingsRequest,
    pub model_with_provider: Option<String>,
}

fn check_embedding_input(v: &Value, param: &str) -> Result<Value, HubError> {
    let ok = match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            !a.is_empty()
                && a.iter()
                    .all(|v| v.is_string() || v.is_number() || v.is_array())
        }
        _ => false,
    };
    if ok {
        Ok(v.clone())
    } else {
        Err(HubError::invalid_param(
            param,
            "the input must be a non-empty string, array of strings, or array of token arrays",
        ))
    }
}

/// `POST /api/v2/embeddings`: `{input:{input, modelOptions:{model}}}` (invoke) or `{model, input}`.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsCall, HubError> {
    let root = parse_object(body)?;
    let rf = Fields::new(&root, "");
    // The invoke shape nests everything under `input`; in the flat shape `input` is the texts.
    let nested = match root.get("input") {
        Some(Value::Object(o)) => Some(o),
        _ => None,
    };
    let f = match nested {
        Some(o) => Fields::new(o, "input"),
        None => Fields::new(&root, ""),
    };
    let mo = match nested {
        Some(_) => f
            .object(&["modelOptions"])?
            .map(|o| Fields::new(o, "input.modelOptions")),
        None => None,
    };
    let mut model = None;
    if let Some(mo) = &mo {
        model = mo.str(&["model"])?.map(|m| (m, "input.modelOptions.model"));
    }
    if model.is_none() && nested.is_some() {
        model = f.str(&["model"])?.map(|m| (m, "input.model"));
    }
    if model.is_none() {
        model = rf.str(&["model"])?.map(|m| (m, "model"));
    }
    let (model, param) = model.filter(|(m, _)| !m.trim().is_empty()).ok_or_else(|| {
        HubError::invalid_param(
            "model",
            "`model` is required (for example `openai/text-embedding-3-small`)",
        )
    })?;
    let model = check_model(model, param)?;
    let input = match nested {
        Some(_) => {
            let (k, v) = f.value(&["input", "texts", "text"]).ok_or_else(|| {
                HubError::invalid_param("input.input", "`input.input` is required")
            })?;
            check_embedding_input(v, &format!("input.{k}"))?
        }
        None => {
            let v = root
                .get("input")
                .filter(|v| !v.is_null())
                .ok_or_else(|| HubError::invalid_param("input", "`input` is required"))?;
            check_embedding_input(v, "input")?
        }
    };
    let dimensions = match f.u32_in(&["dimensions"], 1, 65_536)? {
        Some(d) => Some(d),
        None => match &mo {
            Some(m) => m.u32_in(&["dimensions"], 1, 65_536)?,
            None => None,
        },
    };
    let encoding_format = match f.str(&["encodingFormat", "encoding_format"])? {
        Some(e) => Some(e),
        None => match &mo {
            Some(m) => m.str(&["encodingFormat", "encoding_format"])?,
            None => None,
        },
    };
    if let Some(e) = encoding_format
        && e != "float"
        && e != "base64"
    {
        return Err(HubError::invalid_param(
            "encoding_format",
            "encoding_format must be float or base64",
        ));
    }
    Ok(EmbeddingsCall {
        request: EmbeddingsRequest {
            model: model.clone(),
            input,
            dimensions,
            encoding_format: encoding_format.map(str::to_string),
            user: f.str(&["user"])?.map(str::to_string),
            extra: Map::new(),
        },
        model_with_provider: model_with_provider(&model),
    })
}

/// `{data:[{object,index,embedding}], embeddings:[[...]], model, usage, modelWithProvider}`.
pub fn render_embeddings(
    resp: &EmbeddingsResponse,
    call: &EmbeddingsCall,
    credits: &Credits,
) -> Value {
    let mut usage = usage_json(&resp.usage, None, credits);
    if let Some(o) = usage.as_object_mut() {
        o.remove("cacheCreationInputTokens");
        o.remove("cacheReadInputTokens");
    }
    let mut o = Map::new();
    o.insert(
        "data".into(),
        Value::Array(
            resp.data
                .iter()
                .map(|e| json!({"object": "embedding", "index": e.index, "embedding": e.embedding}))
                .collect(),
        ),
    );
    o.insert(
        "embeddings".into(),
        Value::Array(resp.data.iter().map(|e| e.embedding.clone()).collect()),
    );
    o.insert("model".into(), json!(resp.model));
    o.insert("usage".into(), usage);
    if let Some(m) = &call.model_with_provider {
        o.insert("modelWithProvider".into(), json!(m));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::types::{Embedding, Usage};
    use proptest::prelude::*;

    #[test]
    fn parses_the_image_invoke_body() {
        let c = parse_image_invoke(
            br#"{"input":{"prompt":"a cat","n":2,"size":"512x512","outputFileType":"url",
                "modelOptions":{"model":"openai/dall-e-3","quality":"hd","style":"vivid"}},
                "agent":"$CHAT_MODEL","options":{"streaming":false}}"#,
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(c.request.model, "openai/dall-e-3");
        assert_eq!(c.request.n, Some(2));
        assert_eq!(c.request.size.as_deref(), Some("512x512"));
        assert_eq!(c.request.quality.as_deref(), Some("hd"));
        assert_eq!(c.request.style.as_deref(), Some("vivid"));
        assert_eq!(c.model_with_provider.as_deref(), Some("openai/dall-e-3"));
        let d = parse_image_invoke(br#"{"input":{"prompt":"x"}}"#).map(|c| c.request.model);
        assert_eq!(d.ok().as_deref(), Some(DEFAULT_IMAGE_MODEL));
    }

    #[test]
    fn parses_the_flat_image_body_keeping_quality_and_style() {
        let c = parse_image_flat(
            br#"{"model":"openai/dall-e-3","prompt":"a cat","n":1,"size":"1024x1024","response_format":"b64_json","quality":"hd","style":"natural"}"#,
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(c.request.response_format.as_deref(), Some("b64_json"));
        assert_eq!(c.request.quality.as_deref(), Some("hd"));
        assert_eq!(c.request.style.as_deref(), Some("natural"));
    }

    #[test]
    fn rejects_bad_image_bodies() {
        let cases: &[(&[u8], bool, &str)] = &[
            (
                br#"{"input":{"prompt":"x","image":["data:..."]}}"#,
                false,
                "input.image",
            ),
            (br#"{"input":{"n":1}}"#, false, "input.prompt"),
            (br#"{"input":{"prompt":"x","n":11}}"#, false, "input.n"),
            (
                br#"{"input":{"prompt":"x","modelOptions":{"model":"nosuch/m"}}}"#,
                false,
                "input.modelOptions.model",
            ),
            (br#"{"prompt":"x"}"#, false, "input"),
            (
                br#"{"prompt":"","model":"openai/dall-e-2"}"#,
                true,
                "prompt",
            ),
            (br#"{"prompt":"x","image":"data:..."}"#, true, "image"),
            (
                br#"{"prompt":"x","responseFormat":"gif"}"#,
                true,
                "responseFormat",
            ),
        ];
        for (body, flat, param) in cases {
            let r = if *flat {
                parse_image_flat(body)
            } else {
                parse_image_invoke(body)
            };
            let got = r.err().and_then(|e| e.param);
            assert_eq!(
                got.as_deref(),
                Some(*param),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn images_response() -> ImagesResponse {
        ImagesResponse {
            created: 1,
            model: "dall-e-3".into(),
            data: vec![
                GeneratedImage {
                    b64_json: Some("iVBORw0KGgoX".into()),
                    ..GeneratedImage::default()
                },
                GeneratedImage {
                    url: Some("https://img/x.png".into()),
                    ..GeneratedImage::default()
                },
            ],
            usage: Usage {
                images: 2,
                ..Usage::default()
            },
            cost: None,
        }
    }

    /// Golden: both image answers (aigne-hub.md §2.4, §2.5).
    #[test]
    fn renders_images() {
        let call = ImageCall {
            request: ImagesRequest {
                model: "openai/dall-e-3".into(),
                ..ImagesRequest::default()
            },
            model_with_provider: Some("openai/dall-e-3".into()),
        };
        assert_eq!(
            render_image_invoke(&images_response(), &call, &Credits::default()),
            json!({
                "images": [{"type":"file","data":"iVBORw0KGgoX","mimeType":"image/png"},{"type":"url","url":"https://img/x.png"}],
                "usage": {"inputTokens":0,"outputTokens":0},
                "model": "dall-e-3",
                "modelWithProvider": "openai/dall-e-3",
            })
        );
        let flat = render_image_flat(&images_response(), &call, &Credits::default());
        assert_eq!(
            flat["images"],
            json!([{"base64":"iVBORw0KGgoX","b64_json":"iVBORw0KGgoX","b64Json":"iVBORw0KGgoX"},{"url":"https://img/x.png"}])
        );
        assert_eq!(flat["data"], flat["images"]);
        assert_eq!(flat["model"], json!("dall-e-3"));
    }

    #[test]
    fn embeddings_accept_both_shapes() {
        let flat = parse_embeddings(
            br#"{"model":"openai/text-embedding-3-small","input":["a","b"],"dimensions":8}"#,
        );
        let flat = match flat {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(flat.request.input, json!(["a", "b"]));
        assert_eq!(flat.request.dimensions, Some(8));
        let inv = parse_embeddings(
            br#"{"input":{"input":"hello","modelOptions":{"model":"openai/text-embedding-3-small","dimensions":4}},"options":{}}"#,
        );
        let inv = match inv {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(inv.request.input, json!("hello"));
        assert_eq!(inv.request.model, "openai/text-embedding-3-small");
        assert_eq!(inv.request.dimensions, Some(4));
        for (body, param) in [
            (&br#"{"input":"x"}"#[..], "model"),
            (br#"{"model":"openai/e","input":[]}"#, "input"),
            (
                br#"{"input":{"modelOptions":{"model":"openai/e"}}}"#,
                "input.input",
            ),
            (br#"{"model":"openai/e"}"#, "input"),
            (
                br#"{"model":"openai/e","input":"x","encoding_format":"hex"}"#,
                "encoding_format",
            ),
        ] {
            let got = parse_embeddings(body).err().and_then(|e| e.param);
            assert_eq!(
                got.as_deref(),
                Some(param),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn renders_embeddings() {
        let resp = EmbeddingsResponse {
            model: "text-embedding-3-small".into(),
            data: vec![Embedding {
                index: 0,
                embedding: json!([0.5, 0.25]),
            }],
            usage: Usage {
                prompt_tokens: 3,
                ..Usage::default()
            },
            cost: None,
        };
        let call = EmbeddingsCall {
            request: EmbeddingsRequest {
                model: "openai/text-embedding-3-small".into(),
                input: json!("x"),
                dimensions: None,
                encoding_format: None,
                user: None,
                extra: Map::new(),
            },
            model_with_provider: Some("openai/text-embedding-3-small".into()),
        };
        assert_eq!(
            render_embeddings(&resp, &call, &Credits::default()),
            json!({
                "data": [{"object":"embedding","index":0,"embedding":[0.5,0.25]}],
                "embeddings": [[0.5,0.25]],
                "model": "text-embedding-3-small",
                "usage": {"inputTokens":3,"outputTokens":0},
                "modelWithProvider": "openai/text-embedding-3-small",
            })
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_image_invoke(&bytes);
            let _ = parse_image_flat(&bytes);
            let _ = parse_embeddings(&bytes);
            let _ = peek_model(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_jsonish_input(s in r#"\{("input":(\{("prompt":("x"|1|""),?|"n":(0|2|"a"),?|"image":("a"|\[\]|1),?|"input":("a"|\[\]|\[1\]|1),?|"modelOptions":\{"model":("openai/m"|"x/y"|1)\},?){0,4}\}|"a"|\["b"\]),?|"model":("openai/m"|"x/y"|""),?|"prompt":"p",?){0,3}\}"#) {
            let _ = parse_image_invoke(s.as_bytes());
            let _ = parse_image_flat(s.as_bytes());
            let _ = parse_embeddings(s.as_bytes());
        }
    }
}
