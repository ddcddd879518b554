// The page's runtime: squeezenet's C engine built for WebAssembly (engine.wasm, a few KB) running
// the model file (model.sqz, gzip-compressed; codebook or int8 weights are decoded once, here).
const align = (n) => (n + 15) & ~15;

async function bytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const data = new Uint8Array(await response.arrayBuffer());
  if (data[0] !== 0x1f || data[1] !== 0x8b) return data;  // a host that already gunzipped it
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function load(info) {
  const [{ instance }, model] = await Promise.all([
    WebAssembly.instantiate(await (await fetch("engine.wasm")).arrayBuffer(), {}), bytes(info.model)]);
  const e = instance.exports, memory = e.memory;
  let top = align(e.__heap_base.value);
  const take = (n) => { const at = top; top = align(top + n); return at; };
  const fit = () => {
    const short = top - memory.buffer.byteLength;
    if (short > 0) memory.grow(Math.ceil(short / 65536));
  };
  const modelAt = take(model.length), state = take(e.sqz_model_size());
  fit();
  new Uint8Array(memory.buffer, modelAt, model.length).set(model);
  const arenaBytes = e.sqz_arena_bytes(modelAt), arena = take(arenaBytes);
  fit();
  const status = e.sqz_init(state, modelAt, model.length, arena, arenaBytes);
  if (status !== 0) throw new Error(`the model file was refused (status ${status}): damaged, or for another version`);
  const decodeBytes = e.sqz_decode_bytes(state);
  if (decodeBytes) {
    const cache = take(decodeBytes);
    fit();
    e.sqz_decode(state, cache, decodeBytes);
  }
  const input = e.sqz_input(state), n = info.class_names.length, size = info.image_size * info.image_size * 3;
  return {
    name: "squeezenet's C engine (WebAssembly)",
    run(rgb) {
      new Uint8Array(memory.buffer, input, size).set(rgb);
      e.sqz_run(state);
      return new Float32Array(memory.buffer, e.sqz_logits(state), n).slice();
    },
  };
}
