// No leak: 20,000 calls (chat, and streams run to the end or cancelled), RSS steady.
//
// Bound: after a 2,000-call warm-up (allocator arenas, SQLite page cache, connection pool and JIT
// reach their working size), RSS may grow by at most 48 MB over the next 18,000 calls (measured:
// +19 MB; over 100,000 calls it levels off at +30 MB after ~40,000). A leak of
// one response (~1 KB) per call would add ~18 MB per 1 KB leaked, and a leaked native stream
// (its upstream connection and buffers) far more.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';

import { ADMIN_KEY, control, openHub, startMock, uniqueModel } from './helpers.mjs';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');

let mock;
let h;
let openai;

before(async () => {
  mock = await startMock();
  openai = control(mock.flavors.openai.origin);
  h = await openHub(mock);
});

after(async () => {
  await h?.close();
  await mock?.stop();
});

const TOTAL = Number(process.env.LEAK_CALLS ?? 20_000);
const WARMUP = 2_000;
const CONCURRENCY = 32;
const BOUND = 48 * 1024 * 1024;

test(`RSS steady over ${TOTAL} calls`, { timeout: 120_000 }, async () => {
  const model = await openai.scenario(uniqueModel(), {
    text: 'a short answer of several words',
    chunks: 6,
    usage: { prompt_tokens: 9, completion_tokens: 6 },
  });
  const req = { model: `openai/${model}`, messages: [{ role: 'user', content: 'hi' }] };
  const auth = { apiKey: ADMIN_KEY };
  let next = 0;
  let failures = 0;
  let rssWarm = 0;
  const samples = [];
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= TOTAL) return;
      try {
        if (i % 10 === 0) {
          // A stream, read to the end.
          for await (const _ of h.hub.chatStream(req, auth)) {
            // drain
          }
        } else if (i % 10 === 5) {
          // A stream cancelled after its first event.
          for await (const _ of h.hub.chatStream(req, auth)) break;
        } else {
          const r = await h.hub.chat(req, auth);
          if (r.output.content !== 'a short answer of several words') failures++;
        }
      } catch {
        failures++;
      }
      if (i === WARMUP || i % 5000 === 0) {
        gc();
        const rss = process.memoryUsage().rss;
        if (i === WARMUP) rssWarm = rss;
        samples.push([i, rss]);
      }
    }
  };
  const t0 = Date.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  gc();
  const rssEnd = process.memoryUsage().rss;
  const secs = (Date.now() - t0) / 1000;
  console.log(
    `leak: ${TOTAL} calls in ${secs.toFixed(1)} s; rss after warm-up ${(rssWarm / 1048576).toFixed(1)} MB, ` +
      `at end ${(rssEnd / 1048576).toFixed(1)} MB; samples ${samples
        .map(([i, r]) => `${i}:${(r / 1048576).toFixed(0)}`)
        .join(' ')}`,
  );
  assert.equal(failures, 0);
  assert.ok(rssEnd - rssWarm < BOUND, `rss grew ${((rssEnd - rssWarm) / 1048576).toFixed(1)} MB`);
});
