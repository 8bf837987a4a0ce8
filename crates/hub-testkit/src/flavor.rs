//! The OpenAI-family upstreams the mock can impersonate.

/// One OpenAI-compatible upstream. Each flavor differs in base path, auth, usage shape,
/// streaming quirks and error bodies (see `/work/shared/providers.md` sections 1, 2, 6-11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    OpenAi,
    DeepSeek,
    Xai,
    OpenRouter,
    Doubao,
    Poe,
    Ollama,
    /// Anthropic Messages API (`POST /v1/messages`).
    Anthropic,
    /// Google Gemini API (`/v1beta/models/{model}:generateContent`, ...).
    Gemini,
    /// Amazon Bedrock Runtime (Converse, ConverseStream, InvokeModel), SigV4-verified.
    Bedrock,
}

impl Flavor {
    /// Lower-case provider name used on the CLI and in the control API.
    pub fn name(&self) -> &'static str {
        match self {
            Flavor::OpenAi => "openai",
            Flavor::DeepSeek => "deepseek",
            Flavor::Xai => "xai",
            Flavor::OpenRouter => "openrouter",
            Flavor::Doubao => "doubao",
            Flavor::Poe => "poe",
            Flavor::Ollama => "ollama",
            Flavor::Anthropic => "anthropic",
            Flavor::Gemini => "gemini",
            Flavor::Bedrock => "bedrock",
        }
    }

    /// Every flavor: the OpenAI family, then Anthropic, Gemini, Bedrock.
    pub fn all() -> [Flavor; 10] {
        [
            Flavor::OpenAi,
            Flavor::DeepSeek,
            Flavor::Xai,
            Flavor::OpenRouter,
            Flavor::Doubao,
            Flavor::Poe,
            Flavor::Ollama,
            Flavor::Anthropic,
            Flavor::Gemini,
            Flavor::Bedrock,
        ]
    }

    /// Whether the flavor speaks the OpenAI Chat Completions wire.
    pub fn is_openai_family(&self) -> bool {
        !matches!(self, Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock)
    }

    pub fn all_openai_family() -> [Flavor; 7] {
        [
            Flavor::OpenAi,
            Flavor::DeepSeek,
            Flavor::Xai,
            Flavor::OpenRouter,
            Flavor::Doubao,
            Flavor::Poe,
            Flavor::Ollama,
        ]
    }

    /// Inverse of [`Flavor::name`] (case-insensitive; also accepts a few aliases).
    pub fn from_name(name: &str) -> Option<Flavor> {
        let lower = name.trim().to_ascii_lowercase();
        let flavor = match lower.as_str() {
            "openai" => Flavor::OpenAi,
            "deepseek" => Flavor::DeepSeek,
            "xai" | "grok" => Flavor::Xai,
            "openrouter" => Flavor::OpenRouter,
            "doubao" | "ark" | "volcengine" => Flavor::Doubao,
            "poe" => Flavor::Poe,
            "ollama" => Flavor::Ollama,
            "anthropic" | "claude" => Flavor::Anthropic,
            "gemini" | "google" => Flavor::Gemini,
            "bedrock" | "aws" => Flavor::Bedrock,
            _ => return None,
        };
        Some(flavor)
    }

    /// Path prefix under the origin to which `/chat/completions` etc. are appended.
    pub fn base_path(&self) -> &'static str {
        match self {
            Flavor::OpenAi | Flavor::Xai | Flavor::Poe | Flavor::Ollama => "/v1",
            Flavor::DeepSeek => "",
            Flavor::OpenRouter => "/api/v1",
            Flavor::Doubao => "/api/v3",
            // Anthropic and Bedrock clients are configured with the origin.
            Flavor::Anthropic | Flavor::Bedrock => "",
            Flavor::Gemini => "/v1beta",
        }
    }

    /// Whether requests must carry `Authorization: Bearer <key>` (local Ollama needs none).
    pub fn requires_auth(&self) -> bool {
        !matches!(self, Flavor::Ollama)
    }

    pub fn supports_embeddings(&self) -> bool {
        matches!(
            self,
            Flavor::OpenAi
                | Flavor::OpenRouter
                | Flavor::Doubao
                | Flavor::Ollama
                | Flavor::Gemini
                | Flavor::Bedrock
        )
    }

    pub fn supports_images(&self) -> bool {
        matches!(
            self,
            Flavor::OpenAi | Flavor::Xai | Flavor::Doubao | Flavor::Gemini
        )
    }

    /// Ark (Doubao) has no model listing endpoint.
    pub fn supports_models(&self) -> bool {
        !matches!(self, Flavor::Doubao | Flavor::Bedrock)
    }

    /// Reply text used when a script gives none.
    pub fn default_text(&self) -> &'static str {
        match self {
            Flavor::OpenAi => "Hello from mock openai.",
            Flavor::DeepSeek => "Hello from mock deepseek.",
            Flavor::Xai => "Hello from mock xai.",
            Flavor::OpenRouter => "Hello from mock openrouter.",
            Flavor::Doubao => "Hello from mock doubao.",
            Flavor::Poe => "Hello from mock poe.",
            Flavor::Ollama => "Hello from mock ollama.",
            Flavor::Anthropic => "Hello from mock anthropic.",
            Flavor::Gemini => "Hello from mock gemini.",
            Flavor::Bedrock => "Hello from mock bedrock.",
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Flavor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flavor::from_name(s).ok_or_else(|| format!("unknown flavor {s:?}"))
    }
}
