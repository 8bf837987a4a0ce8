"""POST /v1/chat/completions, JSON responses, through the official OpenAI SDK."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from conftest import MOCK_API_KEY, PROVIDERS, header, unique_model

USER_MSG = [{"role": "user", "content": "Say hello."}]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_json_each_provider(hub, mocks, client, provider):
    mock = mocks[provider]
    model = mock.scenario(
        unique_model(),
        text=f"Hello from {provider} e2e.",
        usage={"prompt_tokens": 11, "completion_tokens": 7},
    )
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}/{model}", messages=USER_MSG)
    assert raw.status_code == 200
    rid = raw.headers.get("x-request-id")
    rec = hub.require_usage(rid)
    resp = raw.parse()

    assert resp.object == "chat.completion"
    assert resp.model == model, "response `model` must be the upstream model id"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Hello from {provider} e2e."
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (11, 7, 18)

    # what the hub sent upstream
    up = mock.last_request_for(model)
    assert up["method"] == "POST"
    assert up["path"].endswith("/chat/completions"), up["path"]
    assert up["body"]["model"] == model
    assert up["body"]["messages"] == USER_MSG
    assert up["body"].get("stream") in (None, False)
    if provider != "ollama":
        assert header(up, "authorization") == f"Bearer {MOCK_API_KEY}"
    assert header(up, "authorization") != f"Bearer {hub.admin_key}", "caller's key leaked upstream"

    # the usage record
    assert rec["ingress"] == "openai"
    assert rec["endpoint"] == "chat"
    assert rec["requested_model"] == f"{provider}/{model}"
    assert rec["provider"] == provider
    assert rec["upstream_model"] == model
    assert rec["stream"] is False
    assert rec["status"] == "success"
    assert rec["http_status"] == 200
    assert rec["prompt_tokens"] == 11
    assert rec["completion_tokens"] == 7
    assert rec["estimated"] is False
    assert rec["error_class"] in (None, "")
    assert len(hub.usage_for_model(f"{provider}/{model}")) == 1, "exactly one record per call"


def test_request_ids(hub, mocks, client):
    """The hub's own id is returned in x-request-id and keys the record; the caller's id is kept."""
    model = mocks.openai.scenario(unique_model(), text="ids")
    client_id = "client-" + uuid.uuid4().hex
    raw = client.chat.completions.with_raw_response.create(
        model=f"openai/{model}", messages=USER_MSG, extra_headers={"x-request-id": client_id}
    )
    rid = raw.headers.get("x-request-id")
    assert rid and rid != client_id, "x-request-id must be the hub's own id"
    rec = hub.require_usage(rid)
    assert rec["client_request_id"] == client_id
    assert rec["principal"], rec


def test_tool_calls_json(hub, mocks, client):
    mock = mocks.openai
    args = json.dumps({"city": "Paris", "unit": "c"})
    model = mock.scenario(
        unique_model(),
        tool_calls=[{"id": "call_e2e_1", "name": "get_weather", "arguments": args}],
        usage={"prompt_tokens": 30, "completion_tokens": 12},
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    resp = client.chat.completions.create(
        model=f"openai/{model}",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice="auto",
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    assert calls[0].id == "call_e2e_1"
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "c"}

    up = mock.last_request_for(model)["body"]
    assert up["tools"] == tools
    assert up["tool_choice"] == "auto"


def test_tool_result_round_trip(hub, mocks, client):
    mock = mocks.openai
    model = mock.scenario(unique_model(), text="It is 18C in Paris.")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_rt_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_rt_1", "content": "18C"},
    ]
    resp = client.chat.completions.create(model=f"openai/{model}", messages=copy.deepcopy(messages))
    assert resp.choices[0].message.content == "It is 18C in Paris."

    sent = mock.last_request_for(model)["body"]["messages"]
    assert len(sent) == 4
    assert sent[0] == {"role": "system", "content": "You are terse."}
    assert sent[1] == {"role": "user", "content": "Weather in Paris?"}
    assert sent[2]["role"] == "assistant"
    assert sent[2].get("content") in (None, "")
    assert sent[2]["tool_calls"] == messages[2]["tool_calls"]
    assert sent[3]["role"] == "tool"
    assert sent[3]["tool_call_id"] == "call_rt_1"
    assert sent[3]["content"] in ("18C", [{"type": "text", "text": "18C"}])


# 1x1 transparent PNG
PNG_1PX = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@pytest.mark.parametrize("provider", ["openai", "openrouter"])
def test_image_content_parts_forwarded(hub, mocks, client, provider):
    mock = mocks[provider]
    model = mock.scenario(unique_model(), text="A tiny image.")
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": PNG_1PX, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    resp = client.chat.completions.create(
        model=f"{provider}/{model}", messages=[{"role": "user", "content": copy.deepcopy(content)}]
    )
    assert resp.choices[0].message.content == "A tiny image."
    sent = mock.last_request_for(model)["body"]["messages"]
    assert len(sent) == 1 and sent[0]["role"] == "user"
    parts = sent[0]["content"]
    assert isinstance(parts, list) and len(parts) == 3
    assert parts[0] == content[0]
    assert parts[1]["type"] == "image_url"
    assert parts[1]["image_url"]["url"] == PNG_1PX
    assert parts[1]["image_url"].get("detail") == "low"
    assert parts[2]["type"] == "image_url"
    assert parts[2]["image_url"]["url"] == "https://example.com/cat.png"


def test_response_format_json_schema_forwarded(hub, mocks, client):
    mock = mocks.openai
    model = mock.scenario(unique_model(), text='{"answer":42}')
    rf = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "integer"}},
                "required": ["answer"],
                "additionalProperties": False,
            },
        },
    }
    resp = client.chat.completions.create(
        model=f"openai/{model}",
        messages=USER_MSG,
        response_format=copy.deepcopy(rf),
        temperature=0.25,
        max_completion_tokens=99,
        seed=7,
    )
    assert json.loads(resp.choices[0].message.content) == {"answer": 42}
    body = mock.last_request_for(model)["body"]
    assert body["response_format"] == rf
    assert body["temperature"] == 0.25
    assert body["seed"] == 7
    # max_completion_tokens may be forwarded as is (or mapped for providers that need max_tokens)
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 99


def test_response_format_json_object_forwarded(hub, mocks, client):
    mock = mocks.deepseek
    model = mock.scenario(unique_model(), text='{"ok":true}')
    client.chat.completions.create(
        model=f"deepseek/{model}", messages=USER_MSG, response_format={"type": "json_object"}
    )
    assert mock.last_request_for(model)["body"]["response_format"] == {"type": "json_object"}


def test_finish_reason_length(hub, mocks, client):
    model = mocks.openai.scenario(unique_model(), text="cut", finish_reason="length")
    resp = client.chat.completions.create(model=f"openai/{model}", messages=USER_MSG)
    assert resp.choices[0].finish_reason == "length"


def test_bare_model_routes_to_a_provider_that_serves_it(hub, mocks, client):
    """`deepseek-chat` is listed only by the DeepSeek upstream: a bare model string reaches it."""
    mocks.deepseek.scenario("deepseek-chat", text="bare routed", usage={"prompt_tokens": 3, "completion_tokens": 2})
    raw = client.chat.completions.with_raw_response.create(model="deepseek-chat", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert resp.choices[0].message.content == "bare routed"
    assert resp.model == "deepseek-chat"
    assert rec["provider"] == "deepseek"
    assert rec["requested_model"] == "deepseek-chat"
    assert rec["upstream_model"] == "deepseek-chat"
