// Per-call overhead of `hub.chat()` through the native module, against the same call over HTTP to
// `aigne-hub serve`, in one run, on the same hub-mock upstream (0 ms latency).
//
//   cargo build --release -p hub-server -p hub-testkit
//   (cd js/native && npm run build:release)
//   node js/native/bench/overhead.mjs [--calls 4000] [--rounds 5] [--concurrency 32]
//
// Per round and path: sequential latency (one call at a time: median and p99 of the whole
// round trip as the caller sees it) and throughput with `concurrency` calls in flight. Rounds
// alternate the paths so that background load hits both alike; the report gives the median of
// the rounds' medians. A third path, plain HTTP from Node straight to the mock, is the floor: the
// upstream round trip that every path pays.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execSync } from 'node:child_process';

import { Hub } from '../dist/index.js';

const REPO = resolve(fileURLToPath(import.meta.url), '../../../..');
const { values: args } = parseArgs({
  options: {
    calls: { type: 'string', default: '4000' },
    rounds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '32' },
    profile: { type: 'string', default: 'release' },
  },
});
const CALLS = Number(args.calls);
const ROUNDS = Number(args.rounds);
const CONC = Number(args.concurrency);
const BIN = join(REPO, 'target', args.profile);
const ADMIN_KEY = 'sk-bench-admin-0123456789abcdef';

function firstLine(child, re, what) {
  return new Promise((ok, fail) => {
    const rl = createInterface({ input: child.stdout });
    const t = setTimeout(() => fail(new Error(`${what} did not start`)), 60_000);
    rl.on('line', (l) => {
      const m = re.exec(l);
      if (m) {
        clearTimeout(t);
        ok(m);
      }
    });
    child.once('exit', (c) => fail(new Error(`${what} exited with ${c}`)));
  });
}

const mock = spawn(join(BIN, 'hub-mock'), ['--all', '--api-key', 'sk-test'], { stdio: ['ignore', 'pipe', 'inherit'] });
const flavors = JSON.parse((await firstLine(mock, /^\{.*\}$/, 'hub-mock'))[0]);
const base = flavors.openai.base_url;
const env = { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: base };

const dirs = [mkdtempSync(join(tmpdir(), 'bench-native-')), mkdtempSync(join(tmpdir(), 'bench-http-'))];
const hub = await Hub.open({ dataDir: dirs[0], adminKey: ADMIN_KEY, env });
const server = spawn(join(BIN, 'aigne-hub'), ['serve', '--port', '0', '--data-dir', dirs[1]], {
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, ...env, HUB_ADMIN_KEY: ADMIN_KEY, HUB_LOG: 'warn' },
});
const url = (await firstLine(server, /listening on (http:\/\/\S+)/, 'aigne-hub'))[1];

const body = { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] };
const httpBody = JSON.stringify(body);
const paths = {
  native: async () => {
    const r = await hub.chat(body, { apiKey: ADMIN_KEY });
    if (!r.output.content) throw new Error('empty');
  },
  http: async () => {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
      body: httpBody,
    });
    const j = await r.json();
    if (!j.choices?.[0]?.message?.content) throw new Error(`bad: ${r.status}`);
  },
  'mock direct (floor)': async () => {
    const r = await fetch(`${base}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-test' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
    });
    const j = await r.json();
    if (!j.choices?.[0]?.message?.content) throw new Error(`bad: ${r.status}`);
  },
};

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
};
const pct = (a, p) => {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))];
};

async function sequential(f, n) {
  const lat = new Array(n);
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    await f();
    lat[i] = Number(process.hrtime.bigint() - t) / 1000;
  }
  return { p50: median(lat), p99: pct(lat, 99) };
}

async function concurrent(f, n, c) {
  let next = 0;
  const t = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: c }, async () => {
      while (next++ < n) await f();
    }),
  );
  return n / (Number(process.hrtime.bigint() - t) / 1e9);
}

// Warm-up: connection pools, JIT, SQLite.
for (const f of Object.values(paths)) {
  await sequential(f, 300);
  await concurrent(f, 1000, CONC);
}

const results = Object.fromEntries(Object.keys(paths).map((k) => [k, { p50: [], p99: [], rps: [] }]));
for (let r = 0; r < ROUNDS; r++) {
  const order = Object.keys(paths);
  if (r % 2) order.reverse();
  for (const k of order) {
    const s = await sequential(paths[k], CALLS);
    const rps = await concurrent(paths[k], CALLS, CONC);
    results[k].p50.push(s.p50);
    results[k].p99.push(s.p99);
    results[k].rps.push(rps);
    process.stderr.write(`round ${r + 1} ${k}: p50 ${s.p50.toFixed(0)} us, p99 ${s.p99.toFixed(0)} us, ${rps.toFixed(0)} calls/s\n`);
  }
}

let commit = 'unknown';
try {
  commit = execSync('git rev-parse --short HEAD', { cwd: REPO }).toString().trim();
} catch {}
console.log(`\nmachine: ${cpus().length} x ${cpus()[0]?.model}; node ${process.version}; commit ${commit}; ${new Date().toISOString()}`);
console.log(`${ROUNDS} rounds x ${CALLS} calls per path; concurrency ${CONC} for throughput; medians of the rounds\n`);
console.log('| path | sequential p50 (µs) | sequential p99 (µs) | calls/s at concurrency ' + CONC + ' |');
console.log('|---|---:|---:|---:|');
for (const [k, v] of Object.entries(results)) {
  console.log(`| ${k} | ${median(v.p50).toFixed(0)} | ${median(v.p99).toFixed(0)} | ${median(v.rps).toFixed(0)} |`);
}
const floor = median(results['mock direct (floor)'].p50);
const n = median(results.native.p50);
const h = median(results.http.p50);
console.log(
  `\nhub overhead over the floor at p50: native ${(n - floor).toFixed(0)} µs, HTTP ${(h - floor).toFixed(0)} µs ` +
    `(the module saves ${(h - n).toFixed(0)} µs per call)`,
);

await hub.close();
server.kill('SIGTERM');
mock.kill('SIGTERM');
await Promise.all([new Promise((r) => server.once('exit', r)), new Promise((r) => mock.once('exit', r))]);
for (const d of dirs) rmSync(d, { recursive: true, force: true });
