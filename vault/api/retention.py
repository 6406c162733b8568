"""RetentionService: RunRetention (dry run or carried out).

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.api.messages import timestamp
from vault.usecases.retention import RetentionJob, RetentionSummary


class RetentionServicer(pb_grpc.RetentionServiceServicer):
    def __init__(self, job: RetentionJob) -> None:
        self._job = job

    def RunRetention(
        self, request: pb.RunRetentionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunRetentionResponse]:
        summary = RetentionSummary(self._job.clock(), request.dry_run)
        for action, done, total in self._job.steps(dry_run=request.dry_run):
            summary.actions.append(action)
            yield pb.RunRetentionResponse(
                action=pb.RetentionAction(
                    kind=action.kind,
                    target=action.target,
                    due_time=timestamp(action.due_at),
                    records=action.records,
                    done=done,
                    total=total,
                    error=action.error,
                )
            )
        yield pb.RunRetentionResponse(
            summary=pb.RetentionSummary(
                dry_run=summary.dry_run,
                subjects_erased=summary.subjects_erased,
                buckets_destroyed=summary.buckets_destroyed,
                records_destroyed=summary.records_destroyed,
                run_time=timestamp(summary.ran_at),
                failures=summary.failures,
            )
        )
