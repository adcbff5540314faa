// The segany demo page: embed once on the server, decode every click in the browser.
//
// Query parameters: ?image=<url> (same origin) picks the first image (default /sample.png); ?threads=N sets
// onnxruntime-web's wasm threads (default 1: deterministic, and no worker start-up).
// Test hooks on window.segany: ready (a promise), last (the last decode: masks, scores, picked index, size),
// lastPrompt (what was decoded, original pixels), drawnMask() (the mask layer's pixels as 0/1), drawnMaskRle().

import * as ort from "/static/ort/ort.wasm.min.mjs";
import {
  SeganyDecoder,
  maskToCocoRle,
  maskToPngBlob,
  parseEmbedding,
} from "/static/segany-decoder.js";

const params = new URLSearchParams(location.search);
ort.env.wasm.wasmPaths = "/static/ort/";
ort.env.wasm.numThreads = Math.max(1, Number(params.get("threads") ?? 1));

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image");
const maskCanvas = $("mask");
const marksCanvas = $("marks");
const DRAG_PIXELS = 6; // a press that moves less than this (screen px) is a click, not a box
const MASK_RGBA = [30, 144, 255, 140];

const state = {
  imageId: null,
  embedding: null,
  width: 0,
  height: 0,
  points: [],
  labels: [],
  box: null,
  history: [], // snapshots of {points, labels, box} for undo
  result: null,
  picked: 0,
  decodes: 0,
};

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

const decoderPromise = SeganyDecoder.create(ort, "/decoder.onnx", {
  sessionOptions: { executionProviders: ["wasm"], graphOptimizationLevel: "all" },
});

async function loadImage(blob) {
  status("embedding the image on the server…");
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  const response = await fetch("/embed", { method: "POST", body: blob });
  const info = await response.json();
  if (!response.ok) throw new Error(info.error ?? `embed failed: HTTP ${response.status}`);
  const containerResponse = await fetch(`/embedding/${info.id}?dtype=float16`);
  if (!containerResponse.ok) throw new Error(`embedding download failed: HTTP ${containerResponse.status}`);
  const bytes = await containerResponse.arrayBuffer();
  const embedding = parseEmbedding(bytes);
  const [h, w] = embedding.originalSize;
  Object.assign(state, { imageId: info.id, embedding, width: w, height: h, result: null });
  resetPrompt();
  for (const canvas of [imageCanvas, maskCanvas, marksCanvas]) {
    canvas.width = w;
    canvas.height = h;
  }
  // the server applied EXIF orientation; draw the bitmap at the embedded size so the frames agree
  imageCanvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
  redraw();
  await decoderPromise;
  status(`${w}x${h}, embedding ${(bytes.byteLength / 2 ** 20).toFixed(2)} MiB (fp16). Click on the image.`);
}

function resetPrompt() {
  state.points = [];
  state.labels = [];
  state.box = null;
  state.history = [];
  state.result = null;
}

function snapshot() {
  state.history.push({ points: state.points.slice(), labels: state.labels.slice(), box: state.box });
}

function currentPrompt() {
  return {
    points: state.points.map((p) => p.slice()),
    labels: state.labels.slice(),
    box: state.box ? state.box.slice() : null,
    multimask: $("multimask").checked,
  };
}

let decodeChain = Promise.resolve();

function decodeNow() {
  // serialise decodes: a fast clicker gets every intermediate mask, in order
  decodeChain = decodeChain.then(async () => {
    if (!state.points.length && !state.box) {
      state.result = null;
      redraw();
      return;
    }
    const decoder = await decoderPromise;
    const prompt = currentPrompt();
    const started = performance.now();
    const result = await decoder.decode(state.embedding, prompt);
    state.result = result;
    state.picked = result.best;
    state.decodes += 1;
    window.segany.lastPrompt = prompt;
    status(`decoded in ${(performance.now() - started).toFixed(0)} ms; scores ${[...result.scores].map((s) => s.toFixed(3)).join(", ")}`);
    redraw();
  }).catch((err) => status(String(err.message ?? err), true));
  return decodeChain;
}

function redraw() {
  drawMask();
  drawMarks();
  drawCandidates();
  const has = Boolean(state.result);
  $("download-png").disabled = !has;
  $("download-rle").disabled = !has;
  $("undo").disabled = state.history.length === 0;
  $("clear").disabled = !state.points.length && !state.box;
  window.segany.last = has
    ? {
        mask: state.result.masks[state.picked],
        width: state.result.width,
        height: state.result.height,
        picked: state.picked,
        scores: Array.from(state.result.scores),
        decodes: state.decodes,
      }
    : null;
}

function paint(ctx, mask, width, height, rgba) {
  const image = ctx.createImageData(width, height);
  const px = image.data;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) {
      px[4 * i] = rgba[0];
      px[4 * i + 1] = rgba[1];
      px[4 * i + 2] = rgba[2];
      px[4 * i + 3] = rgba[3];
    }
  }
  ctx.putImageData(image, 0, 0);
}

function drawMask() {
  const ctx = maskCanvas.getContext("2d", { willReadFrequently: true });
  ctx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  if (state.result) paint(ctx, state.result.masks[state.picked], state.width, state.height, MASK_RGBA);
}

function drawMarks() {
  const ctx = marksCanvas.getContext("2d");
  ctx.clearRect(0, 0, marksCanvas.width, marksCanvas.height);
  const r = Math.max(4, Math.round(Math.max(state.width, state.height) / 160));
  ctx.lineWidth = Math.max(2, r / 2);
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = state.labels[i] === 1 ? "#1db954" : "#e0245e";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  });
}

function drawCandidates() {
  const holder = $("candidates");
  holder.replaceChildren();
  const result = state.result;
  if (!result || result.masks.length < 2) return;
  result.masks.forEach((mask, i) => {
    const figure = document.createElement("figure");
    figure.className = i === state.picked ? "picked" : "";
    const canvas = document.createElement("canvas");
    canvas.width = result.width;
    canvas.height = result.height;
    paint(canvas.getContext("2d"), mask, result.width, result.height, [255, 255, 255, 255]);
    const caption = document.createElement("figcaption");
    caption.textContent = `#${i + 1} score ${result.scores[i].toFixed(3)}`;
    figure.append(canvas, caption);
    figure.addEventListener("click", () => {
      state.picked = i;
      redraw();
    });
    holder.append(figure);
  });
}

function toImage(event) {
  const rect = imageCanvas.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * imageCanvas.width) / rect.width,
    ((event.clientY - rect.top) * imageCanvas.height) / rect.height,
  ];
}

let press = null;

imageCanvas.addEventListener("contextmenu", (event) => event.preventDefault());
imageCanvas.addEventListener("pointerdown", (event) => {
  if (!state.embedding) return;
  press = { x: event.clientX, y: event.clientY, at: toImage(event), button: event.button, shift: event.shiftKey };
  imageCanvas.setPointerCapture(event.pointerId);
});
imageCanvas.addEventListener("pointermove", (event) => {
  if (!press || press.button !== 0) return;
  if (Math.hypot(event.clientX - press.x, event.clientY - press.y) < DRAG_PIXELS) return;
  const [x, y] = toImage(event);
  const ctx = marksCanvas.getContext("2d");
  drawMarks();
  ctx.setLineDash([6, 4]);
  ctx.strokeStyle = "#ffd400";
  ctx.strokeRect(press.at[0], press.at[1], x - press.at[0], y - press.at[1]);
  ctx.setLineDash([]);
});
imageCanvas.addEventListener("pointerup", (event) => {
  if (!press) return;
  const start = press;
  press = null;
  const end = toImage(event);
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  snapshot();
  if (start.button === 0 && Math.hypot(event.clientX - start.x, event.clientY - start.y) >= DRAG_PIXELS) {
    const xs = [clamp(start.at[0], state.width), clamp(end[0], state.width)].sort((a, b) => a - b);
    const ys = [clamp(start.at[1], state.height), clamp(end[1], state.height)].sort((a, b) => a - b);
    state.box = [xs[0], ys[0], xs[1], ys[1]];
  } else {
    const negative = start.button === 2 || start.shift;
    state.points.push(start.at);
    state.labels.push(negative ? 0 : 1);
  }
  decodeNow();
});

$("undo").addEventListener("click", () => {
  const previous = state.history.pop();
  if (!previous) return;
  Object.assign(state, previous);
  decodeNow();
});
$("clear").addEventListener("click", () => {
  snapshot();
  state.points = [];
  state.labels = [];
  state.box = null;
  decodeNow();
});
$("multimask").addEventListener("change", () => decodeNow());
$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) loadImage(file).catch((err) => status(String(err.message ?? err), true));
});

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

$("download-png").addEventListener("click", async () => {
  const r = state.result;
  download(await maskToPngBlob(r.masks[state.picked], r.width, r.height), "mask.png");
});
$("download-rle").addEventListener("click", () => {
  const r = state.result;
  const rle = maskToCocoRle(r.masks[state.picked], r.width, r.height);
  const body = JSON.stringify({ image_id: state.imageId, score: r.scores[state.picked], segmentation: rle });
  download(new Blob([body], { type: "application/json" }), "mask.rle.json");
});

function drawnMask() {
  const { width, height } = maskCanvas;
  const alpha = maskCanvas.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, width, height).data;
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i++) mask[i] = alpha[4 * i + 3] > 0 ? 1 : 0;
  return mask;
}

async function start() {
  const source = params.get("image") ?? "/sample.png";
  const response = await fetch(source);
  if (!response.ok) throw new Error(`cannot load ${source}: HTTP ${response.status}`);
  await loadImage(await response.blob());
}

window.segany = {
  state,
  last: null,
  lastPrompt: null,
  decodeNow,
  idle: () => decodeChain,
  drawnMask,
  drawnMaskRle: () => maskToCocoRle(drawnMask(), maskCanvas.width, maskCanvas.height),
  crossOriginIsolated: window.crossOriginIsolated,
};
window.segany.ready = start().then(
  () => true,
  (err) => {
    status(String(err.message ?? err), true);
    throw err;
  },
);
