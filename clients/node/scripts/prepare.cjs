// `npm run prepare`: builds dist/ (tsc). npm runs it after `npm ci` here, and when another
// project installs this folder (`npm install /path/to/repo/clients/node`). In that case
// the folder is a fresh checkout without node_modules: npm installs neither the compiler
// nor, for a linked folder, the runtime dependencies there, so this installs them first
// (exactly the lockfile's, no install scripts) and the linked package resolves them.
"use strict";

const { execFileSync } = require("node:child_process");
const { existsSync, rmSync } = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");

if (!existsSync(tsc)) {
  const npmCli = process.env.npm_execpath;
  const [command, prefixArgs] = npmCli ? [process.execPath, [npmCli]] : ["npm", []];
  execFileSync(command, [...prefixArgs, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], {
    cwd: root,
    stdio: "inherit",
  });
}
// From scratch, so no file of an older build (a module since removed) is shipped.
rmSync(path.join(root, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
