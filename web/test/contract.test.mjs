// web/fer.js against the preprocessing contract's test vectors (made by Python's code: make_vectors.py).
// Run: npm --prefix web test   (node's own test runner; no dependencies)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  alignedCrop,
  decodeYuNet,
  faceInput,
  FER2013_FRAMING,
  finishDetections,
  resizeImage,
  roundHalfEven,
  similarity,
  toGray,
} from "../fer.js";

const vectors = JSON.parse(readFileSync(new URL("./vectors.json", import.meta.url), "utf8"));

const image = (v) => ({ width: v.width, height: v.height, channels: v.channels, data: new Uint8Array(Buffer.from(v.base64, "base64")) });

function assertPixels(got, want, what) {
  assert.deepEqual([got.width, got.height, got.channels], [want.width, want.height, want.channels], `${what}: shape`);
  let worst = 0, off = 0;
  for (let i = 0; i < want.data.length; i++) {
    const d = Math.abs(got.data[i] - want.data[i]);
    worst = Math.max(worst, d);
    if (d) off++;
  }
  assert.ok(worst <= 1, `${what}: a pixel differs by ${worst} levels (at most 1 allowed)`);
  assert.ok(off <= want.data.length * 0.02, `${what}: ${off} of ${want.data.length} pixels differ (at most 2 %)`);
}

test("roundHalfEven rounds as Python and OpenCV do", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6].map(roundHalfEven), [0, 2, 2, -0, -2, 2, 3]);
});

test("BGR -> gray matches cv2.cvtColor exactly", () => {
  for (const v of vectors.gray) assert.deepEqual(toGray(image(v.input)).data, image(v.output).data);
});

test("resize matches cv2.resize (INTER_AREA shrinking, INTER_LINEAR enlarging)", () => {
  for (const v of vectors.resize) {
    const want = image(v.output);
    assertPixels(resizeImage(image(v.input), v.width, v.height, v.method), want, `resize to ${v.width}x${v.height}`);
  }
});

test("similarity matches fer_sdk.framing.similarity (Umeyama)", () => {
  for (const v of vectors.similarity) {
    const got = similarity(v.src, v.dst);
    got.flat().forEach((g, i) => assert.ok(Math.abs(g - v.matrix.flat()[i]) < 1e-9, `matrix[${i}]: ${g} vs ${v.matrix.flat()[i]}`));
  }
});

test("aligned crop and model input match aligned_crop + prepare_faces", () => {
  for (const v of vectors.aligned) {
    const crop = alignedCrop(image(v.input), v.landmarks, FER2013_FRAMING, v.margin);
    assertPixels(crop, image(v.crop), `aligned crop (side ${v.crop.width})`);
    const want = new Float32Array(new Uint8Array(Buffer.from(v.face_float32_base64, "base64")).buffer);
    const got = faceInput(crop, v.spec);
    assert.equal(got.length, want.length);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    assert.ok(worst <= 1.5 / 255, `48x48 input differs by ${worst * 255} levels`);
  }
});

test("YuNet decoding, NMS, rounding and clipping match fer_sdk.yunet", () => {
  const { heads, padded_width, options, cases } = vectors.yunet;
  const typed = Object.fromEntries(Object.entries(heads).map(([k, v]) => [k, Float32Array.from(v)]));
  const found = decodeYuNet(typed, padded_width, options);
  for (const c of cases) {
    const got = finishDetections(found, c.scale, c.photo[0], c.photo[1], options.min_face);
    assert.equal(got.length, c.detections.length, `scale ${c.scale}: number of faces`);
    got.forEach((d, i) => {
      const want = c.detections[i];
      assert.deepEqual(d.box, want.box);
      assert.ok(Math.abs(d.score - want.score) < 1e-6);
      d.landmarks.flat().forEach((p, j) => assert.ok(Math.abs(p - want.landmarks.flat()[j]) < 1e-6));
    });
  }
});
