// Streams: chunks in order, cancellation (break, AbortSignal), backpressure, 200 concurrent.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { ADMIN_KEY, control, eventually, openHub, sleep, startMock, uniqueModel } from './helpers.mjs';

let mock;
let h;
let openai;
const auth = { apiKey: ADMIN_KEY };
const user = (text) => ({ role: 'user', content: text });

before(async () => {
  mock = await startMock();
  h = await openHub(mock);
  openai = control(mock.flavors.openai.origin);
});

after(async () => {
  await h?.close();
  await mock?.stop();
});

async function recordOf(model) {
  const rows = await h.hub.admin.listUsage(5000);
  return rows.find((r) => r.requested_model === `openai/${model}`);
}

describe('chatStream', () => {
  test('yields canonical events, then done with usage after the record is committed', async () => {
    const model = await openai.scenario(uniqueModel(), {
      text: 'one two three four',
      chunks: 4,
      usage: { prompt_tokens: 7, completion_tokens: 4 },
    });
    const chunks = [];
    for await (const c of h.hub.chatStream({ model: `openai/${model}`, messages: [user('hi')] }, auth)) {
      chunks.push(c);
    }
    assert.equal(chunks[0].type, 'start');
    const text = chunks.filter((c) => c.type === 'text_delta').map((c) => c.text).join('');
    assert.equal(text, 'one two three four');
    assert.ok(chunks.some((c) => c.type === 'finish' && c.reason === 'stop'));
    const last = chunks.at(-1);
    assert.equal(last.type, 'done');
    assert.equal(last.usage.prompt_tokens, 7);
    assert.equal(last.usage.completion_tokens, 4);
    const rec = await recordOf(model);
    assert.equal(rec.status, 'success');
    assert.equal(rec.stream, true);
  });

  test('break closes the upstream connection and records a cancelled call', async () => {
    const before = await openai.stats();
    const model = await openai.scenario(uniqueModel(), {
      text: Array.from({ length: 200 }, (_, i) => `w${i}`).join(' '),
      chunks: 200,
      chunk_delay_ms: 10,
    });
    let n = 0;
    for await (const c of h.hub.chatStream({ model: `openai/${model}`, messages: [user('hi')] }, auth)) {
      if (c.type === 'text_delta' && ++n === 3) break;
    }
    const st = await eventually(async () => {
      const s = await openai.stats();
      return s.streams_cancelled_by_client > before.streams_cancelled_by_client ? s : null;
    });
    assert.ok(st, 'the mock saw the client go away');
    assert.ok(st.chunks_sent - before.chunks_sent < 200, 'the stream did not run to its end');
    const rec = await eventually(() => recordOf(model));
    assert.equal(rec.status, 'cancelled');
    assert.equal(rec.http_status, 499);
    assert.ok(rec.completion_tokens > 0, 'what was delivered is metered');
  });

  test('an AbortSignal cancels mid-stream and rejects with its reason', async () => {
    const before = await openai.stats();
    const model = await openai.scenario(uniqueModel(), {
      text: Array.from({ length: 200 }, (_, i) => `w${i}`).join(' '),
      chunks: 200,
      chunk_delay_ms: 10,
    });
    const ac = new AbortController();
    let n = 0;
    await assert.rejects(
      (async () => {
        for await (const c of h.hub.chatStream(
          { model: `openai/${model}`, messages: [user('hi')] },
          { ...auth, signal: ac.signal },
        )) {
          if (c.type === 'text_delta' && ++n === 3) ac.abort();
        }
      })(),
      { name: 'AbortError' },
    );
    const st = await eventually(async () => {
      const s = await openai.stats();
      return s.streams_cancelled_by_client > before.streams_cancelled_by_client ? s : null;
    });
    assert.ok(st, 'the mock saw the client go away');
    const rec = await eventually(() => recordOf(model));
    assert.equal(rec.status, 'cancelled');
  });

  test('an AbortSignal cancels while waiting for the first event', async () => {
    const model = await openai.scenario(uniqueModel(), { text: 'late', first_byte_delay_ms: 5000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const t0 = Date.now();
    await assert.rejects(
      (async () => {
        for await (const _ of h.hub.chatStream(
          { model: `openai/${model}`, messages: [user('hi')] },
          { ...auth, signal: ac.signal },
        )) {
          // nothing arrives before the abort
        }
      })(),
      { name: 'AbortError' },
    );
    assert.ok(Date.now() - t0 < 2000, 'did not wait for the upstream');
  });

  test('backpressure: a slow consumer holds the upstream back', async () => {
    // 1,600 chunks of ~8 KB: 12.8 MB if nothing held the upstream back. What may sit between
    // the mock and the consumer is what the kernel's socket buffers hold (on this machine's
    // loopback about 4 MB, measured), not the response.
    const word = 'x'.repeat(8000);
    const total = 1_600;
    const model = await openai.scenario(uniqueModel(), {
      text: Array.from({ length: total }, () => word).join(' '),
      chunks: total,
    });
    const base = (await openai.stats()).chunks_sent;
    const it = h.hub.chatStream({ model: `openai/${model}`, messages: [user('hi')] }, auth);
    let consumed = 0;
    const take = async (n) => {
      for (let i = 0; i < n; i++) {
        const { value, done } = await it.next();
        if (done) return false;
        if (value.type === 'text_delta') consumed++;
      }
      return true;
    };
    await take(10);
    const rss0 = process.memoryUsage().rss;
    // The consumer stalls: an unbounded reader would pull the whole 24 MB in this time.
    await sleep(1500);
    const stalledAt = consumed;
    const ahead = (await openai.stats()).chunks_sent - base - consumed;
    const rssGrowth = process.memoryUsage().rss - rss0;
    // Reading again makes the upstream move again; then cancel the rest.
    assert.ok(await take(300));
    await it.return();
    console.log(
      `backpressure: consumer stalled at ${stalledAt} chunks; upstream ${ahead} chunks ` +
        `(~${((ahead * 8) / 1024).toFixed(1)} MB) ahead; rss +${(rssGrowth / 1048576).toFixed(1)} MB`,
    );
    assert.ok(consumed >= 300, 'the stream moves again once the consumer reads again');
    assert.ok(ahead < total / 2, `upstream ran ${ahead} of ${total} chunks ahead of a stalled consumer`);
    assert.ok(rssGrowth < 16 * 1024 * 1024, `rss grew ${rssGrowth} bytes while the consumer stalled`);
  });

  test('200 concurrent streams all complete and are all recorded', async () => {
    const model = await openai.scenario(uniqueModel(), {
      text: Array.from({ length: 20 }, (_, i) => `w${i}`).join(' '),
      chunks: 20,
      chunk_delay_ms: 2,
    });
    const one = async () => {
      let text = '';
      let done = null;
      for await (const c of h.hub.chatStream({ model: `openai/${model}`, messages: [user('hi')] }, auth)) {
        if (c.type === 'text_delta') text += c.text;
        if (c.type === 'done') done = c;
      }
      return { text, done };
    };
    const results = await Promise.all(Array.from({ length: 200 }, one));
    const expected = Array.from({ length: 20 }, (_, i) => `w${i}`).join(' ');
    assert.ok(results.every((r) => r.text === expected && r.done));
    const rows = (await h.hub.admin.listUsage(5000)).filter((r) => r.requested_model === `openai/${model}`);
    assert.equal(rows.length, 200);
    assert.ok(rows.every((r) => r.status === 'success'));
  });
});
