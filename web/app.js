// The page: photos or the webcam in, boxes, labels and bars out. All of it runs here (web/fer.js on
// onnxruntime-web's WebAssembly backend); the server only hands out the page, the runtime and the models.
//
// For tests and benchmarks the page keeps its state on `window.fer`: state ("loading" | "ready" | "busy" |
// "error"), results (one entry per photo, faces as Python's Face.to_dict()), stats (timings, download sizes),
// and benchmark(repeats) to re-run the photos already shown.
import * as ort from "./vendor/ort.wasm.min.mjs";
import { Pipeline, rgbaToBgr } from "./fer.js";

const COLORS = { angry: "#d93025", disgust: "#188038", fear: "#8e24aa", happy: "#f9ab00", sad: "#1a73e8", surprise: "#e8710a", neutral: "#5f6368" };
const MAX_PIXELS = 50_000_000; // as fer_sdk's max_pixels default: larger photos are refused, not decoded

const $ = (id) => document.getElementById(id);
const fer = (window.fer = { state: "loading", error: null, results: [], stats: {}, benchmark });

function setState(state, text) {
  fer.state = state;
  document.body.dataset.state = state;
  if (text !== undefined) $("status").textContent = text;
}

async function sha256(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchChecked(entry) {
  const response = await fetch(entry.url);
  if (!response.ok) throw new Error(`${entry.url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (crypto.subtle && (await sha256(bytes)) !== entry.sha256) {
    throw new Error(`${entry.url} does not match its sha256 in models.json; reload, or reinstall fer-sdk`);
  }
  return bytes;
}

function downloadSizes() {
  // what the page fetched to start: the ONNX Runtime Web files and the two models, over the wire and unpacked
  const sizes = { transferred_bytes: 0, decoded_bytes: 0, files: {} };
  for (const e of performance.getEntriesByType("resource")) {
    const name = new URL(e.name).pathname.split("/").pop();
    if (!/\.(wasm|mjs|onnx)$/.test(name)) continue;
    sizes.files[name] = { transferred_bytes: e.transferSize, decoded_bytes: e.decodedBodySize };
    sizes.transferred_bytes += e.transferSize;
    sizes.decoded_bytes += e.decodedBodySize;
  }
  return sizes;
}

let pipeline = null;

async function start() {
  try {
    const index = await (await fetch("models.json")).json();
    const threads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
    ort.env.wasm.numThreads = threads;
    const t0 = performance.now();
    pipeline = await Pipeline.create(ort, index, fetchChecked);
    const loadMs = performance.now() - t0;
    fer.stats = {
      model: index.classifier.name,
      detector: index.detector.name,
      onnxruntime_web: ort.env.versions?.web ?? index.runtime.onnxruntime_web,
      threads,
      cross_origin_isolated: self.crossOriginIsolated,
      load_ms: loadMs,
      download: downloadSizes(),
      user_agent: navigator.userAgent,
    };
    $("about").textContent =
      `fer-sdk ${index.fer_sdk} · model ${index.classifier.name} · detector ${index.detector.name} · ` +
      `onnxruntime-web ${fer.stats.onnxruntime_web} (WebAssembly, ${threads} thread${threads > 1 ? "s" : ""})`;
    $("webcam").disabled = !navigator.mediaDevices?.getUserMedia;
    setState("ready", `Ready: ${index.classifier.name} loaded in ${Math.round(loadMs)} ms. Choose photos or start the webcam.`);
  } catch (err) {
    fer.error = String(err?.message ?? err);
    setState("error", `Could not start: ${fer.error}`);
  }
}

// ------------------------------------------------------------------ photos

async function decode(file) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
  if (bitmap.width * bitmap.height > MAX_PIXELS) {
    bitmap.close();
    throw new Error(`${bitmap.width}x${bitmap.height} is over ${MAX_PIXELS.toLocaleString()} pixels`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height);
  return { canvas, bgr: rgbaToBgr(rgba.data, canvas.width, canvas.height) };
}

function drawFaces(ctx, faces) {
  const unit = Math.max(ctx.canvas.width, ctx.canvas.height) / 500;
  ctx.lineWidth = Math.max(2, 2 * unit);
  ctx.font = `${Math.round(Math.max(12, 13 * unit))}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  for (const f of faces) {
    const [x, y, w, h] = f.box;
    const color = COLORS[f.emotion] ?? "#2f6fed";
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, w, h);
    const label = `${f.emotion} ${f.score.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 8 * unit;
    const th = Math.round(Math.max(12, 13 * unit)) + 4 * unit;
    const ty = y > th ? y : y + h + th;
    ctx.fillStyle = color;
    ctx.fillRect(x - ctx.lineWidth / 2, ty - th, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 4 * unit, ty - 2 * unit);
  }
}

function facesHtml(faces) {
  return faces
    .map((f, i) => {
      const bars = Object.entries(f.emotions)
        .map(([name, p]) => `<div class="bar"><span>${name}</span><i style="width:${(100 * p).toFixed(1)}%;background:${COLORS[name]}"></i><span class="v">${p.toFixed(2)}</span></div>`)
        .join("");
      return `<div class="face"><div>Face ${i + 1}: <b>${f.emotion}</b> ${f.score.toFixed(2)} · box ${f.box.join(", ")}</div>${bars}</div>`;
    })
    .join("");
}

function ms(v) {
  return `${v.toFixed(v < 10 ? 1 : 0)} ms`;
}

async function analyzeFiles(files) {
  if (!pipeline || fer.state === "busy") return;
  setState("busy", `Analyzing ${files.length} photo${files.length > 1 ? "s" : ""}…`);
  for (const file of files) {
    const card = document.createElement("article");
    card.className = "card";
    card.innerHTML = `<h2></h2>`;
    card.querySelector("h2").textContent = file.name;
    $("results").prepend(card);
    const entry = { name: file.name };
    try {
      const t0 = performance.now();
      const { canvas, bgr } = await decode(file);
      const t1 = performance.now();
      const { faces, detect_ms, classify_ms } = await pipeline.analyze(bgr);
      const t2 = performance.now();
      Object.assign(entry, { width: bgr.width, height: bgr.height, faces, decode_ms: t1 - t0, detect_ms, classify_ms, total_ms: t2 - t0, bgr, canvas });
      drawFaces(canvas.getContext("2d"), faces);
      card.append(canvas);
      card.insertAdjacentHTML(
        "beforeend",
        `<div class="timing">${bgr.width}x${bgr.height} · ${faces.length} face${faces.length === 1 ? "" : "s"} · ${ms(entry.total_ms)} (decode ${ms(entry.decode_ms)}, detect ${ms(detect_ms)}, align + classify ${ms(classify_ms)})</div>${facesHtml(faces)}`,
      );
      if (!faces.length) card.insertAdjacentHTML("beforeend", `<p>No face found.</p>`);
    } catch (err) {
      entry.error = String(err?.message ?? err);
      card.insertAdjacentHTML("beforeend", `<p class="error"></p>`);
      card.querySelector(".error").textContent = `Not analyzed: ${entry.error}`;
    }
    fer.results.push(entry);
  }
  showSummary();
  setState("ready", `Done: ${fer.results.length} photo${fer.results.length === 1 ? "" : "s"} analyzed.`);
}

function summarize(entries) {
  const ok = entries.filter((e) => !e.error);
  const faces = ok.reduce((n, e) => n + e.faces.length, 0);
  const total = ok.reduce((t, e) => t + e.total_ms, 0);
  const classify = ok.reduce((t, e) => t + e.classify_ms, 0);
  return { photos: ok.length, faces, ms_per_photo: ok.length ? total / ok.length : null, ms_per_face: faces ? classify / faces : null };
}

function showSummary() {
  const s = summarize(fer.results);
  fer.stats.summary = s;
  const dl = fer.stats.download;
  $("summary").hidden = false;
  $("summary").textContent =
    `${s.photos} photos, ${s.faces} faces: ${s.ms_per_photo == null ? "–" : ms(s.ms_per_photo)} per photo (decode to result), ` +
    `${s.ms_per_face == null ? "–" : ms(s.ms_per_face)} per face (align + classify). Downloaded ${(dl.transferred_bytes / 1e6).toFixed(1)} MB ` +
    `(${(dl.decoded_bytes / 1e6).toFixed(1)} MB unpacked) once, to start.`;
}

/** Re-run the photos already analyzed `repeats` times (warm): per-photo and per-face timings. */
async function benchmark(repeats = 5) {
  const photos = fer.results.filter((e) => !e.error);
  const runs = [];
  for (let r = 0; r < repeats; r++) {
    for (const e of photos) {
      const t0 = performance.now();
      const { faces, classify_ms } = await pipeline.analyze(e.bgr);
      runs.push({ name: e.name, faces: faces.length, total_ms: performance.now() - t0, classify_ms });
    }
  }
  const faces = runs.reduce((n, r) => n + r.faces, 0);
  return {
    repeats,
    photos: runs.length,
    faces,
    ms_per_photo: runs.reduce((t, r) => t + r.total_ms, 0) / runs.length,
    ms_per_face: faces ? runs.reduce((t, r) => t + r.classify_ms, 0) / faces : null,
    runs,
  };
}

// ------------------------------------------------------------------ webcam

let stream = null;

async function toggleWebcam() {
  if (stream) {
    stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("webcam").textContent = "Start webcam";
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    $("status").textContent = `Webcam not available: ${err?.message ?? err}`;
    return;
  }
  $("webcam").textContent = "Stop webcam";
  $("live").hidden = false;
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  const canvas = $("live-canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  fer.live = { frames: 0, faces: 0 };
  let last = performance.now();
  const loop = async () => {
    if (!stream) return;
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    ctx.drawImage(video, 0, 0);
    const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const { faces } = await pipeline.analyze(rgbaToBgr(rgba.data, canvas.width, canvas.height));
    drawFaces(ctx, faces);
    $("live-faces").innerHTML = facesHtml(faces);
    const now = performance.now();
    $("fps").textContent = `${(1000 / (now - last)).toFixed(1)} frames/s`;
    last = now;
    fer.live.frames += 1;
    fer.live.faces += faces.length;
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}

// ------------------------------------------------------------------ wiring

$("photos").addEventListener("change", (e) => analyzeFiles([...e.target.files]));
$("webcam").addEventListener("click", toggleWebcam);
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  analyzeFiles([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/")));
});
start();
