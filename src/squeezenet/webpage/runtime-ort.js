// The page's runtime: onnxruntime-web (WebAssembly) running model.onnx, whose graph takes uint8
// RGB pixels (N, H, W, 3) and does its own scaling and normalisation.
import * as ort from "./ort/ort.wasm.bundle.min.mjs";

// The bundle carries its loader; only the binary is fetched, from beside it.
ort.env.wasm.wasmPaths = { wasm: new URL("./ort/ort-wasm-simd-threaded.wasm", import.meta.url).href };
// Threads need a cross-origin-isolated page (COOP/COEP headers, as `squeezenet serve` sends).
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

export async function load(info) {
  const session = await ort.InferenceSession.create(info.model, { executionProviders: ["wasm"] });
  const S = info.image_size;
  return {
    name: `onnxruntime-web, ${ort.env.wasm.numThreads} thread(s)`,
    async run(rgb) {
      const out = await session.run({ [session.inputNames[0]]: new ort.Tensor("uint8", rgb, [1, S, S, 3]) });
      return out[session.outputNames[0]].data;
    },
  };
}
