// The JS decoder (onnxruntime-node) against the Python predictor's masks for the same prompts.
//
// Fixtures come from export/test/make_fixtures.py (random test-tiny weights): run here with SEGANY_PYTHON (default:
// the repo's .venv/bin/python, else python3) into a temp dir, or read from SEGANY_FIXTURES when it is set.
// Tolerance: IoU >= 0.99 per mask (two runtimes may round logits near 0 either way; fp16 embeddings move a few
// boundary pixels).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { inflateSync } from "node:zlib";

import * as ort from "onnxruntime-node";

import {
  SeganyDecoder,
  buildFeeds,
  cocoRleToMask,
  inputSizeFor,
  lowResOf,
  maskIou,
  maskToCocoRle,
  maskToPng,
  parseEmbedding,
} from "../segany-decoder.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "..", "..");
const MIN_IOU = 0.99;

let dir;
let ownDir = false;
let manifest;
let multi;
let single;

function python() {
  if (process.env.SEGANY_PYTHON) return process.env.SEGANY_PYTHON;
  const venv = join(REPO, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

const read = (name) => readFileSync(join(dir, name));
const u8 = (name) => new Uint8Array(read(name));
const f32 = (name) => {
  const b = read(name);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

/** `good` (a container) with its JSON header changed by `change`: the data, its length and CRC untouched. */
function withHeader(good, change) {
  const headLen = new DataView(good.buffer, good.byteOffset, good.byteLength).getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(good.subarray(12, 12 + headLen)));
  const head = new TextEncoder().encode(JSON.stringify({ ...header, ...change }));
  const data = good.subarray(12 + headLen);
  const out = new Uint8Array(12 + head.length + data.length);
  out.set(good.subarray(0, 8));
  new DataView(out.buffer).setUint32(8, head.length, true);
  out.set(head, 12);
  out.set(data, 12 + head.length);
  return out;
}

function promptOf(entry, key) {
  const p = entry.prompts[key];
  return {
    points: p.points ?? [],
    labels: p.labels ?? [],
    box: p.box ?? null,
    maskInput: p.mask_input ? f32(`${entry.name}.mask_input.f32`) : null,
  };
}

before(async () => {
  if (process.env.SEGANY_FIXTURES) {
    dir = process.env.SEGANY_FIXTURES;
  } else {
    dir = mkdtempSync(join(tmpdir(), "segany-js-"));
    ownDir = true;
    execFileSync(python(), [join(HERE, "make_fixtures.py"), dir], {
      cwd: REPO,
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, PYTHONPATH: REPO, PYTHONWARNINGS: "ignore" },
    });
  }
  manifest = JSON.parse(read("manifest.json"));
  const sessionOptions = { intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: "all" };
  multi = await SeganyDecoder.create(ort, join(dir, "decoder_multi.onnx"), { sessionOptions });
  single = await SeganyDecoder.create(ort, read("decoder_single.onnx"), { sessionOptions });
});

after(async () => {
  await multi?.release();
  await single?.release();
  if (ownDir) rmSync(dir, { recursive: true, force: true });
});

describe("embedding container", () => {
  test("fp32 and fp16 containers parse to the same tensor within fp16 rounding", () => {
    for (const entry of manifest.sizes) {
      const a = parseEmbedding(read(`${entry.name}.f32.seganye`));
      const b = parseEmbedding(read(`${entry.name}.f16.seganye`));
      assert.deepEqual(a.shape, [1, 256, 64, 64]);
      assert.deepEqual(a.originalSize, entry.size);
      assert.deepEqual(a.inputSize, entry.input_size);
      assert.deepEqual(inputSizeFor(a.originalSize), entry.input_size);
      assert.equal(a.fingerprint, manifest.fingerprint);
      assert.equal(b.storedDtype, "float16");
      let worst = 0;
      for (let i = 0; i < a.data.length; i++) {
        worst = Math.max(worst, Math.abs(a.data[i] - b.data[i]) / Math.max(1, Math.abs(a.data[i])));
      }
      assert.ok(worst < 1e-3, `fp16 widening off by ${worst}`);
    }
  });

  test("fp16 container is at most 2.1 MiB", () => {
    const size = read(`${manifest.sizes[0].name}.f16.seganye`).length;
    assert.ok(size <= 2.1 * 2 ** 20, `${size} bytes`);
  });

  test("corrupt, truncated and foreign bytes are refused", () => {
    const good = new Uint8Array(read(`${manifest.sizes[0].name}.f16.seganye`));
    const flipped = good.slice();
    flipped[flipped.length - 7] ^= 0x40;
    assert.throws(() => parseEmbedding(flipped), /CRC32/);
    assert.throws(() => parseEmbedding(good.subarray(0, good.length - 2)), /truncated/);
    assert.throws(() => parseEmbedding(new TextEncoder().encode("PNG not an embedding")), /bad magic/);
    // a header that lies about the sizes (the data length and CRC still match)
    for (const change of [{ shape: [-1, -256, 64, 64] }, { shape: [1, 256, 64, 64.5] }, { original_size: [-480, 0] },
      { input_size: [480, 640, 3] }, { shape: "1,256,64,64" }]) {
      assert.throws(() => parseEmbedding(withHeader(good, change)), /header is corrupt/, JSON.stringify(change));
    }
    assert.equal(parseEmbedding(withHeader(good, {})).data.length, 256 * 64 * 64);
    // an unaligned view (a container inside a bigger buffer) still parses
    const shifted = new Uint8Array(good.length + 1);
    shifted.set(good, 1);
    const parsed = parseEmbedding(shifted.subarray(1));
    assert.equal(parsed.data.length, 256 * 64 * 64);
  });
});

describe("decoder vs the Python predictor", () => {
  test("feeds are bit for bit what segany.onnx.public_feeds builds", () => {
    for (const entry of manifest.sizes) {
      const emb = parseEmbedding(read(`${entry.name}.f32.seganye`));
      for (const key of Object.keys(entry.prompts)) {
        const f = buildFeeds(emb, promptOf(entry, key));
        assert.deepEqual(Array.from(f.coords), entry.prompts[key].feeds.point_coords, `${entry.name} ${key} coords`);
        assert.deepEqual(Array.from(f.labels), entry.prompts[key].feeds.point_labels, `${entry.name} ${key} labels`);
        assert.equal(f.hasMask, entry.prompts[key].mask_input ? 1 : 0);
        assert.deepEqual(Array.from(f.origImSize), entry.size);
      }
    }
  });

  for (const dtype of ["f32", "f16"]) {
    test(`multimask export, ${dtype} container: every prompt, every size`, async () => {
      for (const entry of manifest.sizes) {
        const emb = parseEmbedding(read(`${entry.name}.${dtype}.seganye`));
        const [h, w] = entry.size;
        for (const key of Object.keys(entry.prompts)) {
          const prompt = promptOf(entry, key);
          const res = await multi.decode(emb, prompt);
          assert.equal(res.width, w);
          assert.equal(res.height, h);
          assert.equal(res.masks.length, 3);
          assert.equal(res.lowRes.length, 3 * 256 * 256);
          const ref = u8(`${entry.name}.${key}.multi.u8`);
          for (let i = 0; i < 3; i++) {
            const iou = maskIou(res.masks[i], ref.subarray(i * h * w, (i + 1) * h * w));
            assert.ok(iou >= MIN_IOU, `${entry.name} ${key} mask ${i}: IoU ${iou.toFixed(4)}`);
          }
          if (dtype === "f32") {
            entry.prompts[key].scores.forEach((s, i) => assert.ok(Math.abs(res.scores[i] - s) < 1e-3, `${key} score ${i}`));
          }
          const best = entry.prompts[key].scores.indexOf(Math.max(...entry.prompts[key].scores));
          assert.equal(res.best, best, `${entry.name} ${key}: best candidate`);
          const one = await multi.decode(emb, { ...prompt, multimask: false });
          assert.equal(one.masks.length, 1);
          const iou0 = maskIou(one.masks[0], u8(`${entry.name}.${key}.token0.u8`));
          assert.ok(iou0 >= MIN_IOU, `${entry.name} ${key} token 0: IoU ${iou0.toFixed(4)}`);
        }
      }
    });
  }

  test("single-mask export picks like the public decoder", async () => {
    for (const entry of manifest.sizes) {
      const emb = parseEmbedding(read(`${entry.name}.f32.seganye`));
      for (const key of Object.keys(entry.prompts)) {
        const res = await single.decode(emb, promptOf(entry, key));
        assert.equal(res.masks.length, 1);
        const iou = maskIou(res.masks[0], u8(`${entry.name}.${key}.single.u8`));
        assert.ok(iou >= MIN_IOU, `${entry.name} ${key}: IoU ${iou.toFixed(4)}`);
      }
    }
  });

  test("a decode's low-res logits feed the next decode as mask input", async () => {
    const entry = manifest.sizes[0];
    const emb = parseEmbedding(read(`${entry.name}.f32.seganye`));
    const [h, w] = entry.size;
    const first = await multi.decode(emb, { points: [[w / 2, h / 2]], labels: [1] });
    const stored = f32(`${entry.name}.mask_input.f32`);
    const mine = lowResOf(first);
    let worst = 0;
    for (let i = 0; i < mine.length; i++) worst = Math.max(worst, Math.abs(mine[i] - stored[i]));
    assert.ok(worst < 1e-3, `low-res logits differ by ${worst}`);
  });

  test("bad prompts are refused with a message", async () => {
    const emb = parseEmbedding(read(`${manifest.sizes[0].name}.f32.seganye`));
    await assert.rejects(multi.decode(emb, {}), /empty prompt/);
    await assert.rejects(multi.decode(emb, { points: [[1, 2]], labels: [] }), /labels/);
    await assert.rejects(multi.decode(emb, { points: [[NaN, 2]], labels: [1] }), /finite/);
    await assert.rejects(multi.decode(emb, { box: [1, 2, 3] }), /box/);
  });
});

describe("mask encodings", () => {
  test("COCO RLE matches pycocotools byte for byte and round-trips", () => {
    const ref = JSON.parse(read("rle.json"));
    const [h, w] = ref.size;
    const mask = u8("rle.u8");
    const rle = maskToCocoRle(mask, w, h);
    assert.deepEqual(rle, ref);
    assert.deepEqual(cocoRleToMask(rle), mask);
    const plain = maskToCocoRle(mask, w, h, { compressed: false });
    assert.equal(plain.counts.reduce((a, b) => a + b, 0), h * w);
    assert.deepEqual(cocoRleToMask(plain), mask);
    const empty = maskToCocoRle(new Uint8Array(12), 4, 3, { compressed: false });
    assert.deepEqual(empty.counts, [12]);
  });

  test("PNG is a valid 1-bit grayscale image of the mask", async () => {
    const mask = u8("rle.u8");
    const [h, w] = JSON.parse(read("rle.json")).size;
    const png = await maskToPng(mask, w, h);
    assert.deepEqual([...png.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10]);
    const view = new DataView(png.buffer, png.byteOffset);
    assert.equal(view.getUint32(16), w);
    assert.equal(view.getUint32(20), h);
    assert.equal(png[24], 1); // bit depth
    const idatLen = view.getUint32(33);
    const raw = inflateSync(png.subarray(41, 41 + idatLen));
    const stride = Math.ceil(w / 8) + 1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const bit = (raw[y * stride + 1 + (x >> 3)] >> (7 - (x & 7))) & 1;
        assert.equal(bit, mask[y * w + x]);
      }
    }
  });
});
