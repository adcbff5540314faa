// segany-decoder.js: run a segany (Segment-Anything-style) ONNX decoder next to the user.
//
// One ES module, no build step, no imports: the onnxruntime namespace is passed in, so the same file runs in a
// browser with onnxruntime-web (`import * as ort from "/static/ort/ort.wasm.min.mjs"`) and in Node with
// onnxruntime-node (`import * as ort from "onnxruntime-node"`).
//
// Frames: prompts are given in ORIGINAL image pixels (x right, y down). The decoder works in the 1024 "input"
// frame: the image resized so its longest side is 1024, with each axis scaled by its ROUNDED resized size
// (newH = floor(H * 1024 / max(H, W) + 0.5)), exactly as segany's Python predictor and `segany.onnx.public_feeds`.
//
// The decoder file is segany's public-interface export (`segany export decoder [--multimask]`): inputs
// image_embeddings [1,256,64,64], point_coords [1,N,2], point_labels [1,N], mask_input [1,1,256,256],
// has_mask_input [1], orig_im_size [2] (H, W); outputs masks [1,M,H,W] (logits), iou_predictions [1,M],
// low_res_masks [1,M,256,256]; M is 4 for the multimask export (token 0 first), 1 for the single-mask export.

export const MAGIC = "SEGANYE1";
export const LOW_RES = 256;
const DEFAULT_IMAGE_SIZE = 1024;

// ------------------------------------------------------------------------------------------------ checksums

let crcTable = null;

/** CRC-32 (IEEE, zlib's) of a Uint8Array; returns an unsigned 32-bit number. */
export function crc32(bytes) {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------------------------------------------ float16

let halfTable = null;

/** Uint16Array of IEEE half-precision bit patterns -> Float32Array (exact; subnormals, inf and NaN kept). */
export function float16ToFloat32(halves) {
  if (halfTable === null) {
    // 65536 entries (256 KiB): one table look-up per value is faster than bit twiddling in JS.
    const bits = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = (h & 0x8000) << 16;
      const exp = (h >> 10) & 0x1f;
      let mant = h & 0x3ff;
      if (exp === 0x1f) {
        bits[h] = sign | 0x7f800000 | (mant << 13);
      } else if (exp !== 0) {
        bits[h] = sign | ((exp + 112) << 23) | (mant << 13);
      } else if (mant === 0) {
        bits[h] = sign;
      } else {
        // subnormal half: normalise into a float32 exponent
        let e = 113;
        while ((mant & 0x400) === 0) {
          mant <<= 1;
          e--;
        }
        bits[h] = sign | (e << 23) | ((mant & 0x3ff) << 13);
      }
    }
    halfTable = new Float32Array(bits.buffer);
  }
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = halfTable[halves[i]];
  return out;
}

// ------------------------------------------------------------------------------------------------ container

function asBytes(input) {
  if (input instanceof Uint8Array) return input;
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  if (input instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && input instanceof SharedArrayBuffer)) {
    return new Uint8Array(input);
  }
  throw new TypeError("expected an ArrayBuffer or a typed array holding a segany embedding container");
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Parse a segany embedding container (what `GET /embedding/<id>` and `ImageEmbedding.to_bytes()` return).
 *
 * @param {ArrayBuffer|Uint8Array} buffer the container bytes.
 * @param {{verify?: boolean}} [options] verify (default true) checks the CRC32 of the data.
 * @returns {{data: Float32Array, shape: number[], originalSize: [number, number], inputSize: [number, number],
 *            fingerprint: string, preprocess: string, storedDtype: string}} float16 data is widened to float32.
 * @throws {Error} on a bad magic, truncation, a shape/length mismatch or a CRC mismatch.
 */
export function parseEmbedding(buffer, options = {}) {
  const bytes = asBytes(buffer);
  if (bytes.length < 12 || String.fromCharCode(...bytes.subarray(0, 8)) !== MAGIC) {
    throw new Error("not a segany embedding container (bad magic)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headLen = view.getUint32(8, true);
  if (12 + headLen > bytes.length) throw new Error("embedding container is truncated (header)");
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headLen)));
  } catch (err) {
    throw new Error(`embedding container header is corrupt: ${err.message}`);
  }
  const { shape, dtype } = header;
  const itemSize = { float32: 4, float16: 2 }[dtype];
  if (!itemSize) throw new Error(`embedding container has dtype ${dtype}; float32 or float16 expected`);
  for (const [name, sizes, length] of [["shape", shape, null], ["original_size", header.original_size, 2],
    ["input_size", header.input_size, 2]]) {
    const whole = Array.isArray(sizes) && sizes.every((d) => Number.isSafeInteger(d) && d >= 0);
    if (!whole || (length !== null && sizes.length !== length)) {
      throw new Error(`embedding container header is corrupt: ${name} must be whole numbers >= 0, got ${JSON.stringify(sizes)}`);
    }
  }
  const count = shape.reduce((a, b) => a * b, 1);
  const data = bytes.subarray(12 + headLen);
  if (data.length !== header.data_len || data.length !== count * itemSize) {
    throw new Error(`embedding container is truncated or padded: ${data.length} data bytes, expected ${count * itemSize}`);
  }
  if (options.verify !== false && crc32(data) !== header.crc32) {
    throw new Error("embedding container failed its CRC32 check (corrupt data)");
  }
  // Typed arrays need aligned offsets and native byte order; copy when either is not given.
  const aligned = data.byteOffset % itemSize === 0 && LITTLE_ENDIAN;
  let values;
  if (dtype === "float32") {
    if (aligned) {
      values = new Float32Array(data.buffer, data.byteOffset, count).slice();
    } else {
      const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
      values = new Float32Array(count);
      for (let i = 0; i < count; i++) values[i] = dv.getFloat32(4 * i, true);
    }
  } else {
    let halves;
    if (aligned) {
      halves = new Uint16Array(data.buffer, data.byteOffset, count);
    } else {
      const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
      halves = new Uint16Array(count);
      for (let i = 0; i < count; i++) halves[i] = dv.getUint16(2 * i, true);
    }
    values = float16ToFloat32(halves);
  }
  return {
    data: values,
    shape: shape.map(Number),
    originalSize: header.original_size.map(Number),
    inputSize: header.input_size.map(Number),
    fingerprint: String(header.model_fingerprint),
    preprocess: String(header.preprocess ?? ""),
    storedDtype: dtype,
  };
}

// ------------------------------------------------------------------------------------------------ frames

/** [h, w] of the image resized so its longest side is `imageSize`, rounding half up per axis (the input frame). */
export function inputSizeFor(originalSize, imageSize = DEFAULT_IMAGE_SIZE) {
  const [h, w] = originalSize;
  const scale = imageSize / Math.max(h, w);
  return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
}

/** [x, y] in original pixels -> the input frame (each axis scaled by its rounded resized size). */
export function toInputFrame(point, originalSize, imageSize = DEFAULT_IMAGE_SIZE) {
  const [h, w] = originalSize;
  const [newH, newW] = inputSizeFor(originalSize, imageSize);
  return [point[0] * (newW / w), point[1] * (newH / h)];
}

function finite(value, what) {
  if (typeof value !== "number" || !Number.isFinite(value)) throw new Error(`${what} must be a finite number, got ${value}`);
  return value;
}

/**
 * The decoder feeds as plain typed arrays (what `segany.onnx.public_feeds` builds in Python).
 *
 * @param {{data: Float32Array, originalSize: [number, number]}} embedding from parseEmbedding.
 * @param {{points?: number[][], labels?: number[], box?: number[]|null, maskInput?: Float32Array|null}} prompt
 *   points [[x, y], ...] in original pixels with labels 1 (foreground) / 0 (background); box [x0, y0, x1, y1]
 *   in original pixels; maskInput 256*256 low-res logits of an earlier decode (`result.lowRes` of one mask).
 * @returns {{coords: Float32Array, labels: Float32Array, numPoints: number, maskInput: Float32Array,
 *            hasMask: number, origImSize: Float32Array}}
 */
export function buildFeeds(embedding, prompt = {}, imageSize = DEFAULT_IMAGE_SIZE) {
  const size = embedding.originalSize;
  const points = prompt.points ?? [];
  const labels = prompt.labels ?? [];
  if (points.length !== labels.length) {
    throw new Error(`got ${points.length} points but ${labels.length} labels; give one label (1 or 0) per point`);
  }
  const coords = [];
  const labs = [];
  points.forEach((p, i) => {
    const label = finite(labels[i], `label ${i}`);
    if (label !== 0 && label !== 1) throw new Error(`label ${i} is ${label}; 1 (foreground) or 0 (background) expected`);
    coords.push(toInputFrame([finite(p[0], `point ${i} x`), finite(p[1], `point ${i} y`)], size, imageSize));
    labs.push(label);
  });
  const box = prompt.box ?? null;
  if (box !== null) {
    if (box.length !== 4) throw new Error(`box must be [x0, y0, x1, y1], got ${box.length} numbers`);
    box.forEach((v, i) => finite(v, `box[${i}]`));
    coords.push(toInputFrame([box[0], box[1]], size, imageSize), toInputFrame([box[2], box[3]], size, imageSize));
    labs.push(2, 3);
  } else if (points.length > 0) {
    // the graph does not add SAM's padding point: points without a box carry (0, 0) with label -1
    coords.push([0, 0]);
    labs.push(-1);
  } // a mask-only prompt has no point at all (N = 0), as the torch predictor sees it
  if (points.length === 0 && box === null && !prompt.maskInput) {
    throw new Error("empty prompt: give at least one point, a box or a mask input");
  }
  const maskInput = new Float32Array(LOW_RES * LOW_RES);
  let hasMask = 0;
  if (prompt.maskInput) {
    if (prompt.maskInput.length !== LOW_RES * LOW_RES) {
      throw new Error(`maskInput must hold ${LOW_RES}x${LOW_RES} logits, got ${prompt.maskInput.length} values`);
    }
    maskInput.set(prompt.maskInput);
    hasMask = 1;
  }
  return {
    coords: Float32Array.from(coords.flat()),
    labels: Float32Array.from(labs),
    numPoints: labs.length,
    maskInput,
    hasMask,
    origImSize: Float32Array.from(size),
  };
}

// ------------------------------------------------------------------------------------------------ decoder

/**
 * A loaded decoder session. Stateless between calls: every `decode` takes the embedding it works on.
 */
export class SeganyDecoder {
  constructor(ort, session, options = {}) {
    this.ort = ort;
    this.session = session;
    this.imageSize = options.imageSize ?? DEFAULT_IMAGE_SIZE;
    this.embeddingTensors = new WeakMap(); // one ort.Tensor per embedding, reused across clicks
  }

  /**
   * @param {object} ort the onnxruntime namespace (onnxruntime-web or onnxruntime-node).
   * @param {ArrayBuffer|Uint8Array|string} model the decoder .onnx bytes, or a URL/path to fetch/read.
   * @param {{sessionOptions?: object, imageSize?: number}} [options] sessionOptions go to InferenceSession.create
   *   (default: wasm/cpu execution provider, all graph optimisations).
   */
  static async create(ort, model, options = {}) {
    let source = model;
    if (typeof model === "string") {
      const inNode = typeof process === "object" && Boolean(process.versions?.node);
      if (!inNode || /^(https?|blob|data):/.test(model)) {
        const response = await fetch(model);
        if (!response.ok) throw new Error(`cannot fetch the decoder ${model}: HTTP ${response.status}`);
        source = new Uint8Array(await response.arrayBuffer());
      } // else a file path: onnxruntime-node reads it
    } else {
      source = asBytes(model);
    }
    const sessionOptions = { graphOptimizationLevel: "all", ...(options.sessionOptions ?? {}) };
    const session = await ort.InferenceSession.create(source, sessionOptions);
    const missing = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
      .filter((name) => !session.inputNames.includes(name));
    if (missing.length) {
      throw new Error(`this ONNX file is not a public-interface segany/SAM decoder: missing inputs ${missing.join(", ")}`);
    }
    return new SeganyDecoder(ort, session, options);
  }

  _embeddingTensor(embedding) {
    let tensor = this.embeddingTensors.get(embedding);
    if (!tensor) {
      tensor = new this.ort.Tensor("float32", embedding.data, embedding.shape);
      this.embeddingTensors.set(embedding, tensor);
    }
    return tensor;
  }

  /**
   * Decode one prompt on one embedding.
   *
   * @param {object} embedding from parseEmbedding.
   * @param {{points?: number[][], labels?: number[], box?: number[]|null, maskInput?: Float32Array|null,
   *          multimask?: boolean}} prompt coordinates in original pixels. With a multimask export, multimask
   *   true (default) returns the three candidates (tokens 1..3) and false returns token 0 (as segany's
   *   `Predictor.predict(multimask=False)`); a single-mask export always returns its one mask.
   * @returns {Promise<{masks: Uint8Array[], scores: Float32Array, lowRes: Float32Array, width: number,
   *           height: number, best: number}>} masks are H*W row-major, 1 where the logit is > 0; lowRes holds
   *   M*256*256 logits (`lowResOf(result, i)` is a valid next maskInput); best indexes the highest score.
   */
  async decode(embedding, prompt = {}) {
    const ort = this.ort;
    const f = buildFeeds(embedding, prompt, this.imageSize);
    const feeds = {
      image_embeddings: this._embeddingTensor(embedding),
      point_coords: new ort.Tensor("float32", f.coords, [1, f.numPoints, 2]),
      point_labels: new ort.Tensor("float32", f.labels, [1, f.numPoints]),
      mask_input: new ort.Tensor("float32", f.maskInput, [1, 1, LOW_RES, LOW_RES]),
      has_mask_input: new ort.Tensor("float32", Float32Array.of(f.hasMask), [1]),
      orig_im_size: new ort.Tensor("float32", f.origImSize, [2]),
    };
    const out = await this.session.run(feeds);
    const masks = out.masks;
    const [, total, height, width] = masks.dims;
    let picks = [...Array(total).keys()];
    if (total === 4) picks = prompt.multimask === false ? [0] : [1, 2, 3];
    const logits = masks.data;
    const plane = height * width;
    const lowPlane = LOW_RES * LOW_RES;
    const scoresAll = out.iou_predictions.data;
    const lowAll = out.low_res_masks.data;
    const result = {
      masks: [],
      scores: new Float32Array(picks.length),
      lowRes: new Float32Array(picks.length * lowPlane),
      width,
      height,
      best: 0,
    };
    picks.forEach((m, i) => {
      const mask = new Uint8Array(plane);
      const offset = m * plane;
      for (let p = 0; p < plane; p++) mask[p] = logits[offset + p] > 0 ? 1 : 0;
      result.masks.push(mask);
      result.scores[i] = scoresAll[m];
      result.lowRes.set(lowAll.subarray(m * lowPlane, (m + 1) * lowPlane), i * lowPlane);
      if (result.scores[i] > result.scores[result.best]) result.best = i;
    });
    for (const tensor of Object.values(out)) tensor.dispose?.();
    return result;
  }

  async release() {
    await this.session.release?.();
  }
}

/** The 256*256 low-res logits of candidate `i` of a decode result (a valid next `maskInput`). */
export function lowResOf(result, i = result.best) {
  return result.lowRes.subarray(i * LOW_RES * LOW_RES, (i + 1) * LOW_RES * LOW_RES);
}

// ------------------------------------------------------------------------------------------------ mask encodings

/**
 * COCO run-length encoding of an H*W row-major mask (pycocotools' convention: column-major runs, the first run
 * counts zeros).
 *
 * @param {Uint8Array} mask nonzero = foreground.
 * @param {number} width
 * @param {number} height
 * @param {{compressed?: boolean}} [options] compressed (default true) gives `counts` as pycocotools' ASCII string
 *   (what `pycocotools.mask.encode` returns, decoded), false gives the uncompressed list of run lengths.
 * @returns {{size: [number, number], counts: string|number[]}}
 */
export function maskToCocoRle(mask, width, height, options = {}) {
  const counts = [];
  let current = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const v = mask[y * width + x] ? 1 : 0;
      if (v !== current) {
        counts.push(run);
        run = 0;
        current = v;
      }
      run++;
    }
  }
  counts.push(run);
  if (options.compressed === false) return { size: [height, width], counts };
  return { size: [height, width], counts: compressCounts(counts) };
}

/** pycocotools' ASCII form of RLE counts: deltas against the count two back, 5 bits per char, offset 48. */
export function compressCounts(counts) {
  let text = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5; // arithmetic shift: negative deltas end at -1
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      text += String.fromCharCode(c + 48);
    }
  }
  return text;
}

/** Inverse of maskToCocoRle (either counts form) -> H*W row-major Uint8Array. */
export function cocoRleToMask(rle) {
  const [height, width] = rle.size;
  let counts = rle.counts;
  if (typeof counts === "string") {
    const text = counts;
    counts = [];
    let p = 0;
    while (p < text.length) {
      let x = 0;
      let k = 0;
      let more = true;
      while (more) {
        const c = text.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = (c & 0x20) !== 0;
        p++;
        k++;
        if (!more && c & 0x10) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
  }
  const mask = new Uint8Array(height * width);
  let pos = 0;
  counts.forEach((n, i) => {
    if (i % 2 === 1) {
      for (let j = pos; j < pos + n; j++) mask[(j % height) * width + Math.floor(j / height)] = 1;
    }
    pos += n;
  });
  if (pos !== height * width) throw new Error(`RLE runs add up to ${pos}, not ${height}x${width}`);
  return mask;
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlibDeflate(bytes) {
  // CompressionStream("deflate") is the zlib format PNG wants (browsers, Node >= 18)
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * A 1-bit grayscale PNG (foreground white) of an H*W row-major mask, as bytes.
 * @returns {Promise<Uint8Array>}
 */
export async function maskToPng(mask, width, height) {
  const stride = Math.ceil(width / 8);
  const raw = new Uint8Array((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (stride + 1); // filter byte 0 (none), then packed bits, MSB first
    for (let x = 0; x < width; x++) {
      if (mask[y * width + x]) raw[row + 1 + (x >> 3)] |= 0x80 >> (x & 7);
    }
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([1, 0, 0, 0, 0], 8); // bit depth 1, grayscale, deflate, adaptive filtering, no interlace
  const parts = [
    Uint8Array.of(137, 80, 78, 71, 13, 10, 26, 10),
    pngChunk("IHDR", header),
    pngChunk("IDAT", await zlibDeflate(raw)),
    pngChunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** maskToPng as a Blob (type image/png), ready for a download link. */
export async function maskToPngBlob(mask, width, height) {
  return new Blob([await maskToPng(mask, width, height)], { type: "image/png" });
}

/** Intersection over union of two equal-length 0/1 masks (1 when both are empty). */
export function maskIou(a, b) {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] !== 0;
    const y = b[i] !== 0;
    if (x && y) inter++;
    if (x || y) union++;
  }
  return union === 0 ? 1 : inter / union;
}
