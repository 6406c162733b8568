/**
 * Typed Node client for oubli.
 *
 *     const client = new OubliClient("127.0.0.1:50051", { token });
 *     const subject = await client.createSubject();
 *     await client.createRecord(subject.subjectId, "contact", { email: "…" });
 *     const document = await client.exportSubject(subject.subjectId);
 *     const receipt = await client.shredSubject(subject.subjectId);
 *     client.close();
 *
 * Every call has a deadline. Idempotent calls (reads, export, shred) are retried with
 * exponential backoff and full jitter on UNAVAILABLE; calls that create or change data
 * are not, since a retry could apply them twice. gRPC errors become the OubliError
 * classes of ./errors (the Python client, clients/python/oubli_client, behaves the same).
 */

import { randomBytes } from "node:crypto";
import { open, rename, unlink } from "node:fs/promises";
import * as path from "node:path";

import {
  Channel,
  credentials,
  Metadata,
  status as Status,
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  type ServiceError,
} from "@grpc/grpc-js";

import { errorFor, fromServiceError, OubliError, statusOf } from "./errors";
import * as pb from "./gen/oubli/v1/vault";
import {
  toReceipt,
  toRecord,
  toSubject,
  type ExportDocument,
  type NewRecord,
  type RecordRead,
  type ShredReceipt,
  type StoredRecord,
  type Subject,
} from "./types";

/** The server's limit on the items of one batch call (proto comments; docs/api.md, "Batches"). */
export const MAX_BATCH_ITEMS = 1000;

/** Exports of large subjects exceed gRPC's default 4 MiB receive limit. */
export const MAX_RESPONSE_BYTES = 256 * 1024 * 1024;

export interface OubliClientOptions {
  /** Bearer token (`oubli token create CALLER`), sent as `authorization: Bearer <token>`. */
  token?: string;
  /** PEM of the CA that signed the server's certificate: the channel uses TLS. */
  rootCerts?: Buffer;
  /** PEM client certificate naming the caller, with `clientKey`: mutual TLS. */
  clientCert?: Buffer;
  clientKey?: Buffer;
  /** Deadline of each attempt of a unary call, in ms (default 10 000). */
  timeoutMs?: number;
  /** Deadline of a streamed export, in ms (default one hour). */
  streamTimeoutMs?: number;
  /** Attempts of an idempotent call on UNAVAILABLE, the first included (default 4). */
  maxAttempts?: number;
  /** Upper bound of the first retry's random delay, in ms; doubles per retry (default 100). */
  initialBackoffMs?: number;
  /** Cap of the doubling bound, in ms (default 2 000). */
  maxBackoffMs?: number;
  /** How to wait between attempts (tests pass a recorder). */
  sleep?: (ms: number) => Promise<void>;
  /** Extra grpc-js channel options (e.g. `grpc.keepalive_time_ms`). */
  channelOptions?: ChannelOptions;
}

/** Per-call settings. */
export interface CallSettings {
  /** This call's deadline in ms, instead of the client's. */
  timeoutMs?: number;
}

type UnaryInvoker<Response> = (
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Response) => void,
) => ClientUnaryCall;

const DEFAULT_ORIGIN = "customer";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Splits `items` into runs of at most `size`, in order. */
export function chunked<T>(items: readonly T[], size: number = MAX_BATCH_ITEMS): T[][] {
  const runs: T[][] = [];
  for (let start = 0; start < items.length; start += size) runs.push(items.slice(start, start + size));
  return runs;
}

function itemError(m: pb.ItemError): OubliError {
  return errorFor(statusOf(m.code), m.message, { reason: m.reason });
}

function channelCredentials(options: OubliClientOptions): ChannelCredentials {
  const { rootCerts, clientCert, clientKey } = options;
  if ((clientCert === undefined) !== (clientKey === undefined)) {
    throw new TypeError("clientCert and clientKey go together (mutual TLS)");
  }
  if (rootCerts === undefined && clientCert === undefined) return credentials.createInsecure();
  return credentials.createSsl(rootCerts ?? null, clientKey ?? null, clientCert ?? null);
}

export class OubliClient {
  readonly timeoutMs: number;
  readonly streamTimeoutMs: number;
  readonly maxAttempts: number;
  private readonly token: string | undefined;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly channel: Channel;
  private readonly subjects: pb.SubjectServiceClient;
  private readonly records: pb.RecordServiceClient;
  private readonly lookup: pb.LookupServiceClient;

  /** `target`: `host:port` of an `oubli serve`. */
  constructor(target: string, options: OubliClientOptions = {}) {
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.streamTimeoutMs = options.streamTimeoutMs ?? 3_600_000;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 4);
    this.initialBackoffMs = options.initialBackoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 2_000;
    this.sleep = options.sleep ?? sleep;
    const creds = channelCredentials(options);
    const channelOptions: ChannelOptions = {
      "grpc.max_receive_message_length": MAX_RESPONSE_BYTES,
      ...options.channelOptions,
    };
    // One channel (one HTTP/2 connection) shared by every service's stub.
    this.channel = new Channel(target, creds, channelOptions);
    const shared = { channelOverride: this.channel };
    this.subjects = new pb.SubjectServiceClient(target, creds, shared);
    this.records = new pb.RecordServiceClient(target, creds, shared);
    this.lookup = new pb.LookupServiceClient(target, creds, shared);
  }

  /** Closes the channel; calls after it fail. */
  close(): void {
    this.channel.close();
  }

  // --- plumbing ---------------------------------------------------------------------

  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return metadata;
  }

  /** The random wait before retry `retry` (1 for the first): full jitter, and never
   * shorter than the server's google.rpc.RetryInfo, when it sent one. */
  private backoffMs(retry: number, error: unknown): number {
    const bound = Math.min(this.initialBackoffMs * 2 ** (retry - 1), this.maxBackoffMs);
    const translated = fromServiceError(error);
    const floorMs = translated instanceof OubliError ? (translated.retryAfter ?? 0) * 1000 : 0;
    return Math.max(Math.random() * bound, floorMs);
  }

  private retryable(error: unknown, attempt: number, idempotent: boolean): boolean {
    return (
      idempotent &&
      attempt < this.maxAttempts &&
      (error as Partial<ServiceError> | null)?.code === Status.UNAVAILABLE
    );
  }

  private async unary<Response>(
    invoke: UnaryInvoker<Response>,
    idempotent: boolean,
    settings: CallSettings = {},
  ): Promise<Response> {
    const timeoutMs = settings.timeoutMs ?? this.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await new Promise<Response>((resolve, reject) => {
          invoke(this.metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (error, response) =>
            error ? reject(error) : resolve(response),
          );
        });
      } catch (error) {
        if (!this.retryable(error, attempt, idempotent)) throw fromServiceError(error);
        await this.sleep(this.backoffMs(attempt, error));
      }
    }
  }

  // --- subjects ---------------------------------------------------------------------

  /** Creates a subject and its own KMS key. Not retried. */
  async createSubject(settings?: CallSettings): Promise<Subject> {
    const response = await this.unary<pb.CreateSubjectResponse>(
      (md, opts, cb) => this.subjects.createSubject({}, md, opts, cb),
      false,
      settings,
    );
    return toSubject(response.subject);
  }

  async getSubject(subjectId: string, settings?: CallSettings): Promise<Subject> {
    const response = await this.unary<pb.GetSubjectResponse>(
      (md, opts, cb) => this.subjects.getSubject({ subjectId }, md, opts, cb),
      true,
      settings,
    );
    return toSubject(response.subject);
  }

  /** Erases the subject by destroying its key. Idempotent: a retry returns the first receipt. */
  async shredSubject(subjectId: string, settings?: CallSettings): Promise<ShredReceipt> {
    const response = await this.unary<pb.ShredSubjectResponse>(
      (md, opts, cb) => this.subjects.shredSubject({ subjectId }, md, opts, cb),
      true,
      settings,
    );
    return toReceipt(response.receipt);
  }

  /**
   * Erases any number of subjects, `MAX_BATCH_ITEMS` per BatchShredSubjects call; per
   * subject, in order, its receipt or the error ShredSubject would have raised.
   * The server refuses an id given twice within one call.
   */
  async batchShredSubjects(
    subjectIds: readonly string[],
    settings?: CallSettings,
  ): Promise<(ShredReceipt | OubliError)[]> {
    const results: (ShredReceipt | OubliError)[] = [];
    for (const run of chunked(subjectIds)) {
      const response = await this.unary<pb.BatchShredSubjectsResponse>(
        (md, opts, cb) => this.subjects.batchShredSubjects({ subjectIds: run }, md, opts, cb),
        true,
        settings,
      );
      for (const result of response.results) {
        const outcome = result.outcome;
        if (outcome?.$case === "receipt") results.push(toReceipt(outcome.value));
        else if (outcome?.$case === "error") results.push(itemError(outcome.value));
        else results.push(errorFor(Status.INTERNAL, "the server sent an empty result"));
      }
    }
    return results;
  }

  /** Closes the account and schedules its erasure. Not retried. */
  async closeAccount(subjectId: string, settings?: CallSettings): Promise<Subject> {
    const response = await this.unary<pb.CloseAccountResponse>(
      (md, opts, cb) => this.subjects.closeAccount({ subjectId }, md, opts, cb),
      false,
      settings,
    );
    return toSubject(response.subject);
  }

  /** Reopens a closed account. Not retried. */
  async reopenAccount(subjectId: string, settings?: CallSettings): Promise<Subject> {
    const response = await this.unary<pb.ReopenAccountResponse>(
      (md, opts, cb) => this.subjects.reopenAccount({ subjectId }, md, opts, cb),
      false,
      settings,
    );
    return toSubject(response.subject);
  }

  // --- export -----------------------------------------------------------------------

  /**
   * The subject's records readable for `purpose` (`"portability"`: the subject's own
   * export), decrypted, as the parsed JSON document.
   */
  async exportSubject(
    subjectId: string,
    purpose = "portability",
    settings?: CallSettings,
  ): Promise<ExportDocument> {
    const response = await this.unary<pb.ExportSubjectResponse>(
      (md, opts, cb) => this.subjects.exportSubject({ subjectId, purpose }, md, opts, cb),
      true,
      settings,
    );
    return JSON.parse(response.json.toString("utf8")) as ExportDocument;
  }

  /**
   * The export document's bytes, chunk by chunk, as the server streams them (bounded
   * memory on both sides). Retried on UNAVAILABLE only before the first chunk: after it,
   * a new stream would repeat bytes already handed out. Breaking out of the loop cancels
   * the call.
   */
  async *streamExport(
    subjectId: string,
    purpose = "portability",
    settings: CallSettings = {},
  ): AsyncGenerator<Buffer, void, undefined> {
    const timeoutMs = settings.timeoutMs ?? this.streamTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      const call: ClientReadableStream<pb.StreamExportResponse> = this.subjects.streamExport(
        { subjectId, purpose },
        this.metadata(),
        { deadline: new Date(Date.now() + timeoutMs) },
      );
      let chunks = 0;
      let failure: unknown;
      try {
        for await (const message of call as AsyncIterable<pb.StreamExportResponse>) {
          chunks++;
          yield message.chunk;
        }
        return;
      } catch (error) {
        if (chunks > 0 || !this.retryable(error, attempt, true)) throw fromServiceError(error);
        failure = error;
      } finally {
        call.cancel();
      }
      await this.sleep(this.backoffMs(attempt, failure));
    }
  }

  /**
   * Streams the export into `filePath`: written to a temporary file beside it (mode
   * 0600: it holds personal data), flushed to disk, then renamed over `filePath`, so the
   * path holds either the whole document or what it held before. Returns the bytes
   * written. A stream cut by UNAVAILABLE midway starts the whole export again.
   */
  async exportToFile(
    subjectId: string,
    filePath: string,
    purpose = "portability",
    settings?: CallSettings,
  ): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const progress = { written: 0 };
      try {
        return await this.exportOnce(subjectId, filePath, purpose, settings, progress);
      } catch (error) {
        // streamExport already retried a stream that failed before its first chunk; one
        // cut midway starts the whole export again, into a fresh temporary file.
        if (progress.written === 0 || !this.retryable(error, attempt, true)) throw error;
        await this.sleep(this.backoffMs(attempt, error));
      }
    }
  }

  private async exportOnce(
    subjectId: string,
    filePath: string,
    purpose: string,
    settings: CallSettings | undefined,
    progress: { written: number },
  ): Promise<number> {
    const directory = path.dirname(path.resolve(filePath));
    const temporary = path.join(
      directory,
      `.${path.basename(filePath)}.${randomBytes(6).toString("hex")}.partial`,
    );
    const file = await open(temporary, "wx", 0o600);
    try {
      for await (const chunk of this.streamExport(subjectId, purpose, settings)) {
        await file.write(chunk);
        progress.written += chunk.length;
      }
      await file.sync();
      await file.close();
      await rename(temporary, filePath);
    } catch (error) {
      await file.close().catch(() => undefined);
      await unlink(temporary).catch(() => undefined);
      throw error;
    }
    return progress.written;
  }

  // --- records ----------------------------------------------------------------------

  /** Encrypts and stores a record; the server assigns its id. Not retried. */
  async createRecord(
    subjectId: string,
    category: string,
    fields: Readonly<Record<string, string>>,
    origin = DEFAULT_ORIGIN,
    settings?: CallSettings,
  ): Promise<StoredRecord> {
    const request: pb.CreateRecordRequest = { subjectId, category, fields: { ...fields }, origin };
    const response = await this.unary<pb.CreateRecordResponse>(
      (md, opts, cb) => this.records.createRecord(request, md, opts, cb),
      false,
      settings,
    );
    return toRecord(response.record);
  }

  /** One record, decrypted, read for `purpose` (required: see docs/rights.md). */
  async getRecord(
    subjectId: string,
    recordId: string,
    purpose: string,
    settings?: CallSettings,
  ): Promise<StoredRecord> {
    const response = await this.unary<pb.GetRecordResponse>(
      (md, opts, cb) => this.records.getRecord({ subjectId, recordId, purpose }, md, opts, cb),
      true,
      settings,
    );
    return toRecord(response.record);
  }

  /** Every record of the subject readable for `purpose` (all pages), optionally of one category. */
  async listRecords(
    subjectId: string,
    purpose: string,
    options: { category?: string; pageSize?: number } & CallSettings = {},
  ): Promise<StoredRecord[]> {
    const records: StoredRecord[] = [];
    let pageToken = "";
    do {
      const request: pb.ListRecordsRequest = {
        subjectId,
        purpose,
        category: options.category ?? "",
        pageSize: options.pageSize ?? 0,
        pageToken,
      };
      const response = await this.unary<pb.ListRecordsResponse>(
        (md, opts, cb) => this.records.listRecords(request, md, opts, cb),
        true,
        options,
      );
      records.push(...response.records.map(toRecord));
      pageToken = response.nextPageToken;
    } while (pageToken);
    return records;
  }

  /**
   * Rectifies a record (its complete new fields). Fails with `Conflict` (ABORTED) when
   * `expectedVersion` is stale; not retried.
   */
  async updateRecord(
    subjectId: string,
    recordId: string,
    fields: Readonly<Record<string, string>>,
    expectedVersion: number,
    options: { origin?: string; eraseEverywhere?: boolean } & CallSettings = {},
  ): Promise<StoredRecord> {
    const request: pb.UpdateRecordRequest = {
      subjectId,
      recordId,
      fields: { ...fields },
      expectedVersion,
      origin: options.origin ?? "",
      eraseEverywhere: options.eraseEverywhere ?? false,
    };
    const response = await this.unary<pb.UpdateRecordResponse>(
      (md, opts, cb) => this.records.updateRecord(request, md, opts, cb),
      false,
      options,
    );
    return toRecord(response.record);
  }

  /** Deletes a record; true when the value is erased from every database copy. Not retried. */
  async deleteRecord(
    subjectId: string,
    recordId: string,
    options: { eraseEverywhere?: boolean } & CallSettings = {},
  ): Promise<boolean> {
    const request: pb.DeleteRecordRequest = {
      subjectId,
      recordId,
      eraseEverywhere: options.eraseEverywhere ?? false,
    };
    const response = await this.unary<pb.DeleteRecordResponse>(
      (md, opts, cb) => this.records.deleteRecord(request, md, opts, cb),
      false,
      options,
    );
    return response.erasedEverywhere;
  }

  /**
   * Stores any number of records (any subjects), `MAX_BATCH_ITEMS` per
   * BatchCreateRecords call, in order. Each call is atomic; across calls, a failure
   * leaves the records of the earlier calls stored: the error's `index` is the failing
   * item's position in `records` when the server named it, and every item before the
   * failing call's first one was stored. Not retried.
   */
  async batchCreateRecords(records: readonly NewRecord[], settings?: CallSettings): Promise<StoredRecord[]> {
    const stored: StoredRecord[] = [];
    for (const run of chunked(records)) {
      const requests: pb.CreateRecordRequest[] = run.map((r) => ({
        subjectId: r.subjectId,
        category: r.category,
        fields: { ...r.fields },
        origin: r.origin ?? DEFAULT_ORIGIN,
      }));
      let response: pb.BatchCreateRecordsResponse;
      try {
        response = await this.unary<pb.BatchCreateRecordsResponse>(
          (md, opts, cb) => this.records.batchCreateRecords({ requests }, md, opts, cb),
          false,
          settings,
        );
      } catch (error) {
        if (error instanceof OubliError && error.index !== undefined) {
          throw errorFor(error.code, error.details, {
            reason: error.reason,
            metadata: error.metadata,
            field: error.field,
            retryAfter: error.retryAfter,
            requestId: error.requestId,
            index: error.index + stored.length,
          });
        }
        throw error;
      }
      // The server does not send the fields back: they are the ones sent.
      response.records.forEach((m, i) => stored.push({ ...toRecord(m), fields: { ...run[i]!.fields } }));
    }
    return stored;
  }

  /**
   * Any number of reads, `MAX_BATCH_ITEMS` per BatchGetRecords call; per read, in order,
   * the record or the error GetRecord would have raised (as a value, not thrown).
   */
  async batchGetRecords(
    reads: readonly RecordRead[],
    settings?: CallSettings,
  ): Promise<(StoredRecord | OubliError)[]> {
    const results: (StoredRecord | OubliError)[] = [];
    for (const run of chunked(reads)) {
      const requests: pb.GetRecordRequest[] = run.map(({ subjectId, recordId, purpose }) => ({
        subjectId,
        recordId,
        purpose,
      }));
      const response = await this.unary<pb.BatchGetRecordsResponse>(
        (md, opts, cb) => this.records.batchGetRecords({ requests }, md, opts, cb),
        true,
        settings,
      );
      for (const result of response.results) {
        const outcome = result.outcome;
        if (outcome?.$case === "record") results.push(toRecord(outcome.value));
        else if (outcome?.$case === "error") results.push(itemError(outcome.value));
        else results.push(errorFor(Status.INTERNAL, "the server sent an empty result"));
      }
    }
    return results;
  }

  // --- lookup -----------------------------------------------------------------------

  /** Ids of the subjects with this e-mail address (or phone number), read for `purpose`. */
  async findSubject(
    query: { email: string } | { phone: string },
    purpose: string,
    settings?: CallSettings,
  ): Promise<string[]> {
    const request: pb.FindSubjectRequest = {
      email: "email" in query ? query.email : "",
      phone: "phone" in query ? query.phone : "",
      purpose,
    };
    const response = await this.unary<pb.FindSubjectResponse>(
      (md, opts, cb) => this.lookup.findSubject(request, md, opts, cb),
      true,
      settings,
    );
    return response.subjectIds;
  }
}
