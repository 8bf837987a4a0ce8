"""Errors on /v1/* in OpenAI's shape, with the right status, through the SDK and raw HTTP."""

from __future__ import annotations


import openai
import pytest

from conftest import assert_openai_error, unique_model

USER_MSG = [{"role": "user", "content": "hi"}]


def _chat_body(model: str = "openai/gpt-4o-mini") -> dict:
    return {"model": model, "messages": USER_MSG}


# ------------------------------------------------------------------ authentication


def test_bad_key_401(hub, mocks):
    model = mocks.openai.scenario(unique_model(), text="never")
    c = hub.client(api_key="sk-definitely-wrong")
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model=f"openai/{model}", messages=USER_MSG)
    assert ei.value.status_code == 401
    assert_openai_error(ei.value.response.json())
    assert mocks.openai.requests_for(model) == [], "unauthenticated call reached the upstream"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["no-header", "empty-bearer", "basic"],
)
def test_missing_key_401(hub, headers):
    r = hub.http.post("/v1/chat/completions", json=_chat_body(), headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers.get("content-type", "").startswith("application/json")
    assert_openai_error(r.json())


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("POST", "/v1/images/generations")],
)
def test_every_v1_endpoint_needs_a_key(hub, method, path):
    body = {"model": "openai/x", "input": "x", "prompt": "x"} if method == "POST" else None
    r = hub.http.request(method, path, json=body)
    assert r.status_code == 401, r.text
    assert_openai_error(r.json())


# ------------------------------------------------------------------ routing


def test_unknown_provider_prefix_404(hub, client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.with_raw_response.create(model="nosuch/model", messages=USER_MSG)
    assert ei.value.status_code == 404
    err = assert_openai_error(ei.value.response.json(), code="model_not_found")
    assert ei.value.code == "model_not_found"
    assert "nosuch/model" in err["message"]
    # after authentication every call leaves a record
    rec = hub.require_usage(ei.value.response.headers.get("x-request-id"))
    assert rec["status"] == "failed"
    assert rec["http_status"] == 404
    assert rec["requested_model"] == "nosuch/model"


def test_bare_model_nobody_serves_404(hub, mocks, client):
    model = unique_model("nobody")
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model=model, messages=USER_MSG)
    assert_openai_error(ei.value.response.json(), code="model_not_found")
    for m in mocks.values():
        assert m.requests_for(model) == [], f"{m.provider} was asked for a model nobody serves"


def test_unknown_model_404_on_embeddings_and_images(hub, client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.embeddings.create(model="nosuch/emb", input="x", encoding_format="float")
    assert_openai_error(ei.value.response.json(), code="model_not_found")
    with pytest.raises(openai.NotFoundError) as ei:
        client.images.generate(model="nosuch/img", prompt="x")
    assert_openai_error(ei.value.response.json(), code="model_not_found")


# ------------------------------------------------------------------ invalid requests


@pytest.mark.parametrize(
    "body",
    [b'{"model": "openai/gpt-4o-mini", "messages": [', b"not json at all", b""],
    ids=["truncated", "garbage", "empty"],
)
def test_malformed_json_400(hub, body):
    r = hub.http.post(
        "/v1/chat/completions", content=body, headers={**hub.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    err = assert_openai_error(r.json())
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "openai/gpt-4o-mini", "messages": "hello"},
        {"model": "openai/gpt-4o-mini"},
        {"messages": USER_MSG},
        {"model": 42, "messages": USER_MSG},
        {"model": "openai/gpt-4o-mini", "messages": [{"content": "no role"}]},
        {"model": "openai/gpt-4o-mini", "messages": USER_MSG, "stream": "yes"},
    ],
    ids=["messages-not-list", "no-messages", "no-model", "model-not-string", "message-no-role", "stream-not-bool"],
)
def test_invalid_fields_400(hub, body):
    r = hub.http.post("/v1/chat/completions", json=body, headers=hub.auth())
    assert r.status_code == 400, r.text
    err = assert_openai_error(r.json())
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body", [b'{"model": "openai/t-rec", "messages": [', b'{"model": "openai/t-rec", "messages": "hello"}'],
    ids=["malformed", "invalid-field"],
)
def test_400_after_authentication_is_recorded(hub, body):
    r = hub.http.post(
        "/v1/chat/completions", content=body, headers={**hub.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    rec = hub.require_usage(r.headers.get("x-request-id"))
    assert rec["status"] == "failed"
    assert rec["http_status"] == 400
    assert rec["endpoint"] == "chat"
    assert rec["error_class"], rec


def test_invalid_fields_400_via_sdk(hub, client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=USER_MSG, extra_body={"n": "three"})
    assert_openai_error(ei.value.response.json())


def test_invalid_embeddings_400(hub):
    r = hub.http.post("/v1/embeddings", json={"model": "openai/text-embedding-3-small"}, headers=hub.auth())
    assert r.status_code == 400, r.text
    assert_openai_error(r.json())


def test_invalid_images_400(hub):
    r = hub.http.post("/v1/images/generations", json={"model": "openai/gpt-image-1"}, headers=hub.auth())
    assert r.status_code == 400, r.text
    assert_openai_error(r.json())


def test_body_over_limit_413(small_hub):
    big = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = small_hub.http.post("/v1/chat/completions", json=big, headers=small_hub.auth())
    assert r.status_code == 413, r.text
    assert_openai_error(r.json())
    rec = small_hub.require_usage(r.headers.get("x-request-id"))
    assert rec["status"] == "failed" and rec["http_status"] == 413, rec

    c = small_hub.client()
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model="openai/gpt-4o-mini", messages=big["messages"])
    assert ei.value.status_code == 413


def test_body_under_limit_ok(small_hub, mocks):
    model = mocks.openai.scenario(unique_model(), text="small ok")
    c = small_hub.client()
    resp = c.chat.completions.create(model=f"openai/{model}", messages=USER_MSG)
    assert resp.choices[0].message.content == "small ok"


# ------------------------------------------------------------------ upstream failures


@pytest.mark.parametrize("provider", ["openai", "deepseek", "openrouter"])
def test_upstream_500_is_502_naming_provider(hub, mocks, client, provider):
    mock = mocks[provider]
    model = mock.scenario(unique_model(), error={"status": 500})
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model=f"{provider}/{model}", messages=USER_MSG)
    assert ei.value.status_code == 502
    err = assert_openai_error(ei.value.response.json())
    assert provider in err["message"].lower(), f"502 message does not name the provider: {err}"
    assert mock.requests_for(model), "upstream was never called"

    rec = hub.require_usage(ei.value.response.headers.get("x-request-id"))
    assert rec["status"] == "failed"
    assert rec["http_status"] == 502
    assert rec["error_class"], rec
    assert rec["provider"] == provider
    assert rec["endpoint"] == "chat"
    assert rec["prompt_tokens"] == 0 and rec["completion_tokens"] == 0
    assert len(hub.usage_for_model(f"{provider}/{model}")) == 1, "exactly one record per failed call"


def test_upstream_503_is_5xx(hub, mocks, client):
    model = mocks.xai.scenario(unique_model(), error={"status": 503})
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model=f"xai/{model}", messages=USER_MSG)
    assert ei.value.status_code in (502, 503)
    err = assert_openai_error(ei.value.response.json())
    assert "xai" in err["message"].lower()


def test_upstream_429_passes_retry_after(hub, mocks, client):
    mock = mocks.openai
    model = mock.scenario(unique_model(), error={"status": 429, "retry_after": 7})
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model=f"openai/{model}", messages=USER_MSG)
    assert ei.value.status_code == 429
    assert ei.value.response.headers.get("retry-after") == "7"
    assert_openai_error(ei.value.response.json())
    rec = hub.require_usage(ei.value.response.headers.get("x-request-id"))
    assert rec["status"] == "failed"
    assert rec["http_status"] == 429


def test_upstream_400_is_callers_mistake(hub, mocks, client):
    """An upstream invalid_request_error is the caller's 4xx, not a 5xx."""
    body = {
        "error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    }
    model = mocks.openai.scenario(unique_model(), error={"status": 400, "body": body})
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=f"openai/{model}", messages=USER_MSG)
    assert ei.value.status_code == 400
    assert_openai_error(ei.value.response.json())


def test_healthz_readyz(hub):
    for path in ("/healthz", "/readyz"):
        r = hub.http.get(path)
        assert r.status_code == 200, (path, r.text)


@pytest.mark.parametrize(
    "method,path,auth,body",
    [
        ("GET", "/healthz", False, None),
        ("GET", "/readyz", False, None),
        ("POST", "/v1/chat/completions", False, {"model": "openai/x", "messages": USER_MSG}),  # 401
        ("POST", "/v1/chat/completions", True, b"{"),  # 400
        ("POST", "/v1/chat/completions", True, {"model": "openai/x", "messages": "x"}),  # 400
        ("GET", "/v1/models", True, None),
        ("GET", "/v1/no-such-route", True, None),  # 404
    ],
    ids=["healthz", "readyz", "401", "400-json", "400-field", "models", "404-route"],
)
def test_x_request_id_on_every_response(hub, method, path, auth, body):
    headers = dict(hub.auth()) if auth else {}
    kw = {}
    if isinstance(body, bytes):
        kw["content"] = body
        headers["Content-Type"] = "application/json"
    elif body is not None:
        kw["json"] = body
    r = hub.http.request(method, path, headers=headers, **kw)
    assert r.headers.get("x-request-id"), f"{method} {path} -> {r.status_code} without x-request-id"
    if path.startswith("/v1/") and r.status_code >= 400:
        assert_openai_error(r.json())


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_fallback_to_next_candidate_before_first_byte(hub, mocks, client, stream):
    """Bare `grok-3-mini`: xAI first, OpenRouter (`x-ai/grok-3-mini`) next. xAI failing -> OpenRouter answers."""
    mocks.xai.scenario("grok-3-mini", error={"status": 503})
    mocks.openrouter.scenario("x-ai/grok-3-mini", text="fallback ok", usage={"prompt_tokens": 4, "completion_tokens": 2})
    raw = client.chat.completions.with_raw_response.create(model="grok-3-mini", messages=USER_MSG, stream=stream)
    rid = raw.headers.get("x-request-id")
    if stream:
        content = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        content = raw.parse().choices[0].message.content
    rec = hub.require_usage(rid)
    assert content == "fallback ok"
    assert rec["provider"] == "openrouter"
    assert rec["upstream_model"] == "x-ai/grok-3-mini"
    assert rec["status"] == "success"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (4, 2)
