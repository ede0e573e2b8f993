"""``orchestrator.v1.JobService``: proto in, one store call, proto out.

Errors are not handled here: they propagate to ``orchestrator.api.errors.ErrorInterceptor``.
``SubmitJobs`` renames them to the spec they are about (``specs[3].command``).
A malformed job id is INVALID_ARGUMENT naming ``job_id`` (it cannot be any job's id); a
well-formed id of no job is NOT_FOUND, and so is another tenant's job (a tenant cannot tell the
two apart). Each call's principal is checked against the job it names before anything is read
out or changed (``orchestrator.security.authz``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, cast

from grpc import aio
from opentelemetry import trace

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc, types_pb2
from orchestrator.api.auth import current_principal
from orchestrator.api.coalesce import SubmitCoalescer
from orchestrator.api.logs import LogProxy
from orchestrator.errors import InvalidSpecError, PermissionDeniedError
from orchestrator.scheduler.explain import explain_job
from orchestrator.scheduler.model import Reason
from orchestrator.security.authz import check_job_visible, check_submit, list_tenant_filter
from orchestrator.security.tokens import Principal
from orchestrator.states import JobState
from orchestrator.store import MAX_SUBMIT_BATCH, JobStore
from orchestrator.tracing import context_from_metadata, current_traceparent, get_tracer
from orchestrator.validation import normalize_spec, validate_job_id, validate_reason

__all__ = ["JobServiceServicer"]

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)

_REASONS = {
    reason: service_pb2.PlacementReason.Value(f"PLACEMENT_REASON_{reason.name}")
    for reason in Reason
}
_EVENT_ID_RE = re.compile(r"^[0-9]{1,9}$")
_MAX_PAGE_SIZE = 1000


def _states(values: list[int]) -> list[JobState]:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(JobState(value))
        except ValueError:
            raise InvalidSpecError(f"states[{i}]", f"{value} is not a job state") from None
    return out


def _page_token(token: str) -> str:
    if token:
        try:
            validate_job_id(token)
        except InvalidSpecError:
            raise InvalidSpecError(
                "page_token", "is not a next_page_token from an earlier ListJobs answer"
            ) from None
    return token


def _batch_specs(
    principal: Principal, specs: Sequence[types_pb2.JobSpec]
) -> list[types_pb2.JobSpec]:
    """The specs of a SubmitJobs call, authorised (all of them first) and then normalised; an
    error names the spec it is about (``specs[i]``)."""
    if len(specs) > MAX_SUBMIT_BATCH:
        raise InvalidSpecError(
            "specs",
            f"{len(specs)} specs; at most {MAX_SUBMIT_BATCH} per call (split the batch)",
        )
    allowed = []
    for i, spec in enumerate(specs):
        try:
            allowed.append(check_submit(principal, spec))
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(
                f"specs[{i}]: {exc.message}", principal=exc.principal
            ) from None
    out = []
    for i, spec in enumerate(allowed):
        try:
            out.append(normalize_spec(spec))
        except InvalidSpecError as exc:
            raise InvalidSpecError(f"specs[{i}].{exc.field}", exc.problem) from None
    return out


def _after(event_id: str) -> str:
    if event_id and not _EVENT_ID_RE.match(event_id):
        raise InvalidSpecError("after_event_id", f"{event_id[:40]!r} is not an event id")
    return event_id


class JobServiceServicer(service_pb2_grpc.JobServiceServicer):
    """Submit, inspect, follow and cancel jobs on one :class:`JobStore`."""

    def __init__(self, store: JobStore, *, logs: LogProxy) -> None:
        self._store = store
        self._logs = logs
        self._submits = SubmitCoalescer(store)
        """Concurrent single submits share store writes (see ``orchestrator.api.coalesce``)."""

    async def _visible_job(self, job_id: str) -> types_pb2.Job:
        """The job, if the caller may see it (else JobNotFoundError, as if there were none)."""
        validate_job_id(job_id)
        job = await self._store.get_job(job_id)
        check_job_visible(current_principal(), job)
        return job

    async def SubmitJob(
        self, request: service_pb2.SubmitJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.SubmitJobResponse:
        parent = context_from_metadata(tuple(context.invocation_metadata() or ()))
        with _tracer.start_as_current_span(
            "api.submit", context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            spec = normalize_spec(check_submit(current_principal(), request.spec))
            span.set_attributes(
                {"job.tenant": spec.tenant, "job.queue": spec.queue, "job.name": spec.name}
            )
            job, deduplicated = await self._submits.submit(spec, current_traceparent())
            span.set_attributes({"job.id": job.id, "job.deduplicated": deduplicated})
        log.debug("submitted %s (%s/%s) dedup=%s", job.id, spec.tenant, spec.name, deduplicated)
        return service_pb2.SubmitJobResponse(job=job, deduplicated=deduplicated)

    async def SubmitJobs(
        self, request: service_pb2.SubmitJobsRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.SubmitJobsResponse:
        # One span for the call, not one per job. Every job of the batch records this span's
        # context as its traceparent, so the batch is one trace: each job's later spans
        # (scheduler.place, dispatcher.dispatch, agent, the job's TRACEPARENT) are children of
        # api.submit_batch, told apart by their job.id attribute.
        parent = context_from_metadata(tuple(context.invocation_metadata() or ()))
        with _tracer.start_as_current_span(
            "api.submit_batch", context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("jobs.count", len(request.specs))
            specs = _batch_specs(current_principal(), request.specs)
            traceparent = current_traceparent()
            done = await self._store.submit_specs(specs, traceparents=[traceparent] * len(specs))
            deduplicated = sum(done.deduplicated)
            span.set_attribute("jobs.deduplicated", deduplicated)
        if specs:
            log.info(
                "submitted %d jobs in one batch (%s .. %s), %d deduplicated",
                len(specs), done.job_ids[0], done.job_ids[-1], deduplicated,
            )  # fmt: skip
        # each result filled where it goes: a Job made first would be copied in again
        response = service_pb2.SubmitJobsResponse()
        add = response.results.add
        for i, spec in enumerate(specs):
            done.write_job(i, spec, add(deduplicated=done.deduplicated[i]).job)
        return response

    async def GetJob(
        self, request: service_pb2.GetJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.GetJobResponse:
        return service_pb2.GetJobResponse(job=await self._visible_job(request.job_id))

    async def ListJobs(
        self, request: service_pb2.ListJobsRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.ListJobsResponse:
        jobs, token = await self._store.list_jobs(
            states=_states(list(request.states)),
            tenant=list_tenant_filter(current_principal(), request.tenant),
            queue=request.queue,
            site=request.site,
            page_size=min(request.page_size or 100, _MAX_PAGE_SIZE),
            page_token=_page_token(request.page_token),
        )
        return service_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(
        self, request: service_pb2.CancelJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.CancelJobResponse:
        validate_reason(request.reason)
        await self._visible_job(request.job_id)
        job = await self._store.cancel(request.job_id, request.reason)
        log.info("cancel of %s requested: %s", job.id, request.reason or "(no reason)")
        return service_pb2.CancelJobResponse(job=job)

    async def WatchEvents(
        self, request: service_pb2.WatchEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[types_pb2.JobEvent]:
        after = _after(request.after_event_id)
        job = await self._visible_job(request.job_id)  # NOT_FOUND before streaming
        if request.follow and not JobState(job.state).is_terminal():
            # Ends after the terminal event; a client going away cancels this generator.
            events = cast(
                AsyncGenerator[types_pb2.JobEvent, None],
                self._store.follow_events(job.id, after=after),
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
            return
        while True:
            page = await self._store.events(job.id, after=after)
            for event in page:
                yield event
            if not page:
                return
            after = page[-1].event_id

    async def StreamLogs(
        self, request: service_pb2.StreamLogsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.LogChunk]:
        await self._visible_job(request.job_id)
        chunks = self._logs.stream(
            request.job_id, attempt=request.attempt, follow=request.follow, stream=request.stream
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def ExplainJob(
        self, request: service_pb2.ExplainJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.ExplainJobResponse:
        await self._visible_job(request.job_id)
        report = await explain_job(self._store, request.job_id)
        return service_pb2.ExplainJobResponse(
            job=report.job,
            verdicts=[
                service_pb2.SiteVerdict(
                    site_id=v.site_id,
                    reason=_REASONS[v.reason],
                    detail=v.detail,
                    score=v.score or 0.0,
                )
                for v in report.explanation.verdicts
            ],
            unschedulable_reason=report.explanation.unschedulable or "",
            queue_position=report.queue_position,
            queue_length=report.queue_length,
            summary=report.summary,
        )
