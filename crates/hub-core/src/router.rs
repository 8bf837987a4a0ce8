//! Model string -> ordered candidates (provider, upstream model id).
//!
//! `provider/model` (or `provider:model`) with a known provider pins that provider and keeps the
//! rest as the upstream id (`openrouter/anthropic/claude-3.5-sonnet` -> `anthropic/claude-3.5-sonnet`).
//! Any other string is a bare model: every configured provider that serves it is a candidate,
//! direct providers first, then Bedrock, then aggregators, then local (as the original ranks them),
//! with the id mapped per provider (OpenRouter `openai/gpt-4o`).

use serde::Deserialize;

use crate::FastMap;
use crate::providers::ProviderKind;
use crate::types::{ModelInfo, ModelType};

/// How the caller named the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef<'a> {
    Pinned {
        provider: ProviderKind,
        model: &'a str,
    },
    Bare(&'a str),
}

/// Splits `provider/model` or `provider:model` when the prefix is a known provider.
pub fn parse_model(model: &str) -> ModelRef<'_> {
    let model = model.trim();
    if let Some(pos) = model.find(['/', ':']) {
        let (prefix, rest) = (&model[..pos], &model[pos + 1..]);
        if let Some(provider) = ProviderKind::from_name(prefix)
            && !rest.is_empty()
        {
            return ModelRef::Pinned {
                provider,
                model: rest,
            };
        }
    }
    ModelRef::Bare(model)
}

/// One place a call may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub provider: ProviderKind,
    pub upstream_model: String,
}

#[derive(Deserialize)]
struct CatalogFile {
    providers: FastMap<String, Vec<CatalogEntry>>,
}

#[derive(Deserialize, Clone)]
struct CatalogEntry {
    id: String,
    #[serde(rename = "type")]
    model_type: ModelType,
    #[serde(default)]
    display_name: Option<String>,
}

/// Built-in knowledge of which provider serves which model (data/catalog.json).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    by_provider: FastMap<ProviderKind, Vec<(String, ModelType, Option<String>)>>,
}

impl Catalog {
    /// The catalog shipped in the binary.
    pub fn builtin() -> Catalog {
        Catalog::from_json(include_str!("../data/catalog.json")).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Catalog, String> {
        let file: CatalogFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_provider = FastMap::default();
        for (name, entries) in file.providers {
            let kind = ProviderKind::from_name(&name)
                .ok_or_else(|| format!("unknown provider {name} in catalog"))?;
            by_provider.insert(
                kind,
                entries
                    .into_iter()
                    .map(|e| (e.id, e.model_type, e.display_name))
                    .collect(),
            );
        }
        Ok(Catalog { by_provider })
    }

    pub fn serves(&self, provider: ProviderKind, model: &str) -> bool {
        self.by_provider
            .get(&provider)
            .is_some_and(|ms| ms.iter().any(|(id, _, _)| id == model))
    }

    /// Models of the given providers (all types when `model_type` is `None`).
    pub fn list(
        &self,
        providers: &[ProviderKind],
        model_type: Option<ModelType>,
    ) -> Vec<ModelInfo> {
        let mut out = Vec::new();
        for &p in providers {
            for (id, t, display) in self
                .by_provider
                .get(&p)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if model_type.is_none_or(|want| want == *t) {
                    out.push(ModelInfo {
                        id: format!("{}/{}", p.name(), id),
                        provider: p.name().to_string(),
                        model: id.clone(),
                        model_type: *t,
                        display_name: display.clone(),
                    });
                }
            }
        }
        out
    }

    fn providers_serving(&self, model: &str) -> Vec<ProviderKind> {
        let mut out: Vec<ProviderKind> = self
            .by_provider
            .iter()
            .filter(|(_, ms)| ms.iter().any(|(id, _, _)| id == model))
            .map(|(p, _)| *p)
            .collect();
        out.sort();
        out
    }
}

/// Who serves a bare model name, by family prefix, with the id each provider expects.
fn family_candidates(model: &str) -> Vec<(ProviderKind, String)> {
    let m = model.to_ascii_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| m.starts_with(p));
    if model.contains('/') {
        // `vendor/model` with an unknown vendor: only the catalog can say who serves it (pin an
        // aggregator explicitly: `openrouter/meta-llama/...`). Guessing would send typos upstream.
        return Vec::new();
    }
    if starts(&["gpt-oss"]) {
        return vec![
            (ProviderKind::Ollama, model.to_string()),
            (ProviderKind::OpenRouter, format!("openai/{model}")),
        ];
    }
    if starts(&[
        "gpt-",
        "o1",
        "o3",
        "o4",
        "chatgpt-",
        "dall-e",
        "text-embedding",
        "gpt-image",
        "omni-",
    ]) {
        return vec![
            (ProviderKind::OpenAi, model.to_string()),
            (ProviderKind::OpenRouter, format!("openai/{model}")),
        ];
    }
    if starts(&["claude"]) {
        let mut out = vec![(ProviderKind::Anthropic, model.to_string())];
        // Bedrock serves Claude under its own ids (the table lives in the Bedrock module).
        if let Some(id) = crate::providers::bedrock::model_id_for(model) {
            out.push((ProviderKind::Bedrock, id.to_string()));
        }
        out.push((ProviderKind::OpenRouter, format!("anthropic/{model}")));
        return out;
    }
    if starts(&["gemini", "imagen"]) {
        return vec![
            (ProviderKind::Google, model.to_string()),
            (ProviderKind::OpenRouter, format!("google/{model}")),
        ];
    }
    if starts(&["deepseek"]) {
        return vec![
            (ProviderKind::DeepSeek, model.to_string()),
            (ProviderKind::OpenRouter, format!("deepseek/{model}")),
        ];
    }
    if starts(&["grok"]) {
        return vec![
            (ProviderKind::Xai, model.to_string()),
            (ProviderKind::OpenRouter, format!("x-ai/{model}")),
        ];
    }
    if starts(&["doubao", "ep-"]) {
        return vec![(ProviderKind::Doubao, model.to_string())];
    }
    if starts(&[
        "llama",
        "qwen",
        "mistral",
        "phi",
        "gemma",
        "nomic-embed",
        "all-minilm",
        "mxbai",
    ]) {
        return vec![(ProviderKind::Ollama, model.to_string())];
    }
    Vec::new()
}

/// Ordered candidates for `model` among the providers for which `configured` is true.
/// `Err(Some(kind))`: the model pins a provider that is not configured; `Err(None)`: nobody serves it.
pub fn candidates(
    model: &str,
    catalog: &Catalog,
    configured: impl Fn(ProviderKind) -> bool,
) -> Result<Vec<Candidate>, Option<ProviderKind>> {
    match parse_model(model) {
        ModelRef::Pinned { provider, model } => {
            if configured(provider) {
                Ok(vec![Candidate {
                    provider,
                    upstream_model: model.to_string(),
                }])
            } else {
                Err(Some(provider))
            }
        }
        ModelRef::Bare(model) => {
            if model.is_empty() {
                return Err(None);
            }
            let mut found: Vec<(ProviderKind, String)> = family_candidates(model);
            for p in catalog.providers_serving(model) {
                if !found.iter().any(|(k, _)| *k == p) {
                    found.push((p, model.to_string()));
                }
            }
            let mut out: Vec<Candidate> = found
                .into_iter()
                .filter(|(p, _)| configured(*p))
                .map(|(provider, upstream_model)| Candidate {
                    provider,
                    upstream_model,
                })
                .collect();
            out.sort_by_key(|c| c.provider.rank());
            if out.is_empty() { Err(None) } else { Ok(out) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_claude_goes_direct_then_bedrock_then_openrouter() {
        let cat = Catalog::default();
        let c = candidates("claude-sonnet-4-5", &cat, |_| true).unwrap_or_default();
        let got: Vec<(ProviderKind, &str)> = c
            .iter()
            .map(|c| (c.provider, c.upstream_model.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (ProviderKind::Anthropic, "claude-sonnet-4-5"),
                (
                    ProviderKind::Bedrock,
                    "anthropic.claude-sonnet-4-5-20250929-v1:0"
                ),
                (ProviderKind::OpenRouter, "anthropic/claude-sonnet-4-5"),
            ]
        );
    }

    #[test]
    fn parses_model_strings() {
        let table: &[(&str, ModelRef<'_>)] = &[
            (
                "openai/gpt-4o-mini",
                ModelRef::Pinned {
                    provider: ProviderKind::OpenAi,
                    model: "gpt-4o-mini",
                },
            ),
            (
                "openrouter/anthropic/claude-3.5-sonnet",
                ModelRef::Pinned {
                    provider: ProviderKind::OpenRouter,
                    model: "anthropic/claude-3.5-sonnet",
                },
            ),
            (
                "google:gemini-2.5-flash",
                ModelRef::Pinned {
                    provider: ProviderKind::Google,
                    model: "gemini-2.5-flash",
                },
            ),
            (
                "gemini/gemini-2.5-flash",
                ModelRef::Pinned {
                    provider: ProviderKind::Google,
                    model: "gemini-2.5-flash",
                },
            ),
            (
                "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0",
                ModelRef::Pinned {
                    provider: ProviderKind::Bedrock,
                    model: "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                },
            ),
            ("gpt-4o", ModelRef::Bare("gpt-4o")),
            ("nosuch/model", ModelRef::Bare("nosuch/model")),
            ("openai/", ModelRef::Bare("openai/")),
            (
                "doubao/ep-20250101-abcde",
                ModelRef::Pinned {
                    provider: ProviderKind::Doubao,
                    model: "ep-20250101-abcde",
                },
            ),
        ];
        for (input, want) in table {
            assert_eq!(&parse_model(input), want, "{input}");
        }
    }

    #[test]
    fn bare_models_rank_direct_before_aggregators() {
        let cat = Catalog::builtin();
        let all = |_: ProviderKind| true;
        let c = candidates("gpt-4o", &cat, all).unwrap_or_default();
        assert_eq!(c[0].provider, ProviderKind::OpenAi);
        assert_eq!(
            c[1],
            Candidate {
                provider: ProviderKind::OpenRouter,
                upstream_model: "openai/gpt-4o".into()
            }
        );
        let only_or = |p: ProviderKind| p == ProviderKind::OpenRouter;
        let c = candidates("claude-sonnet-4-5", &cat, only_or).unwrap_or_default();
        assert_eq!(
            c,
            vec![Candidate {
                provider: ProviderKind::OpenRouter,
                upstream_model: "anthropic/claude-sonnet-4-5".into()
            }]
        );
        assert_eq!(candidates("nosuch-model", &cat, all), Err(None));
        assert_eq!(
            candidates("nosuch/model", &cat, all),
            Err(None),
            "an unknown vendor prefix is not guessed onto an aggregator"
        );
        assert_eq!(
            candidates("anthropic/claude-x", &cat, |_| false),
            Err(Some(ProviderKind::Anthropic))
        );
        // Catalog knowledge: Poe bot names.
        let c = candidates("GPT-4o", &cat, |p| p == ProviderKind::Poe).unwrap_or_default();
        assert_eq!(c[0].provider, ProviderKind::Poe);
    }

    #[test]
    fn builtin_catalog_loads() {
        let cat = Catalog::builtin();
        assert!(cat.serves(ProviderKind::OpenAi, "gpt-4o-mini"));
        let emb = cat.list(&[ProviderKind::OpenAi], Some(ModelType::Embedding));
        assert!(
            emb.iter()
                .all(|m| m.model_type == ModelType::Embedding && m.id.starts_with("openai/"))
        );
        assert!(!emb.is_empty());
    }
}
