// The real `@aigne/aigne-hub` client (pinned in package.json) against the real `aigne-hub` binary over
// a real socket, with a `hub-mock` OpenAI upstream. Asserts what the client's own API returns.
//
// Run: HUB_BIN=target/debug/aigne-hub HUB_MOCK_BIN=target/debug/hub-mock node --test tests/aigne-client
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";

import { AIGNEHubChatModel, AIGNEHubImageModel } from "@aigne/aigne-hub";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const HUB_BIN = process.env.HUB_BIN || join(ROOT, "target/debug/aigne-hub");
const MOCK_BIN = process.env.HUB_MOCK_BIN || join(ROOT, "target/debug/hub-mock");
const ADMIN_KEY = `sk-aigne-client-${randomUUID()}`;
const APP_DID = "z1aigneClientTestApp";
// 1x1 PNG
const PNG_B64 =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

const children = [];
let dataDir;
let hubUrl;
let mockOrigin;
let mockBaseUrl;
let cleanEnv;

/** Starts a child and resolves with the first stdout line `pick` accepts. */
function start(bin, args, env, pick) {
  const child = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`${bin} did not start:\n${stderr}`)), 30_000);
    child.on("exit", (code) => fail(new Error(`${bin} exited ${code}:\n${stderr}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const got = pick(line);
      if (got) {
        clearTimeout(timer);
        ok(got);
      }
    });
  });
}

function scenario(model, script) {
  return fetch(`${mockOrigin}/__mock/scenarios`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, script }),
  }).then((r) => assert.ok(r.ok, `mock rejected scenario: ${r.status}`));
}

async function mockRequestsFor(model) {
  const all = await (await fetch(`${mockOrigin}/__mock/requests`)).json();
  return all.map((r) => ({ ...r, body: typeof r.body === "string" && r.body ? JSON.parse(r.body) : r.body })).filter((r) => r.body?.model === model);
}

function usageRecords() {
  const out = execFileSync(HUB_BIN, ["admin", "usage", "list", "--data-dir", dataDir, "--limit", "500", "--json"], {
    env: { ...process.env, HUB_ADMIN_KEY: ADMIN_KEY },
  }).toString();
  return JSON.parse(out.slice(out.indexOf("[")));
}

function unique(prefix = "t") {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

function chatModel(model, extra = {}) {
  return new AIGNEHubChatModel({
    baseURL: hubUrl,
    apiKey: ADMIN_KEY,
    model: `aignehub:openai/${model}`,
    ...extra,
  });
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "aigne-client-"));
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/_API_KEY$|_BASE_URL$|^BLOCKLET_AIGNE_|^AIGNE_HUB_|^AWS_/.test(k)),
  );
  const mock = await start(MOCK_BIN, ["--flavor", "openai", "--api-key", "sk-test"], clean, (line) => {
    try {
      return JSON.parse(line).openai;
    } catch {
      return undefined;
    }
  });
  mockOrigin = mock.origin;
  mockBaseUrl = mock.base_url;
  cleanEnv = clean;
  hubUrl = await start(
    HUB_BIN,
    ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", dataDir],
    { ...clean, HUB_ADMIN_KEY: ADMIN_KEY, OPENAI_API_KEY: "sk-test", OPENAI_BASE_URL: mock.base_url },
    (line) => line.match(/aigne-hub listening on (http:\/\/[0-9.]+:\d+)/)?.[1],
  );
  // `models()` reads the hub URL from the environment, not from the instance; the calling app's
  // DID comes from BLOCKLET_APP_PID (the `index.js` dispatcher replaces `clientOptions`).
  process.env.AIGNE_HUB_API_URL = hubUrl;
  process.env.BLOCKLET_APP_PID = APP_DID;
});

after(() => {
  for (const c of children) c.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe("@aigne/aigne-hub against the hub", () => {
  test("chat, JSON: text, usage and model come back through the client", async () => {
    const m = unique();
    await scenario(m, { text: "Hello from the hub", usage: { prompt_tokens: 11, completion_tokens: 4 } });
    const out = await chatModel(m).invoke({ messages: [{ role: "user", content: "say hello" }] });
    assert.equal(out.text, "Hello from the hub");
    assert.equal(out.usage.inputTokens, 11);
    assert.equal(out.usage.outputTokens, 4);
    assert.equal(out.modelWithProvider, `openai/${m}`);

    const [up] = await mockRequestsFor(m);
    assert.deepEqual(up.body.messages, [{ role: "user", content: "say hello" }]);
    // The client's default `parallelToolCalls: true` must not reach a request without tools.
    assert.equal(up.body.parallel_tool_calls, undefined);

    const rec = usageRecords().find((r) => r.requested_model === `openai/${m}`);
    assert.ok(rec, "a usage record exists");
    assert.equal(rec.ingress, "aigne");
    assert.equal(rec.app, APP_DID);
    assert.equal(rec.status, "success");
    assert.equal(rec.prompt_tokens, 11);
  });

  test("chat, streaming: deltas arrive in pieces and merge to the full output", async () => {
    const m = unique();
    await scenario(m, { text: "one two three four", chunks: 4, usage: { prompt_tokens: 7, completion_tokens: 4 } });
    const stream = await chatModel(m).invoke({ messages: [{ role: "user", content: "count" }] }, { streaming: true });
    const pieces = [];
    let last;
    for await (const chunk of stream) {
      if (chunk.delta?.text?.text) pieces.push(chunk.delta.text.text);
      if (chunk.delta?.json) last = { ...last, ...chunk.delta.json };
    }
    assert.ok(pieces.length >= 2, `text streamed in pieces: ${JSON.stringify(pieces)}`);
    assert.equal(pieces.join(""), "one two three four");
    assert.equal(last.text, "one two three four");
    assert.equal(last.usage.inputTokens, 7);
    assert.equal(last.usage.outputTokens, 4);
    assert.equal(last.modelWithProvider, `openai/${m}`);
    const rec = usageRecords().find((r) => r.requested_model === `openai/${m}`);
    assert.equal(rec?.stream, true);
    assert.equal(rec?.ingress, "aigne");
  });

  test("tool calls come back with object arguments the client validates", async () => {
    const m = unique();
    await scenario(m, { tool_calls: [{ id: "call_1", name: "get_weather", arguments: '{"city":"Paris"}' }] });
    const tools = [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "weather of a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      },
    ];
    const out = await chatModel(m).invoke({
      messages: [
        { role: "user", content: "weather in Paris?" },
        {
          role: "agent",
          toolCalls: [{ id: "call_0", type: "function", function: { name: "get_weather", arguments: { city: "Rome" } } }],
        },
        { role: "tool", toolCallId: "call_0", content: "20C" },
      ],
      tools,
      toolChoice: "auto",
    });
    assert.equal(out.toolCalls.length, 1);
    assert.equal(out.toolCalls[0].function.name, "get_weather");
    assert.deepEqual(out.toolCalls[0].function.arguments, { city: "Paris" });

    const [up] = await mockRequestsFor(m);
    assert.equal(up.body.messages[1].role, "assistant");
    assert.equal(up.body.messages[1].tool_calls[0].function.arguments, '{"city":"Rome"}');
    assert.equal(up.body.messages[2].tool_call_id, "call_0");
    assert.equal(up.body.tools[0].function.name, "get_weather");
  });

  test("images: the file part of a user message reaches the provider as an image", async () => {
    const m = unique();
    await scenario(m, { text: "a pixel" });
    const out = await chatModel(m).invoke({
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "what is this?" },
            { type: "file", data: PNG_B64, mimeType: "image/png" },
          ],
        },
      ],
    });
    assert.equal(out.text, "a pixel");
    const [up] = await mockRequestsFor(m);
    assert.equal(up.body.messages[0].content[1].image_url.url, `data:image/png;base64,${PNG_B64}`);
  });

  test("image generation through AIGNEHubImageModel", async () => {
    const m = unique("img");
    await scenario(m, { image_b64: PNG_B64 });
    const model = new AIGNEHubImageModel({
      baseURL: hubUrl,
      apiKey: ADMIN_KEY,
      model: `aignehub:openai/${m}`,
    });
    const out = await model.invoke({ prompt: "a red pixel", outputFileType: "file" });
    assert.equal(out.images.length, 1);
    assert.equal(out.images[0].type, "file");
    assert.equal(out.images[0].data, PNG_B64);
    assert.equal(out.images[0].mimeType, "image/png");
    const [up] = await mockRequestsFor(m);
    assert.equal(up.body.prompt, "a red pixel");
    const rec = usageRecords().find((r) => r.requested_model === `openai/${m}`);
    assert.equal(rec?.images, 1);
    assert.equal(rec?.app, APP_DID);
  });

  test("models(): the catalog passes the client's schema", async () => {
    const chat = await chatModel("gpt-4o-mini").models();
    assert.ok(chat.length > 0);
    const mini = chat.find((x) => x.provider === "openai" && x.model === "gpt-4o-mini");
    assert.ok(mini, "openai/gpt-4o-mini is listed");
    assert.equal(typeof mini.input_credits_per_token, "string");
    assert.deepEqual(mini.status, { available: true });
    assert.ok(chat.every((x) => x.type === "chat"));
    const images = await AIGNEHubImageModel.models();
    assert.ok(images.some((x) => x.model === "gpt-image-1"));
  });

  test("a wrong key fails with the hub's message, once", async () => {
    const m = unique();
    const model = chatModel(m, { apiKey: "sk-wrong" });
    await assert.rejects(
      model.invoke({ messages: [{ role: "user", content: "hi" }] }),
      (e) => /User not authenticated/.test(e.message),
    );
    assert.equal((await mockRequestsFor(m)).length, 0);
  });

  test("upstream failure mid-stream surfaces as the stream's error", async () => {
    const m = unique();
    await scenario(m, { text: "a b c d e f", chunks: 6, error_after_chunks: 2 });
    const stream = await chatModel(m).invoke({ messages: [{ role: "user", content: "x" }] }, { streaming: true });
    await assert.rejects(async () => {
      for await (const _ of stream) {
        // drain
      }
    }, /openai/);
  });
});

describe("@aigne/aigne-hub against a hub in credits mode", () => {
  let url;
  let dir;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "aigne-client-credits-"));
    url = await start(
      HUB_BIN,
      ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", dir],
      {
        ...cleanEnv,
        HUB_ADMIN_KEY: ADMIN_KEY,
        OPENAI_API_KEY: "sk-test",
        OPENAI_BASE_URL: mockBaseUrl,
        HUB_BILLING_MODE: "credits",
        HUB_PAYMENT_LINK: "https://pay.example/buy",
        HUB_CREDIT_PREFIX: "$",
      },
      (line) => line.match(/aigne-hub listening on (http:\/\/[0-9.]+:\d+)/)?.[1],
    );
  });
  after(() => dir && rmSync(dir, { recursive: true, force: true }));

  test("402 NOT_ENOUGH with the buy link; after a grant the call reports its cost", async () => {
    await scenario("gpt-4o-mini", { text: "paid", usage: { prompt_tokens: 1000, completion_tokens: 200 } });
    const model = new AIGNEHubChatModel({ baseURL: url, apiKey: ADMIN_KEY, model: "aignehub:openai/gpt-4o-mini" });
    const input = { messages: [{ role: "user", content: "hi" }] };
    await assert.rejects(model.invoke(input), (e) => {
      assert.equal(e.type, "NOT_ENOUGH");
      assert.match(e.message, /https:\/\/pay\.example\/buy/);
      return true;
    });

    const info = await (await fetch(`${url}/api/user/info`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json();
    assert.equal(info.enableCredit, true);
    assert.equal(info.paymentLink, "https://pay.example/buy");
    execFileSync(HUB_BIN, ["admin", "credits", "grant", "--data-dir", dir, "--user", info.user.did, "--amount", "5"], {
      env: { ...cleanEnv, HUB_ADMIN_KEY: ADMIN_KEY },
    });

    const out = await model.invoke(input);
    assert.equal(out.text, "paid");
    assert.ok(out.usage.aigneHubCredits > 0, JSON.stringify(out.usage));
    assert.equal(out.usage.creditPrefix, "$");

    // The catalog still passes the client's schema, now with real rates.
    process.env.AIGNE_HUB_API_URL = url;
    try {
      const models = await model.models();
      const mini = models.find((m) => m.provider === "openai" && m.model === "gpt-4o-mini");
      assert.ok(Number(mini.input_credits_per_token) > 0);
    } finally {
      process.env.AIGNE_HUB_API_URL = hubUrl;
    }
  });
});
