/**
 * TLS and mutual TLS against a real `oubli serve --tls-cert … [--tls-client-ca …]`, with
 * a throwaway CA issued by the openssl command line.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { OubliClient, OubliError } from "../src/index";
import { OubliServer } from "./server";

const run = promisify(execFile);

// The certificate's name checked, rather than the IP address (Node warns that an IP as
// the TLS server name breaks RFC 6066).
const BY_NAME = { "grpc.ssl_target_name_override": "localhost" };

interface Pki {
  dir: string;
  ca: Buffer;
  file: (name: string) => string;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate for `clientName`. */
async function issueCertificates(clientName: string): Promise<Pki> {
  const dir = await mkdtemp(path.join(tmpdir(), "oubli-node-pki-"));
  const file = (name: string): string => path.join(dir, name);
  const openssl = (...args: string[]) => run("openssl", args, { cwd: dir, timeout: 30_000 });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
    "-subj", "/CN=oubli-node-test-ca",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  for (const [name, subject, extensions] of [
    ["server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"],
    ["client", `/CN=${clientName}`, "extendedKeyUsage=clientAuth\n"],
  ] as const) {
    await writeFile(file(`${name}.ext`), extensions);
    await openssl("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject);
    await openssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
      "-CAcreateserial", "-out", `${name}.pem`, "-days", "1", "-extfile", `${name}.ext`);
  }
  return { dir, ca: await readFile(file("ca.pem")), file };
}

describe("TLS", () => {
  let pki: Pki;
  let tls: OubliServer;
  let mtls: OubliServer;

  before(async () => {
    pki = await issueCertificates("control-panel");
    const serverCert = ["--tls-cert", pki.file("server.pem"), "--tls-key", pki.file("server.key")];
    [tls, mtls] = await Promise.all([
      OubliServer.start(serverCert),
      OubliServer.start([...serverCert, "--tls-client-ca", pki.file("ca.pem")]),
    ]);
  });

  after(async () => {
    await Promise.all([tls?.stop(), mtls?.stop()]);
    if (pki) await rm(pki.dir, { recursive: true, force: true });
  });

  test("TLS with the server's CA and a bearer token", async () => {
    const client = new OubliClient(tls.target, {
      token: await tls.token("control-panel"),
      rootCerts: pki.ca,
      channelOptions: BY_NAME,
    });
    try {
      const subject = await client.createSubject();
      assert.equal((await client.getSubject(subject.subjectId)).state, "active");
    } finally {
      client.close();
    }
  });

  test("a plaintext client gets no answer from a TLS server", async () => {
    const client = new OubliClient(tls.target, { token: "unused", timeoutMs: 3_000, maxAttempts: 1 });
    try {
      await assert.rejects(client.createSubject(), OubliError);
    } finally {
      client.close();
    }
  });

  test("mutual TLS: the client certificate names the caller, no token", async () => {
    const client = new OubliClient(mtls.target, {
      rootCerts: pki.ca,
      clientCert: await readFile(pki.file("client.pem")),
      clientKey: await readFile(pki.file("client.key")),
      channelOptions: BY_NAME,
    });
    try {
      const subject = await client.createSubject();
      const record = await client.createRecord(subject.subjectId, "contact", { email: "ada@example.org" });
      const read = await client.getRecord(subject.subjectId, record.recordId, "service");
      assert.equal(read.fields["email"], "ada@example.org");
    } finally {
      client.close();
    }
  });
});
