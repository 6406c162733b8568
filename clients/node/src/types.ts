/**
 * What the client returns: plain objects with camelCase names and Dates, converted from
 * the generated messages (src/gen/) so callers do not depend on the generator's shapes.
 * Field meanings: proto/oubli/v1/vault.proto and docs/api.md.
 */

import * as pb from "./gen/oubli/v1/vault";

export type SubjectState = "active" | "closed" | "shredding" | "held" | "shredded" | "unspecified";

const STATES: ReadonlyMap<pb.SubjectState, SubjectState> = new Map([
  [pb.SubjectState.SUBJECT_STATE_ACTIVE, "active"],
  [pb.SubjectState.SUBJECT_STATE_CLOSED, "closed"],
  [pb.SubjectState.SUBJECT_STATE_SHREDDING, "shredding"],
  [pb.SubjectState.SUBJECT_STATE_HELD, "held"],
  [pb.SubjectState.SUBJECT_STATE_SHREDDED, "shredded"],
]);

/** A subject's non-personal metadata. */
export interface Subject {
  subjectId: string;
  state: SubjectState;
  createdAt: Date;
  updatedAt: Date;
  recordCount: number;
  restricted: boolean;
  objections: string[];
  consents: string[];
  closedAt?: Date;
  scheduledErasureAt?: Date;
  holdUntil?: Date;
}

/** One decrypted record (the Python client's `Record`). */
export interface StoredRecord {
  subjectId: string;
  recordId: string;
  category: string;
  fields: Record<string, string>;
  version: number;
  origin: string;
  createdAt: Date;
  updatedAt: Date;
  /** When the record's key is destroyed at the latest; unset when the account decides. */
  retainUntil?: Date;
}

/** A record to store with `batchCreateRecords`. */
export interface NewRecord {
  subjectId: string;
  category: string;
  fields: Record<string, string>;
  /** Who supplied the data; default `"customer"`. */
  origin?: string;
}

/** One read of `batchGetRecords`. */
export interface RecordRead {
  subjectId: string;
  recordId: string;
  purpose: string;
}

/** Proof that a subject was erased by destroying its key (docs/api.md, "Shred receipts"). */
export interface ShredReceipt {
  subjectId: string;
  keyId: string;
  shreddedAt: Date;
  recordsDeleted: number;
  kmsBackend: string;
  residualRisk: string;
  residualCopiesExpireAt: Date;
  recordsRetained: number;
  retainedUntil?: Date;
  /** The seq of the erasure ledger's entry naming the destroyed key. */
  ledgerPosition: number;
  /** Ed25519 signature (64 bytes) of the receipt document by the KMS signing key. */
  signature: Buffer;
  signingKeyId: string;
}

// An unset Timestamp the API documents as always present decodes as the epoch rather
// than undefined, so callers need not test for it.
const EPOCH = new Date(0);

export function toSubject(m: pb.Subject | undefined): Subject {
  if (!m) throw new Error("the server's answer has no subject");
  return {
    subjectId: m.subjectId,
    state: STATES.get(m.state) ?? "unspecified",
    createdAt: m.createTime ?? EPOCH,
    updatedAt: m.updateTime ?? EPOCH,
    recordCount: m.recordCount,
    restricted: m.restricted,
    objections: [...m.objections],
    consents: [...m.consents],
    closedAt: m.closeTime,
    scheduledErasureAt: m.scheduledErasureTime,
    holdUntil: m.holdUntilTime,
  };
}

export function toRecord(m: pb.Record | undefined): StoredRecord {
  if (!m) throw new Error("the server's answer has no record");
  return {
    subjectId: m.subjectId,
    recordId: m.recordId,
    category: m.category,
    fields: { ...m.fields },
    version: m.version,
    origin: m.origin,
    createdAt: m.createTime ?? EPOCH,
    updatedAt: m.updateTime ?? EPOCH,
    retainUntil: m.retainUntilTime,
  };
}

export function toReceipt(m: pb.ShredReceipt | undefined): ShredReceipt {
  if (!m) throw new Error("the server's answer has no receipt");
  return {
    subjectId: m.subjectId,
    keyId: m.keyId,
    shreddedAt: m.shredTime ?? EPOCH,
    recordsDeleted: m.recordsDeleted,
    kmsBackend: m.kmsBackend,
    residualRisk: m.residualRisk,
    residualCopiesExpireAt: m.residualCopiesExpireTime ?? EPOCH,
    recordsRetained: m.recordsRetained,
    retainedUntil: m.retainedUntilTime,
    ledgerPosition: m.ledgerPosition,
    signature: Buffer.from(m.signature),
    signingKeyId: m.signingKeyId,
  };
}

/**
 * The export document (ExportSubject, StreamExport): vault/schemas/export.v1.schema.json,
 * with the schema's snake_case names. Times are RFC 3339 strings in UTC.
 */
export interface ExportDocument {
  format: "oubli.export.v1";
  exported_at: string;
  subject: { subject_id: string; state: "active" | "closed" | "held"; created_at: string };
  categories: Record<string, ExportedCategory>;
}

export interface ExportedCategory {
  description: string;
  purposes: string[];
  legal_basis: "contract" | "consent" | "legal_obligation" | "legitimate_interest" | "unknown";
  records: ExportedRecord[];
}

export interface ExportedRecord {
  record_id: string;
  version: number;
  origin: string;
  created_at: string;
  updated_at: string;
  fields: Record<string, string>;
}
