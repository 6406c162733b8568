/**
 * A real `oubli serve` for the tests: its own temporary data directory, a free port
 * (`--listen 127.0.0.1:0 --ready-file`), bearer tokens made with `oubli token create`.
 * The binary is `$OUBLI_BIN`, else the repository's `.venv/bin/oubli`.
 */

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** clients/node, from build/test/ where the compiled tests run. */
const PACKAGE_DIR = path.resolve(__dirname, "..", "..");

export const OUBLI_BIN = process.env["OUBLI_BIN"] ?? path.resolve(PACKAGE_DIR, "..", "..", ".venv", "bin", "oubli");

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class OubliServer {
  private constructor(
    readonly dataDir: string,
    readonly port: number,
    private readonly child: ChildProcess,
    private readonly log: () => string,
  ) {}

  get target(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts a server and waits until it serves (its ready file holds the port). */
  static async start(extraArgs: readonly string[] = []): Promise<OubliServer> {
    const dataDir = await mkdtemp(path.join(tmpdir(), "oubli-node-test-"));
    const readyFile = path.join(dataDir, "ready");
    const child = spawn(
      OUBLI_BIN,
      ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--ready-file", readyFile, ...extraArgs],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    const keep = (data: Buffer): void => {
      output = (output + data.toString()).slice(-20_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    // Whatever happens to the test process, the server does not outlive it.
    const killOnExit = (): void => {
      child.kill("SIGKILL");
    };
    process.once("exit", killOnExit);
    child.once("exit", () => process.removeListener("exit", killOnExit));

    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`oubli serve exited (${child.exitCode ?? child.signalCode}):\n${output}`);
      }
      const port = Number.parseInt(await readFile(readyFile, "utf8").catch(() => ""), 10);
      if (Number.isInteger(port) && port > 0) return new OubliServer(dataDir, port, child, () => output);
      await delay(100);
    }
    child.kill("SIGKILL");
    throw new Error(`oubli serve did not start within ${START_TIMEOUT_MS} ms:\n${output}`);
  }

  /**
   * A bearer token for `caller` (a caller of vault/access/default_callers.toml), valid for
   * `expiresIn` (`oubli token create --expires-in`, e.g. "1s"; default 90 days).
   */
  async token(caller: string, expiresIn?: string): Promise<string> {
    const lifetime = expiresIn ? ["--expires-in", expiresIn] : [];
    const { stdout } = await run(
      OUBLI_BIN,
      ["token", "create", caller, "--data-dir", this.dataDir, ...lifetime],
      { timeout: 60_000 },
    );
    const token = stdout.split("\n")[0]?.trim();
    if (!token) throw new Error(`oubli token create ${caller} printed no token`);
    return token;
  }

  /** The server's recent output, for failure messages. */
  output(): string {
    return this.log();
  }

  /** SIGTERM (drain), SIGKILL after STOP_TIMEOUT_MS; then the data directory goes. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
