// A real relay for the tests: `homepocket-relay serve` from the repository's .venv, on
// a free loopback port, on the embedded default, in a temporary data dir.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const PYTHON = join(REPO, ".venv", "bin", "python");

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Start a server; resolves to {url, stop()}. `env` adds variables (ALLOWED_ORIGINS, limits). */
export async function startServer(env = {}) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "hp-ts-"));
  const url = `http://127.0.0.1:${port}`;
  const proc = spawn(
    join(REPO, ".venv", "bin", "homepocket-relay"),
    ["serve", "--host", "127.0.0.1", "--port", String(port), "--data-dir", dataDir],
    { cwd: dataDir, env: { ...process.env, LOG_LEVEL: "WARNING", PUBLIC_URL: url, ...env }, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  proc.stderr.on("data", (chunk) => (stderr += chunk));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`the server exited: ${stderr}`);
    try {
      const r = await fetch(url + "/health");
      if (r.ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error(`the server did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    port,
    dataDir,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill("SIGTERM");
        await new Promise((r) => {
          const t = setTimeout(() => { proc.kill("SIGKILL"); r(); }, 10_000);
          proc.once("exit", () => { clearTimeout(t); r(); });
        });
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
