// Classifies images in the page, offline. The runtime (runtime.js: squeezenet's C engine as
// WebAssembly, or onnxruntime-web) takes uint8 RGB pixels at the model's size and normalises them
// itself, so this script only resizes the shorter side and crops the centre, as `squeezenet
// predict` does.
import * as runtime from "./runtime.js";

const status = document.getElementById("status");
const results = document.getElementById("results");

async function load() {
  const info = await (await fetch("model-info.json")).json();
  const t0 = performance.now();
  const model = await runtime.load(info);
  status.textContent = `${info.arch}, ${info.class_names.length} classes, ${info.precision}: ready ` +
    `(loaded in ${(performance.now() - t0).toFixed(0)} ms, ${model.name})`;
  return { info, model };
}
const ready = load().catch((e) => { status.textContent = `cannot load the model: ${e.message || e}`; throw e; });

// The model's input for one decoded image: shorter side to resize_size, centre image_size crop,
// transparency over white, RGB bytes.
function pixels(image, info, canvas) {
  const S = info.image_size, R = info.resize_size || S;
  const w = image.width, h = image.height;
  const scale = R / Math.min(w, h);
  const nw = Math.max(R, Math.round(w * scale)), nh = Math.max(R, Math.round(h * scale));
  const left = Math.floor((nw - R) / 2) + Math.floor((R - S) / 2);
  const top = Math.floor((nh - R) / 2) + Math.floor((R - S) / 2);
  const fx = w / nw, fy = h / nh;
  canvas.width = S; canvas.height = S;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, S, S);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(image, left * fx, top * fy, S * fx, S * fy, 0, 0, S, S);
  const rgba = ctx.getImageData(0, 0, S, S).data;
  const rgb = new Uint8Array(S * S * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

function topK(logits, names, k) {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e, i) => ({ label: names[i], index: i, probability: e / sum }))
    .sort((a, b) => b.probability - a.probability).slice(0, k);
}

// Classifies a Blob (a file, or a fetched URL): {name, top, ms} or {name, error}.
async function classify(blob, name, canvas = document.createElement("canvas")) {
  const { info, model } = await ready;
  let image;
  try {
    image = await createImageBitmap(blob, { imageOrientation: "from-image" });  // EXIF upright
  } catch (e) {
    return { name, error: `cannot decode ${name}: not an image this browser can read` };
  }
  const input = pixels(image, info, canvas);
  image.close();
  const t0 = performance.now();
  const logits = await model.run(input);
  const ms = performance.now() - t0;
  return { name, top: topK(logits, info.class_names, info.top_k), ms, logits: Array.from(logits) };
}

function show(result, canvas) {
  const div = document.createElement("div");
  div.className = "result";
  if (result.error) {
    div.innerHTML = `<p class="error"></p>`;
    div.firstChild.textContent = result.error;
  } else {
    div.appendChild(canvas);
    const table = document.createElement("table");
    const caption = table.createCaption();
    caption.textContent = `${result.name} (${result.ms.toFixed(1)} ms)`;
    for (const t of result.top) {
      const row = table.insertRow();
      row.insertCell().textContent = t.label;
      row.insertCell().textContent = `${(t.probability * 100).toFixed(1)}%`;
    }
    div.appendChild(table);
  }
  results.prepend(div);
}

async function classifyFiles(files) {
  for (const file of files) {
    const canvas = document.createElement("canvas");
    show(await classify(file, file.name, canvas), canvas);
  }
}

const drop = document.getElementById("drop");
const input = document.getElementById("files");
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
input.addEventListener("change", () => classifyFiles([...input.files]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  classifyFiles([...e.dataTransfer.files]);
});

// For scripts and tests: classify images by URL, e.g. `await squeezenet.classifyUrl("cat.png")`.
window.squeezenet = {
  ready: ready.then(() => true),
  async classifyUrl(url) {
    const response = await fetch(url);
    return classify(await response.blob(), url.split("/").pop());
  },
};
