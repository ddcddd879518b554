// Times the C engine's WebAssembly build in Node on one model file: one image (raw RGB bytes at
// the model's size, else a fixed random one), `runs` calls after a warm-up; prints JSON
// {p50_ms, min_ms, logits}.
//   node benchmarks/engine_speed.mjs engine.wasm model.sqz [runs] [image.rgb]
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";

const [wasmPath, modelPath, runsArg, imagePath] = process.argv.slice(2);
const runs = Number(runsArg || 50);
let model = readFileSync(modelPath);
if (model[0] === 0x1f && model[1] === 0x8b) model = gunzipSync(model);
const { instance } = await WebAssembly.instantiate(readFileSync(wasmPath), {});
const e = instance.exports, memory = e.memory, align = (n) => (n + 15) & ~15;
let top = align(e.__heap_base.value);
const take = (n) => { const at = top; top = align(top + n); if (top > memory.buffer.byteLength) memory.grow(Math.ceil((top - memory.buffer.byteLength) / 65536)); return at; };
const at = take(model.length), state = take(e.sqz_model_size());
new Uint8Array(memory.buffer, at, model.length).set(model);
const arenaBytes = e.sqz_arena_bytes(at), arena = take(arenaBytes);
const status = e.sqz_init(state, at, model.length, arena, arenaBytes);
if (status) throw new Error(`sqz_init: ${status}`);
const n = e.sqz_decode_bytes(state);
if (n && !process.env.SQZ_NO_CACHE) e.sqz_decode(state, take(n), n);
const size = new DataView(memory.buffer).getUint32(at + 16, true);
const pixels = new Uint8Array(memory.buffer, e.sqz_input(state), size * size * 3);
let seed = 1;
for (let i = 0; i < pixels.length; i++) { seed = (seed * 1103515245 + 12345) >>> 0; pixels[i] = seed >>> 24; }
if (imagePath) pixels.set(readFileSync(imagePath).subarray(0, pixels.length));
const saved = pixels.slice();
const times = [];
for (let i = 0; i < runs + 5; i++) {
  new Uint8Array(memory.buffer, e.sqz_input(state), saved.length).set(saved);  // the run overwrites the input
  const t0 = performance.now();
  e.sqz_run(state);
  if (i >= 5) times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
const classes = new DataView(memory.buffer).getUint32(at + 24, true);
const logits = Array.from(new Float32Array(memory.buffer, e.sqz_logits(state), classes));
console.log(JSON.stringify({ p50_ms: times[times.length >> 1], min_ms: times[0], runs, logits }));
