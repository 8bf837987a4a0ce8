// Copies the cdylib that `cargo build -p hub-node [--release]` produced in the workspace's
// target dir to the file name the generated loader (native.cjs) looks for first:
// `hub-node.<platform>-<arch>[-gnu|-musl].node` beside it.
//
// Why not `napi build` every time: @napi-rs/cli always passes `--target <triple>` to cargo, which
// compiles every dependency a second time under target/<triple>/ instead of reusing the
// workspace's build. `npm run build:napi` still regenerates the loader and `.d.cts` (committed).
//
//   node scripts/place-binary.mjs [debug|release]
import { copyFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = resolve(fileURLToPath(import.meta.url), '..');
const repo = resolve(here, '../../..');
const profile = process.argv[2] ?? 'debug';
const dir = join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), profile);

const lib = { linux: 'libhub_node.so', darwin: 'libhub_node.dylib', win32: 'hub_node.dll' }[process.platform];
if (!lib) throw new Error(`unsupported platform ${process.platform}`);
const src = join(dir, lib);
if (!existsSync(src)) throw new Error(`${src} not found: run \`cargo build -p hub-node${profile === 'release' ? ' --release' : ''}\``);

let abi = '';
if (process.platform === 'linux') {
  abi = process.report.getReport().header.glibcVersionRuntime ? '-gnu' : '-musl';
} else if (process.platform === 'win32') {
  abi = '-msvc';
}
const dest = join(here, '..', `hub-node.${process.platform}-${process.arch}${abi}.node`);
copyFileSync(src, dest);
console.error(`placed ${src} -> ${dest}`);
