/** @oubli/client: the typed Node client of oubli's gRPC API (oubli.v1). */

export {
  MAX_BATCH_ITEMS,
  MAX_RESPONSE_BYTES,
  OubliClient,
  chunked,
  type CallSettings,
  type OubliClientOptions,
} from "./client";
export {
  AlreadyExists,
  Conflict,
  DataLoss,
  DeadlineExceeded,
  FailedPrecondition,
  InvalidArgument,
  NotFound,
  OubliError,
  PermissionDenied,
  ResourceExhausted,
  Status,
  Unauthenticated,
  Unavailable,
  decodeStatusDetails,
  errorFor,
  type OubliErrorDetails,
} from "./errors";
export type {
  ExportDocument,
  ExportedCategory,
  ExportedRecord,
  NewRecord,
  RecordRead,
  ShredReceipt,
  StoredRecord,
  Subject,
  SubjectState,
} from "./types";
/** The generated messages and service clients, for RPCs this class does not wrap. */
export * as proto from "./gen/oubli/v1/vault";
