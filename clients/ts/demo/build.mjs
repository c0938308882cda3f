// Bundles the demo page's script (demo/app.ts and the package it uses) into
// client/web/demo.js, served by `homepocket-relay demo --web`. `--check` builds in
// memory and fails when the committed bundle differs.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const HERE = dirname(fileURLToPath(import.meta.url));
export const OUT = join(HERE, "..", "..", "..", "client", "web", "demo.js");

export async function bundle() {
  const result = await esbuild.build({
    entryPoints: [join(HERE, "app.ts")],
    bundle: true,
    format: "esm",
    minify: true,
    target: "es2022",
    platform: "browser",
    external: ["ws"], // Node's socket, never loaded in a browser
    legalComments: "eof",
    write: false,
    logLevel: "warning",
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = await bundle();
  if (process.argv.includes("--check")) {
    if (readFileSync(OUT, "utf8") !== text) {
      console.error("client/web/demo.js is not built from clients/ts/demo/app.ts: run npm run build:demo");
      process.exit(1);
    }
  } else {
    writeFileSync(OUT, text);
    console.log(`${OUT}: ${text.length} bytes`);
  }
}
