/**
 * Without a server: decoding of the google.rpc details, batch splitting, retries against
 * a port nothing listens on (UNAVAILABLE), deadlines against one that never answers.
 */

import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, test } from "node:test";

import { Metadata, Server, ServerCredentials, type ServiceError } from "@grpc/grpc-js";

import { chunked, DeadlineExceeded, decodeStatusDetails, Unavailable, OubliClient, Status } from "../src/index";
import { fromServiceError, InvalidArgument, NotFound, ResourceExhausted } from "../src/errors";
import { BadRequest, ErrorInfo, RetryInfo } from "../src/gen/google/rpc/error_details";
import { Status as RpcStatus } from "../src/gen/google/rpc/status";
import { GetSubjectResponse, SubjectServiceService } from "../src/gen/oubli/v1/vault";

function any(typeName: string, value: Uint8Array) {
  return { typeUrl: `type.googleapis.com/${typeName}`, value: Buffer.from(value) };
}

function serviceError(code: Status, details: string, status: RpcStatus) {
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(RpcStatus.encode(status).finish()));
  metadata.set("x-request-id", "0f0e0d0c-0b0a-4908-8706-050403020100");
  return Object.assign(new Error(`${code} ${Status[code]}: ${details}`), { code, details, metadata });
}

/** A local port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(address && typeof address === "object");
  return address.port;
}

describe("errors", () => {
  test("ErrorInfo and BadRequest become reason, metadata and field", () => {
    const status: RpcStatus = {
      code: Status.INVALID_ARGUMENT,
      message: "purpose is required",
      details: [
        any(
          "google.rpc.ErrorInfo",
          ErrorInfo.encode({ reason: "INVALID_ARGUMENT", domain: "oubli.v1", metadata: { field: "purpose" } }).finish(),
        ),
        any(
          "google.rpc.BadRequest",
          BadRequest.encode({
            fieldViolations: [{ field: "purpose", description: "purpose is required", reason: "", localizedMessage: undefined }],
          }).finish(),
        ),
      ],
    };
    const error = fromServiceError(serviceError(Status.INVALID_ARGUMENT, "purpose is required", status));
    assert.ok(error instanceof InvalidArgument);
    assert.equal(error.reason, "INVALID_ARGUMENT");
    assert.equal(error.field, "purpose");
    assert.equal(error.details, "purpose is required");
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.requestId, "0f0e0d0c-0b0a-4908-8706-050403020100");
    assert.equal(error.message, "INVALID_ARGUMENT: purpose is required [INVALID_ARGUMENT]");
  });

  test("RetryInfo becomes retryAfter in seconds; ErrorInfo index becomes index", () => {
    const status: RpcStatus = {
      code: Status.RESOURCE_EXHAUSTED,
      message: "retry in 30 s",
      details: [
        any("google.rpc.ErrorInfo", ErrorInfo.encode({ reason: "RATE_LIMITED", domain: "oubli.v1", metadata: { index: "7" } }).finish()),
        any("google.rpc.RetryInfo", RetryInfo.encode({ retryDelay: { seconds: 30, nanos: 500_000_000 } }).finish()),
      ],
    };
    const details = decodeStatusDetails(serviceError(Status.RESOURCE_EXHAUSTED, "", status).metadata);
    assert.equal(details.retryAfter, 30.5);
    assert.equal(details.index, 7);
    assert.ok(fromServiceError(serviceError(Status.RESOURCE_EXHAUSTED, "", status)) instanceof ResourceExhausted);
  });

  test("no trailer, or one that does not parse: the code still decides the class", () => {
    const metadata = new Metadata();
    metadata.set("grpc-status-details-bin", Buffer.from([0xff, 0xff, 0xff]));
    const error = fromServiceError(Object.assign(new Error("x"), { code: Status.NOT_FOUND, details: "gone", metadata }));
    assert.ok(error instanceof NotFound);
    assert.equal(error.reason, "");
    const plain = new TypeError("not a gRPC error");
    assert.equal(fromServiceError(plain), plain);
  });
});

describe("batches", () => {
  test("chunked splits at 1 000 by default, in order", () => {
    const items = Array.from({ length: 2_345 }, (_, i) => i);
    const runs = chunked(items);
    assert.deepEqual(
      runs.map((run) => run.length),
      [1_000, 1_000, 345],
    );
    assert.deepEqual(runs.flat(), items);
    assert.deepEqual(chunked([]), []);
  });
});

describe("the channel: retries on UNAVAILABLE, deadlines, credentials", () => {
  async function clientOnClosedPort() {
    const waits: number[] = [];
    const client = new OubliClient(`127.0.0.1:${await closedPort()}`, {
      token: "unused",
      maxAttempts: 3,
      initialBackoffMs: 40,
      timeoutMs: 5_000,
      sleep: async (ms) => {
        waits.push(ms);
      },
    });
    return { client, waits };
  }

  test("an idempotent call is tried maxAttempts times with jittered, growing bounds", async () => {
    const { client, waits } = await clientOnClosedPort();
    try {
      await assert.rejects(client.getSubject("a".repeat(26)), Unavailable);
      assert.equal(waits.length, 2, "two waits between three attempts");
      assert.ok(waits[0]! >= 0 && waits[0]! <= 40);
      assert.ok(waits[1]! >= 0 && waits[1]! <= 80);
      await assert.rejects(client.shredSubject("a".repeat(26)), Unavailable);
      assert.equal(waits.length, 4);
    } finally {
      client.close();
    }
  });

  test("a call that creates or changes data is tried once", async () => {
    const { client, waits } = await clientOnClosedPort();
    try {
      await assert.rejects(client.createSubject(), Unavailable);
      await assert.rejects(client.createRecord("a".repeat(26), "contact", { email: "x@example.org" }), Unavailable);
      await assert.rejects(client.batchCreateRecords([{ subjectId: "a".repeat(26), category: "contact", fields: {} }]), Unavailable);
      assert.deepEqual(waits, []);
    } finally {
      client.close();
    }
  });

  test("a streamed export is retried before its first chunk", async () => {
    const { client, waits } = await clientOnClosedPort();
    try {
      await assert.rejects(async () => {
        for await (const _ of client.streamExport("a".repeat(26))) assert.fail("no chunk expected");
      }, Unavailable);
      assert.equal(waits.length, 2);
    } finally {
      client.close();
    }
  });

  test("the server's RetryInfo is a floor under the jittered wait", async () => {
    // A gRPC server whose GetSubject is UNAVAILABLE twice with RetryInfo 3 s, then answers.
    let calls = 0;
    const server = new Server();
    server.addService(SubjectServiceService, {
      getSubject: (_call: unknown, callback: (error: Partial<ServiceError> | null, value?: GetSubjectResponse) => void) => {
        calls++;
        if (calls > 2) {
          callback(null, GetSubjectResponse.fromPartial({ subject: { subjectId: "a".repeat(26) } }));
          return;
        }
        const status: RpcStatus = {
          code: Status.UNAVAILABLE,
          message: "busy",
          details: [any("google.rpc.RetryInfo", RetryInfo.encode({ retryDelay: { seconds: 3, nanos: 0 } }).finish())],
        };
        const metadata = new Metadata();
        metadata.set("grpc-status-details-bin", Buffer.from(RpcStatus.encode(status).finish()));
        callback({ code: Status.UNAVAILABLE, details: "busy", metadata });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    const waits: number[] = [];
    const client = new OubliClient(`127.0.0.1:${port}`, {
      initialBackoffMs: 10,
      sleep: async (ms) => {
        waits.push(ms);
      },
    });
    try {
      const subject = await client.getSubject("a".repeat(26));
      assert.equal(subject.subjectId, "a".repeat(26));
      assert.deepEqual(waits, [3000, 3000], "the jitter alone would wait at most 10 and 20 ms");
      assert.equal(calls, 3);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  test("exportToFile starts again when the stream is cut midway; the file holds the second", async () => {
    const streams: Array<Array<Buffer | Error>> = [
      [Buffer.from('{"partial": '), new Unavailable(Status.UNAVAILABLE, "cut")],
      [Buffer.from("{}")],
    ];
    const waits: number[] = [];
    const client = new OubliClient(`127.0.0.1:${await closedPort()}`, {
      sleep: async (ms) => {
        waits.push(ms);
      },
    });
    Object.assign(client, {
      async *streamExport(): AsyncGenerator<Buffer> {
        for (const item of streams.shift()!) {
          if (item instanceof Error) throw item;
          yield item;
        }
      },
    });
    const directory = await mkdtemp(path.join(tmpdir(), "oubli-export-"));
    try {
      const target = path.join(directory, "export.json");
      assert.equal(await client.exportToFile("a".repeat(26), target), 2);
      assert.equal(await readFile(target, "utf8"), "{}");
      assert.equal(waits.length, 1);
      assert.deepEqual(await readdir(directory), ["export.json"]);
    } finally {
      client.close();
      await rm(directory, { recursive: true, force: true });
    }
  });

  test("a server that never answers: DEADLINE_EXCEEDED after timeoutMs, not retried", async () => {
    // Accepts TCP connections and says nothing: no HTTP/2, so no gRPC status ever comes.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address() as { port: number };
    const waits: number[] = [];
    const client = new OubliClient(`127.0.0.1:${port}`, {
      timeoutMs: 300,
      streamTimeoutMs: 300,
      sleep: async (ms) => {
        waits.push(ms);
      },
    });
    try {
      const started = Date.now();
      await assert.rejects(client.getSubject("a".repeat(26)), DeadlineExceeded);
      await assert.rejects(async () => {
        for await (const _ of client.streamExport("a".repeat(26))) assert.fail("no chunk expected");
      }, DeadlineExceeded);
      assert.ok(Date.now() - started < 5_000, "two deadlines of 300 ms");
      assert.deepEqual(waits, []);
    } finally {
      client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  test("a client certificate needs its key", () => {
    assert.throws(() => new OubliClient("127.0.0.1:1", { clientCert: Buffer.from("x") }), TypeError);
  });
});
