// fer-sdk's photo pipeline in JavaScript, DOM-free (the page, node's tests and any bundler can import it).
//
// It follows the written contract Python follows (docs/CONTRACTS.md, "Preprocessing" and "Bundled face
// detector"), step by step, with OpenCV's integer arithmetic where Python goes through OpenCV, so both sides
// give the same 48x48 faces (web/test/vectors.json holds test vectors made by Python's code; `npm test`
// checks this file against them, tests/test_web.py checks Python against the same file):
//
//   photo (RGBA from a canvas, or BGR) -> BGR
//   YuNet: longer side > max_side -> INTER_AREA resize; zero-pad to multiples of 32; BGR float NCHW 0..255;
//          decode the stride 8/16/32 heads (score = sqrt(cls * obj)); greedy NMS; boxes back to photo pixels,
//          rounded and clipped like fer_sdk.detection.normalize_boxes; sorted by box
//   face:  similarity transform (Umeyama) of the five landmarks onto the model's framing; warpAffine, bilinear,
//          edge replication, at the face's own resolution; BGR -> gray; resize to the model's input (INTER_AREA
//          when shrinking, INTER_LINEAR when enlarging); pixel * scale + offset, float32 NHWC
//   model: softmax output as it is ("kind": "softmax") or a softmax of its logits ("kind": "logits")

/** @typedef {{data: Uint8Array|Uint8ClampedArray, width: number, height: number, channels: number}} Image */

export const STRIDES = [8, 16, 32];
export const DIVISOR = 32;
export const LANDMARKS = ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"];

// ------------------------------------------------------------------ numbers as Python and OpenCV round them

/** Round half to even (Python's round(), OpenCV's cvRound). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const clampByte = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);

// ------------------------------------------------------------------ color

/** RGBA (canvas ImageData) -> BGR, alpha dropped (as cv2.imdecode drops it). */
export function rgbaToBgr(rgba, width, height) {
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; j < out.length; i += 4, j += 3) {
    out[j] = rgba[i + 2];
    out[j + 1] = rgba[i + 1];
    out[j + 2] = rgba[i];
  }
  return { data: out, width, height, channels: 3 };
}

/** BGR -> gray as cv2.cvtColor(COLOR_BGR2GRAY) does for uint8 (fixed point, 14 bits). */
export function toGray(img) {
  if (img.channels === 1) return img;
  const { data, width, height, channels } = img;
  const out = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < out.length; i++, j += channels) {
    out[i] = (data[j] * 1868 + data[j + 1] * 9617 + data[j + 2] * 4899 + 8192) >> 14;
  }
  return { data: out, width, height, channels: 1 };
}

// ------------------------------------------------------------------ resize

function areaTable(srcSize, dstSize) {
  // OpenCV's computeResizeAreaTab: per destination index, the source indices and their weights
  const scale = srcSize / dstSize;
  const table = [];
  for (let d = 0; d < dstSize; d++) {
    const f1 = d * scale;
    const f2 = f1 + scale;
    const s1 = Math.ceil(f1);
    const s2 = Math.floor(f2);
    const cell = Math.min(scale, srcSize - f1);
    const taps = [];
    if (s1 - f1 > 1e-3) taps.push([s1 - 1, (s1 - f1) / cell]);
    for (let s = s1; s < s2; s++) taps.push([s, 1 / cell]);
    if (f2 - s2 > 1e-3) taps.push([s2, Math.min(Math.min(f2 - s2, 1), cell) / cell]);
    table.push(taps.filter(([s]) => s >= 0 && s < srcSize));
  }
  return table;
}

/** cv2.resize(..., INTER_AREA) for shrinking (each destination pixel: the area-weighted mean it covers). */
export function resizeArea(img, dstWidth, dstHeight) {
  const { data, width, height, channels: c } = img;
  if (width === dstWidth && height === dstHeight) return img;
  const sx = width / dstWidth, sy = height / dstHeight;
  if (Number.isInteger(sx) && Number.isInteger(sy)) return resizeAreaFast(img, dstWidth, dstHeight, sx, sy);
  const xs = areaTable(width, dstWidth);
  const ys = areaTable(height, dstHeight);
  const rows = new Float64Array(dstWidth * c * height); // horizontal pass, every source row
  for (let y = 0; y < height; y++) {
    for (let dx = 0; dx < dstWidth; dx++) {
      for (const [sx, w] of xs[dx]) {
        const src = (y * width + sx) * c;
        const dst = (y * dstWidth + dx) * c;
        for (let k = 0; k < c; k++) rows[dst + k] += w * data[src + k];
      }
    }
  }
  const out = new Uint8Array(dstWidth * dstHeight * c);
  const acc = new Float64Array(dstWidth * c);
  for (let dy = 0; dy < dstHeight; dy++) {
    acc.fill(0);
    for (const [sy, w] of ys[dy]) {
      const base = sy * dstWidth * c;
      for (let i = 0; i < acc.length; i++) acc[i] += w * rows[base + i];
    }
    for (let i = 0; i < acc.length; i++) out[dy * dstWidth * c + i] = clampByte(roundHalfEven(acc[i]));
  }
  return { data: out, width: dstWidth, height: dstHeight, channels: c };
}

function resizeAreaFast(img, dstWidth, dstHeight, sx, sy) {
  // OpenCV's resizeAreaFast for whole-number scales: the block mean, (sum + 2) >> 2 for 2x2 blocks
  const { data, width, channels: c } = img;
  const area = sx * sy;
  const out = new Uint8Array(dstWidth * dstHeight * c);
  for (let dy = 0; dy < dstHeight; dy++) {
    for (let dx = 0; dx < dstWidth; dx++) {
      for (let k = 0; k < c; k++) {
        let sum = 0;
        for (let y = dy * sy; y < (dy + 1) * sy; y++) {
          for (let x = dx * sx; x < (dx + 1) * sx; x++) sum += data[(y * width + x) * c + k];
        }
        out[(dy * dstWidth + dx) * c + k] = area === 4 ? (sum + 2) >> 2 : clampByte(roundHalfEven(sum / area));
      }
    }
  }
  return { data: out, width: dstWidth, height: dstHeight, channels: c };
}

function linearTable(srcSize, dstSize) {
  // OpenCV's INTER_LINEAR coordinates (half-pixel centres) with 11-bit weights
  const scale = srcSize / dstSize;
  const index = new Int32Array(dstSize * 2);
  const weight = new Int32Array(dstSize * 2);
  for (let d = 0; d < dstSize; d++) {
    let f = (d + 0.5) * scale - 0.5;
    let s = Math.floor(f);
    f -= s;
    if (s < 0) {
      s = 0;
      f = 0;
    }
    if (s >= srcSize - 1) {
      s = srcSize - 1;
      f = 0;
    }
    const w0 = roundHalfEven((1 - f) * 2048);
    index[2 * d] = s;
    index[2 * d + 1] = Math.min(s + 1, srcSize - 1);
    weight[2 * d] = w0;
    weight[2 * d + 1] = 2048 - w0;
  }
  return { index, weight };
}

/** cv2.resize(..., INTER_LINEAR) for uint8 (fixed point, 11-bit weights per axis). */
export function resizeLinear(img, dstWidth, dstHeight) {
  const { data, width, height, channels: c } = img;
  if (width === dstWidth && height === dstHeight) return img;
  const xt = linearTable(width, dstWidth);
  const yt = linearTable(height, dstHeight);
  const out = new Uint8Array(dstWidth * dstHeight * c);
  for (let dy = 0; dy < dstHeight; dy++) {
    const y0 = yt.index[2 * dy], y1 = yt.index[2 * dy + 1];
    const wy0 = yt.weight[2 * dy], wy1 = yt.weight[2 * dy + 1];
    for (let dx = 0; dx < dstWidth; dx++) {
      const x0 = xt.index[2 * dx], x1 = xt.index[2 * dx + 1];
      const wx0 = xt.weight[2 * dx], wx1 = xt.weight[2 * dx + 1];
      for (let k = 0; k < c; k++) {
        const top = data[(y0 * width + x0) * c + k] * wx0 + data[(y0 * width + x1) * c + k] * wx1;
        const bottom = data[(y1 * width + x0) * c + k] * wx0 + data[(y1 * width + x1) * c + k] * wx1;
        // OpenCV's SIMD vertical pass (VResizeLinearVec_32s8u): drop 4 bits, 16x16 high product, round 2 bits
        out[(dy * dstWidth + dx) * c + k] = clampByte(((((top >> 4) * wy0) >> 16) + (((bottom >> 4) * wy1) >> 16) + 2) >> 2);
      }
    }
  }
  return { data: out, width: dstWidth, height: dstHeight, channels: c };
}

/** The model's resize rule ("area": INTER_AREA when no side grows, INTER_LINEAR otherwise). */
export function resizeImage(img, dstWidth, dstHeight, method = "area") {
  if (method !== "area" && method !== "linear") throw new Error(`resize method ${method} is not supported here`);
  const shrink = img.width >= dstWidth && img.height >= dstHeight;
  return method === "area" && shrink
    ? resizeArea(img, dstWidth, dstHeight)
    : resizeLinear(img, dstWidth, dstHeight);
}

// ------------------------------------------------------------------ alignment

/** 2x3 similarity (rotation, uniform scale, shift) taking `src` points onto `dst`, least squares (Umeyama). */
export function similarity(src, dst) {
  const n = src.length;
  let msx = 0, msy = 0, mdx = 0, mdy = 0;
  for (let i = 0; i < n; i++) {
    msx += src[i][0] / n;
    msy += src[i][1] / n;
    mdx += dst[i][0] / n;
    mdy += dst[i][1] / n;
  }
  let variance = 0, dot = 0, cross = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i][0] - msx, sy = src[i][1] - msy;
    const dx = dst[i][0] - mdx, dy = dst[i][1] - mdy;
    variance += (sx * sx + sy * sy) / n;
    dot += (sx * dx + sy * dy) / n;
    cross += (sx * dy - sy * dx) / n;
  }
  if (!(variance > 1e-12)) throw new Error("landmarks: all five points coincide; the face cannot be aligned");
  const a = dot / variance, b = cross / variance; // scale * (cos, sin) of the rotation
  return [
    [a, -b, mdx - (a * msx - b * msy)],
    [b, a, mdy - (b * msx + a * msy)],
  ];
}

/** cv2.warpAffine(src, M, (side, side), INTER_LINEAR, BORDER_REPLICATE) for uint8, OpenCV's fixed point. */
export function warpAffine(img, m, side) {
  const { data, width, height, channels: c } = img;
  // invert M (OpenCV maps destination pixels back to the source)
  let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
  det = det !== 0 ? 1 / det : 0;
  const a00 = m[1][1] * det, a01 = -m[0][1] * det, a10 = -m[1][0] * det, a11 = m[0][0] * det;
  const b0 = -a00 * m[0][2] - a01 * m[1][2];
  const b1 = -a10 * m[0][2] - a11 * m[1][2];
  const AB = 1024, ROUND = 16; // AB_BITS = 10, INTER_BITS = 5: (AB_SCALE / INTER_TAB_SIZE) / 2
  const out = new Uint8Array(side * side * c);
  const dxs = new Int32Array(side), dys = new Int32Array(side);
  for (let x = 0; x < side; x++) {
    dxs[x] = roundHalfEven(a00 * x * AB);
    dys[x] = roundHalfEven(a10 * x * AB);
  }
  const px = (x, y, k) => {
    const cx = x < 0 ? 0 : x >= width ? width - 1 : x;
    const cy = y < 0 ? 0 : y >= height ? height - 1 : y;
    return data[(cy * width + cx) * c + k];
  };
  for (let y = 0; y < side; y++) {
    const x0 = roundHalfEven((a01 * y + b0) * AB) + ROUND;
    const y0 = roundHalfEven((a11 * y + b1) * AB) + ROUND;
    for (let x = 0; x < side; x++) {
      const X = (x0 + dxs[x]) >> 5, Y = (y0 + dys[x]) >> 5; // 1/32 pixel units
      const sx = X >> 5, fx = X & 31, sy = Y >> 5, fy = Y & 31;
      const w00 = (32 - fx) * (32 - fy) * 32, w01 = fx * (32 - fy) * 32;
      const w10 = (32 - fx) * fy * 32, w11 = fx * fy * 32; // sum 32768 (INTER_REMAP_COEF_BITS = 15)
      for (let k = 0; k < c; k++) {
        const v =
          px(sx, sy, k) * w00 + px(sx + 1, sy, k) * w01 + px(sx, sy + 1, k) * w10 + px(sx + 1, sy + 1, k) * w11;
        out[(y * side + x) * c + k] = clampByte((v + (1 << 14)) >> 15);
      }
    }
  }
  return { data: out, width: side, height: side, channels: c };
}

/** The face with its five landmarks moved onto the framing's, cut at about the photo's resolution. */
export function alignedCrop(img, landmarks, framing, margin = 0) {
  const template = framing.landmarks.map(([x, y]) => [(x - 0.5) / (1 + 2 * margin) + 0.5, (y - 0.5) / (1 + 2 * margin) + 0.5]);
  const unit = similarity(landmarks, template); // photo -> frame units
  const scale = Math.hypot(unit[0][0], unit[1][0]);
  const side = Math.min(1024, Math.max(8, roundHalfEven(1 / scale)));
  return warpAffine(img, unit.map((row) => row.map((v) => v * side)), side);
}

/** One face crop -> the model's input values (Float32Array, H * W), as fer_sdk.preprocess.prepare_faces. */
export function faceInput(crop, input) {
  const gray = resizeImage(toGray(crop), input.width, input.height, input.resize);
  const scale = Math.fround(input.scale), offset = Math.fround(input.offset);
  const out = new Float32Array(gray.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(gray.data[i] * scale) + offset;
  return out;
}

// ------------------------------------------------------------------ YuNet

/** The BGR canvas YuNet searches and the scale from the photo to it (longer side capped at maxSide). */
export function detectorCanvas(bgr, maxSide) {
  const longer = Math.max(bgr.width, bgr.height);
  const scale = maxSide == null || longer <= maxSide ? 1 : maxSide / longer;
  if (scale === 1) return { canvas: bgr, scale };
  const w = Math.max(1, roundHalfEven(bgr.width * scale)), h = Math.max(1, roundHalfEven(bgr.height * scale));
  return { canvas: resizeArea(bgr, w, h), scale };
}

export const padded = (size) => Math.floor((size - 1) / DIVISOR) * DIVISOR + DIVISOR;

/** BGR canvas -> float32 NCHW blob zero-padded to multiples of 32 (YuNet's input). */
export function detectorBlob(canvas) {
  const ph = padded(canvas.height), pw = padded(canvas.width);
  const blob = new Float32Array(3 * ph * pw);
  const { data, width, height } = canvas;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const s = (y * width + x) * 3;
      for (let k = 0; k < 3; k++) blob[k * ph * pw + y * pw + x] = data[s + k];
    }
  }
  return { blob, height: ph, width: pw };
}

/** Greedy NMS on [x, y, w, h] boxes; indices kept, best score first (fer_sdk.yunet.nms). */
export function nms(boxes, scores, threshold, topK) {
  let order = scores.map((_, i) => i).sort((i, j) => scores[j] - scores[i]).slice(0, topK * 4);
  const keep = [];
  while (order.length && keep.length < topK) {
    const i = order[0];
    keep.push(i);
    const [x0, y0, w0, h0] = boxes[i];
    order = order.slice(1).filter((j) => {
      const [x1, y1, w1, h1] = boxes[j];
      const iw = Math.max(0, Math.min(x0 + w0, x1 + w1) - Math.max(x0, x1));
      const ih = Math.max(0, Math.min(y0 + h0, y1 + h1) - Math.max(y0, y1));
      const inter = iw * ih;
      return inter / Math.max(w0 * h0 + w1 * h1 - inter, 1e-9) <= threshold;
    });
  }
  return keep;
}

/** YuNet heads (name -> Float32Array of one image) -> [{box, score, landmarks}] in canvas pixels. */
export function decodeYuNet(heads, paddedWidth, options) {
  const boxes = [], scores = [], points = [];
  for (const s of STRIDES) {
    const cols = paddedWidth / s;
    const cls = heads[`cls_${s}`], obj = heads[`obj_${s}`], bbox = heads[`bbox_${s}`], kps = heads[`kps_${s}`];
    for (let i = 0; i < cls.length; i++) {
      const score = Math.sqrt(Math.min(Math.max(cls[i], 0), 1) * Math.min(Math.max(obj[i], 0), 1));
      if (!(score >= options.min_score)) continue;
      const row = Math.floor(i / cols), col = i % cols;
      const cx = (col + bbox[4 * i]) * s, cy = (row + bbox[4 * i + 1]) * s;
      const w = Math.exp(Math.min(bbox[4 * i + 2], 20)) * s, h = Math.exp(Math.min(bbox[4 * i + 3], 20)) * s;
      const pts = [];
      for (let p = 0; p < 5; p++) pts.push([(kps[10 * i + 2 * p] + col) * s, (kps[10 * i + 2 * p + 1] + row) * s]);
      const box = [cx - w / 2, cy - h / 2, w, h];
      if (!box.every(Number.isFinite) || !pts.flat().every(Number.isFinite) || !(w > 0) || !(h > 0)) continue;
      boxes.push(box);
      scores.push(score);
      points.push(pts);
    }
  }
  return nms(boxes, scores, options.nms_threshold, options.top_k).map((i) => ({
    box: boxes[i],
    score: scores[i],
    landmarks: points[i],
  }));
}

/** Canvas detections -> photo pixels: boxes rounded and clipped (normalize_boxes), min_face, sorted by box. */
export function finishDetections(found, scale, width, height, minFace = 0) {
  const out = [];
  for (const { box, score, landmarks } of found) {
    const [x, y, w, h] = box.map((v) => v / scale);
    const x0 = Math.max(0, roundHalfEven(x)), y0 = Math.max(0, roundHalfEven(y));
    const x1 = Math.min(width, roundHalfEven(x + w)), y1 = Math.min(height, roundHalfEven(y + h));
    if (!(x1 > x0 && y1 > y0) || Math.min(w, h) < minFace) continue;
    out.push({ box: [x0, y0, x1 - x0, y1 - y0], score, landmarks: landmarks.map(([px, py]) => [px / scale, py / scale]) });
  }
  return out.sort((a, b) => {
    for (let k = 0; k < 4; k++) if (a.box[k] !== b.box[k]) return a.box[k] - b.box[k];
    return 0;
  });
}

export function softmax(row) {
  const top = Math.max(...row);
  const e = row.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// ------------------------------------------------------------------ the pipeline on onnxruntime-web

const HEADS = ["cls", "obj", "bbox", "kps"].flatMap((h) => STRIDES.map((s) => `${h}_${s}`));

/**
 * Detects and classifies faces with two onnxruntime-web sessions.
 * `index` is the server's models.json: {detector: {options}, classifier: {metadata}}.
 */
export class Pipeline {
  constructor(ort, detector, classifier, index) {
    this.ort = ort;
    this.detector = detector;
    this.classifier = classifier;
    this.options = index.detector.options;
    this.meta = index.classifier.metadata;
    this.labels = this.meta.labels;
  }

  static async create(ort, index, fetchBytes, sessionOptions = {}) {
    const [det, cls] = await Promise.all([fetchBytes(index.detector), fetchBytes(index.classifier)]); // each {url, sha256}
    const opts = { executionProviders: ["wasm"], graphOptimizationLevel: "all", ...sessionOptions };
    const detector = await ort.InferenceSession.create(det, opts);
    const classifier = await ort.InferenceSession.create(cls, opts);
    return new Pipeline(ort, detector, classifier, index);
  }

  /** BGR image -> [{box, score, landmarks}] in photo pixels. */
  async detect(bgr) {
    const { canvas, scale } = detectorCanvas(bgr, this.options.max_side);
    const { blob, height, width } = detectorBlob(canvas);
    const input = new this.ort.Tensor("float32", blob, [1, 3, height, width]);
    const result = await this.detector.run({ [this.detector.inputNames[0]]: input }, HEADS);
    const heads = Object.fromEntries(HEADS.map((h) => [h, result[h].data]));
    const found = decodeYuNet(heads, width, this.options);
    return finishDetections(found, scale, bgr.width, bgr.height, this.options.min_face);
  }

  /** Face crops (BGR images) -> probability rows, one batch. */
  async classify(crops) {
    const spec = this.meta.input;
    const size = spec.height * spec.width;
    const batch = new Float32Array(crops.length * size);
    crops.forEach((crop, i) => batch.set(faceInput(crop, spec), i * size));
    const tensor = new this.ort.Tensor("float32", batch, [crops.length, spec.height, spec.width, 1]);
    const result = await this.classifier.run({ [spec.name]: tensor });
    const out = result[this.meta.output.name] ?? result[this.classifier.outputNames[0]];
    const k = this.labels.length;
    const rows = [];
    for (let i = 0; i < crops.length; i++) {
      const row = Array.from(out.data.slice(i * k, (i + 1) * k));
      rows.push(this.meta.output.kind === "logits" ? softmax(row) : row);
    }
    return rows;
  }

  /** BGR image -> faces like Python's Face.to_dict(): box, emotion, score, emotions, detection_score, landmarks. */
  async analyze(bgr) {
    const t0 = performance.now();
    const detections = await this.detect(bgr);
    const t1 = performance.now();
    const framing = this.meta.framing ?? FER2013_FRAMING;
    const crops = detections.map((d) => alignedCrop(bgr, d.landmarks, framing));
    const rows = crops.length ? await this.classify(crops) : [];
    const t2 = performance.now();
    const faces = detections.map((d, i) => {
      let top = 0;
      rows[i].forEach((p, j) => {
        if (p > rows[i][top]) top = j;
      });
      return {
        box: d.box,
        emotion: this.labels[top],
        score: rows[i][top],
        emotions: Object.fromEntries(this.labels.map((name, j) => [name, rows[i][j]])),
        detection_score: d.score,
        landmarks: d.landmarks,
      };
    });
    return { faces, detect_ms: t1 - t0, classify_ms: t2 - t1 };
  }
}

/** FER2013's framing (fer_sdk.framing.FER2013), for models whose metadata has none. */
export const FER2013_FRAMING = {
  name: "fer2013",
  landmarks: [
    [0.3135, 0.3785],
    [0.6728, 0.3751],
    [0.4865, 0.5921],
    [0.3505, 0.739],
    [0.644, 0.7372],
  ],
};
