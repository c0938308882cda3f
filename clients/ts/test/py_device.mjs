// Drives test/py_device.py: a Python reference-client device in its own process.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { PYTHON, REPO } from "./server.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));

export class PyDevice {
  constructor(serverUrl) {
    this.dir = mkdtempSync(join(tmpdir(), "hp-py-"));
    this.proc = spawn(PYTHON, [join(HERE, "py_device.py"), serverUrl, this.dir], {
      cwd: REPO,
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.pending = new Map();
    this.nextId = 1;
    this.sasCodes = [];
    this.sasWaiters = [];
    this.stderr = "";
    this.proc.stderr.on("data", (c) => (this.stderr += c));
    createInterface({ input: this.proc.stdout }).on("line", (line) => {
      const msg = JSON.parse(line);
      if (msg.event === "sas") {
        const waiter = this.sasWaiters.shift();
        if (waiter) waiter(msg.code);
        else this.sasCodes.push(msg.code);
        return;
      }
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`python ${p.cmd}: ${msg.error}\n${this.stderr}`));
    });
  }

  call(cmd, args = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, cmd });
      this.proc.stdin.write(JSON.stringify({ id, cmd, args }) + "\n");
    });
  }

  /** The next SAS the Python device shows. */
  nextSas() {
    const code = this.sasCodes.shift();
    return code !== undefined ? Promise.resolve(code) : new Promise((r) => this.sasWaiters.push(r));
  }

  async close() {
    await this.call("close").catch(() => {});
    this.proc.stdin.end();
    await new Promise((r) => (this.proc.exitCode !== null ? r() : this.proc.once("exit", r)));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
