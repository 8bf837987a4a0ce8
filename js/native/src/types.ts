// hub-core's canonical types (crates/hub-core/src/types.rs, store/mod.rs) as they serialise.
// Kept by hand; the node tests round-trip every one of them through the native module.

export type Role = 'system' | 'developer' | 'user' | 'assistant' | 'tool';

export type ImageSource =
  | { kind: 'url'; url: string }
  | { kind: 'base64'; media_type: string; data: string };

export type ContentPart =
  | { type: 'text'; text: string }
  | { type: 'image'; source: ImageSource; detail?: string };

export interface ToolCall {
  id: string;
  name: string;
  /** JSON text the model produced. */
  arguments: string;
}

export interface Message {
  role: Role;
  content: ContentPart[];
  /** The content was a plain string (family providers get the same shape back). */
  content_is_text?: boolean;
  tool_calls?: ToolCall[];
  tool_call_id?: string;
  name?: string;
  reasoning?: string;
}

export interface Tool {
  name: string;
  description?: string;
  parameters?: unknown;
  strict?: boolean;
}

export type ToolChoice = 'none' | 'auto' | 'required' | { function: { name: string } };

export type ResponseFormat =
  | 'text'
  | 'json_object'
  | { json_schema: { name: string; schema: unknown; strict?: boolean; description?: string } };

export interface ChatRequest {
  /** `provider/model`, `provider:model`, or a bare model name. */
  model: string;
  messages: Message[];
  tools?: Tool[];
  tool_choice?: ToolChoice | null;
  parallel_tool_calls?: boolean | null;
  response_format?: ResponseFormat | null;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  stop?: string[];
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  reasoning_effort?: string | null;
  user?: string | null;
  stream: boolean;
  include_usage?: boolean;
  /** OpenAI-family fields with no canonical home, forwarded to OpenAI-family providers only. */
  extra?: Record<string, unknown>;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'error';

/** Normalised: prompt includes cache reads/writes, completion includes reasoning. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  cache_read_tokens: number;
  cache_write_tokens: number;
  reasoning_tokens: number;
  images: number;
  /** The hub estimated these counts (the provider reported none). */
  estimated: boolean;
}

export interface ChatResponse {
  id: string;
  model: string;
  created: number;
  output: {
    content: string | null;
    reasoning: string | null;
    tool_calls: ToolCall[];
    images: string[];
  };
  finish_reason: FinishReason;
  usage: Usage;
  provider_cost: string | null;
}

export type StreamEvent =
  | { type: 'start'; id: string; model: string }
  | { type: 'text_delta'; text: string }
  | { type: 'reasoning_delta'; text: string }
  | { type: 'tool_call_delta'; index: number; id: string | null; name: string | null; arguments: string }
  | { type: 'finish'; reason: FinishReason }
  | { type: 'usage'; usage: Usage };

/** The last chunk of a stream: its usage record is committed. */
export interface StreamDone {
  type: 'done';
  usage: Usage;
}

export type StreamChunk = StreamEvent | StreamDone;

export interface EmbeddingsRequest {
  model: string;
  input: string | string[] | number[] | number[][];
  dimensions?: number | null;
  encoding_format?: string | null;
  user?: string | null;
  extra?: Record<string, unknown>;
}

export interface EmbeddingsResponse {
  model: string;
  data: { index: number; embedding: number[] | string }[];
  usage: Usage;
}

export interface ImagesRequest {
  model: string;
  prompt: string;
  n?: number | null;
  size?: string | null;
  quality?: string | null;
  style?: string | null;
  response_format?: string | null;
  user?: string | null;
  extra?: Record<string, unknown>;
}

export interface ImagesResponse {
  created: number;
  model: string;
  data: { b64_json?: string; url?: string; revised_prompt?: string }[];
  usage: Usage;
}

export interface ModelInfo {
  id: string;
  provider: string;
  model: string;
  model_type: 'chat' | 'embedding' | 'image';
  display_name: string | null;
}

/** One metered call, as committed. */
export interface UsageRecord {
  id: string;
  created_at_ms: number;
  client_request_id: string | null;
  /** API key id (or the principal's keyId). */
  principal: string;
  user_id: string;
  team_id: string | null;
  app: string | null;
  /** `openai`, `anthropic`, `aigne`, `native`. */
  ingress: string;
  endpoint: string;
  requested_model: string;
  provider: string | null;
  credential: string | null;
  upstream_model: string | null;
  stream: boolean;
  prompt_tokens: number;
  completion_tokens: number;
  cache_read_tokens: number;
  cache_write_tokens: number;
  reasoning_tokens: number;
  images: number;
  estimated: boolean;
  latency_ms: number;
  ttfb_ms: number | null;
  status: 'success' | 'failed' | 'cancelled';
  http_status: number;
  error_class: string | null;
  error_message: string | null;
  provider_cost: string | null;
  attempts: number;
}
