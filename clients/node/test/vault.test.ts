/**
 * The client against a real `oubli serve` (see ./server): the calls a billing or
 * control-panel service makes, and the errors it must be able to tell apart.
 */

import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import {
  InvalidArgument,
  MAX_BATCH_ITEMS,
  NotFound,
  OubliClient,
  OubliError,
  PermissionDenied,
  Status,
  Unauthenticated,
  type StoredRecord,
} from "../src/index";
import { OubliServer } from "./server";

const CONTACT = { email: "ada@example.org", phone: "+33 1 23 45 67 89" };

/** An export document without `exported_at`, which differs between two exports. */
function content(document: unknown): unknown {
  const { exported_at: _exportedAt, ...rest } = document as Record<string, unknown>;
  return rest;
}

describe("OubliClient against oubli serve", () => {
  let server: OubliServer;
  let panel: OubliClient; // control-panel: subjects, records, export, shred
  let retention: OubliClient; // retention-job: BatchShredSubjects
  let scratch: string;

  before(async () => {
    server = await OubliServer.start();
    const [panelToken, retentionToken] = await Promise.all([
      server.token("control-panel"),
      server.token("retention-job"),
    ]);
    panel = new OubliClient(server.target, { token: panelToken });
    retention = new OubliClient(server.target, { token: retentionToken });
    scratch = await mkdtemp(path.join(tmpdir(), "oubli-node-export-"));
  });

  after(async () => {
    panel?.close();
    retention?.close();
    await server?.stop();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  async function subjectWithContact(): Promise<{ subjectId: string; record: StoredRecord }> {
    const subject = await panel.createSubject();
    const record = await panel.createRecord(subject.subjectId, "contact", CONTACT, "customer");
    return { subjectId: subject.subjectId, record };
  }

  test("creates a subject, stores a record and reads it for a purpose", async () => {
    const subject = await panel.createSubject();
    assert.match(subject.subjectId, /^[a-z2-7]{26}$/);
    assert.equal(subject.state, "active");
    assert.ok(subject.createdAt instanceof Date);

    const stored = await panel.createRecord(subject.subjectId, "contact", CONTACT);
    assert.equal(stored.version, 1);
    assert.equal(stored.origin, "customer");

    const read = await panel.getRecord(subject.subjectId, stored.recordId, "service");
    assert.deepEqual(read.fields, CONTACT);
    assert.equal(read.category, "contact");
    assert.equal((await panel.getSubject(subject.subjectId)).recordCount, 1);
    assert.deepEqual(
      (await panel.listRecords(subject.subjectId, "service")).map((r) => r.recordId),
      [stored.recordId],
    );
  });

  test("exports a subject: unary JSON and streamed to a file give the same document", async () => {
    const { subjectId, record } = await subjectWithContact();
    const document = await panel.exportSubject(subjectId);
    assert.equal(document.format, "oubli.export.v1");
    assert.equal(document.subject.subject_id, subjectId);
    const [exported] = document.categories["contact"]?.records ?? [];
    assert.equal(exported?.record_id, record.recordId);
    assert.deepEqual(exported?.fields, CONTACT);

    const chunks: Buffer[] = [];
    for await (const chunk of panel.streamExport(subjectId)) chunks.push(chunk);
    assert.deepEqual(content(JSON.parse(Buffer.concat(chunks).toString("utf8"))), content(document));

    const file = path.join(scratch, `${subjectId}.json`);
    const written = await panel.exportToFile(subjectId, file);
    const bytes = await readFile(file);
    assert.equal(bytes.length, written);
    assert.deepEqual(content(JSON.parse(bytes.toString("utf8"))), content(document));
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(scratch), [`${subjectId}.json`], "no temporary file left");
  });

  test("a refused streamed export leaves neither the file nor a temporary one", async () => {
    const { subjectId } = await subjectWithContact();
    const file = path.join(scratch, "refused.json");
    await assert.rejects(panel.exportToFile(subjectId, file, "no_such_purpose"), (error) => {
      assert.ok(error instanceof InvalidArgument);
      assert.equal(error.field, "purpose");
      return true;
    });
    assert.ok(!(await readdir(scratch)).some((name) => name.includes("refused")));
  });

  test("shreds a subject: reads then fail with NOT_FOUND / SUBJECT_SHREDDED", async () => {
    const { subjectId, record } = await subjectWithContact();
    const receipt = await panel.shredSubject(subjectId);
    assert.equal(receipt.subjectId, subjectId);
    assert.equal(receipt.recordsDeleted, 1);
    assert.equal(receipt.kmsBackend, "local-keystore");
    assert.equal(receipt.signature.length, 64);
    assert.ok(receipt.residualCopiesExpireAt > receipt.shreddedAt);

    await assert.rejects(panel.getRecord(subjectId, record.recordId, "service"), (error) => {
      assert.ok(error instanceof NotFound, String(error));
      assert.equal(error.code, Status.NOT_FOUND);
      assert.equal(error.reason, "SUBJECT_SHREDDED");
      assert.equal(error.metadata["subject_id"], subjectId);
      assert.match(error.requestId ?? "", /^[0-9a-f-]{36}$/);
      return true;
    });
    await assert.rejects(panel.exportSubject(subjectId), { reason: "SUBJECT_SHREDDED" });
    assert.equal((await panel.getSubject(subjectId)).state, "shredded");
    // Idempotent: a second shred returns the first receipt.
    assert.deepEqual(await panel.shredSubject(subjectId), receipt);
  });

  test("INVALID_ARGUMENT names the field (google.rpc.BadRequest)", async () => {
    const { subjectId, record } = await subjectWithContact();
    await assert.rejects(panel.getRecord(subjectId, record.recordId, ""), (error) => {
      assert.ok(error instanceof InvalidArgument);
      assert.equal(error.reason, "INVALID_ARGUMENT");
      assert.equal(error.field, "purpose");
      return true;
    });
    await assert.rejects(panel.createRecord(subjectId, "billing", { not_a_field: "x" }), {
      code: Status.INVALID_ARGUMENT,
      field: "fields",
    });
  });

  test("no token or an unknown one: UNAUTHENTICATED", async () => {
    for (const token of [undefined, "oubli_not-a-real-token"]) {
      const client = new OubliClient(server.target, { token });
      try {
        await assert.rejects(client.createSubject(), (error) => {
          assert.ok(error instanceof Unauthenticated, String(error));
          assert.equal(error.reason, "UNAUTHENTICATED");
          return true;
        });
      } finally {
        client.close();
      }
    }
  });

  test("an expired token: UNAUTHENTICATED / TOKEN_EXPIRED, naming the token", async () => {
    const client = new OubliClient(server.target, { token: await server.token("control-panel", "1s") });
    try {
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      await assert.rejects(client.createSubject(), (error) => {
        assert.ok(error instanceof Unauthenticated, String(error));
        assert.equal(error.reason, "TOKEN_EXPIRED");
        assert.match(error.metadata["token_id"] ?? "", /^tok_/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("an RPC outside the caller's policy: PERMISSION_DENIED / RPC_NOT_ALLOWED", async () => {
    await assert.rejects(retention.createSubject(), (error) => {
      assert.ok(error instanceof PermissionDenied);
      assert.equal(error.reason, "RPC_NOT_ALLOWED");
      assert.equal(error.metadata["rpc"], "SubjectService.CreateSubject");
      return true;
    });
  });

  test("batch reads split at the server's maximum, per-item errors in place", async () => {
    const { subjectId, record } = await subjectWithContact();
    const shredded = await subjectWithContact();
    await panel.shredSubject(shredded.subjectId);

    const reads = Array.from({ length: MAX_BATCH_ITEMS }, () => ({
      subjectId,
      recordId: record.recordId,
      purpose: "service",
    }));
    reads.push({ subjectId: shredded.subjectId, recordId: shredded.record.recordId, purpose: "service" });
    const results = await panel.batchGetRecords(reads);
    assert.equal(results.length, MAX_BATCH_ITEMS + 1);
    for (const result of results.slice(0, MAX_BATCH_ITEMS)) {
      assert.ok(!(result instanceof OubliError), String(result));
      assert.deepEqual(result.fields, CONTACT);
    }
    const last = results[MAX_BATCH_ITEMS];
    assert.ok(last instanceof NotFound);
    assert.equal(last.reason, "SUBJECT_SHREDDED");
  });

  test("batch creates split at the maximum; a failing later call names its item", async () => {
    const subject = await panel.createSubject();
    const invoice = (n: number) => ({
      subjectId: subject.subjectId,
      category: "billing",
      fields: { invoice_number: `F-${n}`, amount: "10.00", currency: "EUR" },
    });
    const records = Array.from({ length: MAX_BATCH_ITEMS + 2 }, (_, n) => invoice(n));
    const stored = await panel.batchCreateRecords(records);
    assert.equal(stored.length, MAX_BATCH_ITEMS + 2);
    assert.deepEqual(stored[MAX_BATCH_ITEMS + 1]?.fields, records[MAX_BATCH_ITEMS + 1]?.fields);
    assert.equal((await panel.getSubject(subject.subjectId)).recordCount, MAX_BATCH_ITEMS + 2);

    const bad = [...records.slice(0, MAX_BATCH_ITEMS + 1), { ...invoice(0), fields: { nope: "x" } }];
    await assert.rejects(panel.batchCreateRecords(bad), (error) => {
      assert.ok(error instanceof InvalidArgument, String(error));
      assert.equal(error.index, MAX_BATCH_ITEMS + 1, "the position in the whole input");
      assert.equal(error.field, "requests[1].fields", "the server names it within its call");
      return true;
    });
    // The first call (1 000 records) was stored; the failing one was not.
    assert.equal((await panel.getSubject(subject.subjectId)).recordCount, 2 * MAX_BATCH_ITEMS + 2);
  });

  test("batch shred: one receipt or error per subject, in order", async () => {
    const first = await subjectWithContact();
    const second = await subjectWithContact();
    const results = await retention.batchShredSubjects([first.subjectId, second.subjectId, "a".repeat(26)]);
    assert.equal(results.length, 3);
    assert.ok(!(results[0] instanceof OubliError) && results[0]?.subjectId === first.subjectId);
    assert.ok(!(results[1] instanceof OubliError) && results[1]?.subjectId === second.subjectId);
    assert.ok(results[2] instanceof NotFound);
    assert.equal(results[2].reason, "SUBJECT_NOT_FOUND");
  });
});
