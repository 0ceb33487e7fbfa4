// Validate glTF / GLB files with the pinned Khronos glTF-Validator.
//
//   node tools/gltf-validator/validate.mjs FILE.glb [FILE.gltf ...]
//
// Prints one JSON document on stdout: {"validatorVersion": ..., "reports": [report, ...]}
// (one Khronos report per file, external .bin/.png resources loaded from the file's folder)
// and a one-line summary per file on stderr. Exit status: 0 when every file has zero errors
// and zero warnings, 1 when any has errors or warnings, 2 for bad usage or unreadable input.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const validator = require("gltf-validator");

function loaderFor(file) {
  const folder = path.dirname(path.resolve(file));
  return async (uri) => {
    const target = path.resolve(folder, decodeURIComponent(uri));
    if (path.relative(folder, target).startsWith("..")) {
      throw new Error(`external resource ${uri} is outside ${folder}`);
    }
    return new Uint8Array(await readFile(target));
  };
}

async function validateFile(file) {
  const data = new Uint8Array(await readFile(file));
  const ext = path.extname(file).toLowerCase();
  return validator.validateBytes(data, {
    uri: path.basename(file),
    format: ext === ".glb" ? "glb" : "gltf",
    maxIssues: 0,
    writeTimestamp: false,
    externalResourceFunction: loaderFor(file),
  });
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node validate.mjs FILE.glb|FILE.gltf ...");
    return 2;
  }
  const reports = [];
  let failed = false;
  for (const file of files) {
    let report;
    try {
      report = await validateFile(file);
    } catch (err) {
      console.error(`${file}: cannot validate: ${err}`);
      return 2;
    }
    const { numErrors, numWarnings, numInfos, numHints } = report.issues;
    console.error(`${file}: ${numErrors} errors, ${numWarnings} warnings, ${numInfos} infos, ${numHints} hints`);
    failed ||= numErrors > 0 || numWarnings > 0;
    reports.push(report);
  }
  console.log(JSON.stringify({ validatorVersion: validator.version(), reports }, null, 2));
  return failed ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
