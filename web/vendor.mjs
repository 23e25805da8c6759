// Copies the onnxruntime-web files the page needs from node_modules into vendor/ and records their sha256
// (vendor/manifest.json). `node vendor.mjs --check` verifies vendor/ against node_modules instead (CI runs it
// after `npm ci`), so the committed runtime is exactly the npm package's.
import { createHash } from "node:crypto";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, "node_modules", "onnxruntime-web");
const FILES = ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];
const sha256 = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");

const version = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8")).version;
const manifest = { package: "onnxruntime-web", version, license: "MIT (LICENSE-onnxruntime-web.txt)", files: {} };
for (const name of FILES) {
  const source = join(pkgDir, "dist", name);
  manifest.files[name] = { sha256: sha256(source), size_bytes: readFileSync(source).length };
}
const manifestPath = join(here, "vendor", "manifest.json");
if (process.argv.includes("--check")) {
  const committed = JSON.parse(readFileSync(manifestPath, "utf8"));
  const problems = [];
  if (committed.version !== version) problems.push(`vendor/ holds ${committed.version}, node_modules ${version}`);
  for (const name of FILES) {
    const got = sha256(join(here, "vendor", name));
    if (got !== manifest.files[name].sha256) problems.push(`vendor/${name} differs from the npm package's`);
    if (committed.files[name]?.sha256 !== got) problems.push(`vendor/manifest.json has a stale sha256 for ${name}`);
  }
  if (problems.length) {
    console.error(problems.join("\n") + "\nfix: npm --prefix web ci && npm --prefix web run vendor");
    process.exit(1);
  }
  console.log(`vendor/ matches onnxruntime-web ${version}`);
} else {
  for (const name of FILES) copyFileSync(join(pkgDir, "dist", name), join(here, "vendor", name));
  writeFileSync(manifestPath, JSON.stringify(manifest, null, 2) + "\n");
  console.log(`copied onnxruntime-web ${version} (${FILES.join(", ")}) into vendor/`);
}
