"""AMC executions: create exactly once, find after an uncertain POST, poll, cancel.

A POST that creates an execution is never simply retried: AMC has no idempotency key and runs are
billed (and counted against the instance's daily ad-hoc quota). After a 5xx, a timeout or a dropped
connection, the executions created since the attempt are searched (twice, since listing may lag a
POST) and only when none matches every echoed fact is the POST sent again. Every POST is preceded by
`before_post`, which the pipeline uses to check its lease and take a quota slot, and followed by
`after_post` once AMC answered (or its fate is uncertain): the slot counts from then, as AMC counts it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

from recomamp.amazon.matching import CREATION_SKEW, Execution, ExecutionRequest, amc_local_time, judge
from recomamp.amazon.transport import AmcError, AmcTarget, AmcTransport, SubmitUncertain, TokenSource
from recomamp.logs import get_logger

log = get_logger(__name__)

BeforePost = Callable[[], Awaitable[None]]
AfterPost = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


class Executions:
    def __init__(self, transport: AmcTransport) -> None:
        self._transport = transport

    async def create(
        self, target: AmcTarget, tokens: TokenSource, request: ExecutionRequest, *, marker: str | None
    ) -> Execution:
        """One POST. Raises SubmitUncertain when it may have created an execution anyway."""
        body = await self._transport.reporting(
            target, tokens, "POST", "/workflowExecutions", body=request.body(marker), idempotent=False
        )
        return Execution.from_json(body)

    async def get(
        self, target: AmcTarget, tokens: TokenSource, execution_id: str, *, include_workflow: bool = False
    ) -> Execution:
        params = {"includeWorkflow": "true"} if include_workflow else None
        return Execution.from_json(
            await self._transport.reporting(target, tokens, "GET", f"/workflowExecutions/{execution_id}", params=params)
        )

    async def list_since(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        *,
        since: datetime,
        workflow_id: str | None = None,
        include_workflow: bool = True,
    ) -> AsyncIterator[Execution]:
        # `minCreationTime` as AMC wants it: wall time with no Z and no fraction, and the zone named apart.
        params = {
            "minCreationTime": amc_local_time(since.astimezone(UTC)),
            "timeZone": "UTC",
            "includeWorkflow": "true" if include_workflow else "false",
        }
        if workflow_id:
            params["workflowId"] = workflow_id
        next_token: str | None = None
        while True:
            page_params = dict(params, **({"nextToken": next_token} if next_token else {}))
            body = await self._transport.reporting(target, tokens, "GET", "/workflowExecutions", params=page_params)
            for item in (body or {}).get("executions", []):
                yield Execution.from_json(item)
            next_token = (body or {}).get("nextToken")
            if not next_token:
                return

    async def cancel(self, target: AmcTarget, tokens: TokenSource, execution_id: str) -> Execution:
        """PUT status CANCELLED (AMC answers with an empty object), then GET what it is now."""
        await self._transport.reporting(
            target, tokens, "PUT", f"/workflowExecutions/{execution_id}", body={"status": "CANCELLED"}
        )
        return await self.get(target, tokens, execution_id)

    async def download_urls(self, target: AmcTarget, tokens: TokenSource, execution_id: str) -> list[str]:
        urls: list[str] = []
        next_token: str | None = None
        while True:
            params = {"nextToken": next_token} if next_token else None
            body = await self._transport.reporting(
                target, tokens, "GET", f"/workflowExecutions/{execution_id}/downloadUrls", params=params
            )
            urls.extend(str(url) for url in (body or {}).get("downloadUrls", []))
            next_token = (body or {}).get("nextToken")
            if not next_token:
                return urls

    async def _search(
        self, target: AmcTarget, tokens: TokenSource, request: ExecutionRequest, marker: str, since: datetime
    ) -> Execution | None:
        adopted: list[Execution] = []
        async for execution in self.list_since(
            target, tokens, since=since - CREATION_SKEW - timedelta(minutes=3), workflow_id=request.workflow_id
        ):
            verdict = judge(execution, request, marker, since)
            if verdict.needs_sql:
                # The listing left the SQL out: ask for this one execution with its workflow.
                execution = await self.get(target, tokens, execution.execution_id, include_workflow=True)
                verdict = judge(execution, request, marker, since)
            if verdict.adopt:
                log.info(
                    "amc_execution_matched",
                    amc_execution_id=execution.execution_id,
                    matched_on=list(verdict.matched_on),
                )
                adopted.append(execution)
            elif verdict.differs_on:
                log.debug(
                    "amc_execution_not_ours", amc_execution_id=execution.execution_id, differs_on=verdict.differs_on
                )
        if len(adopted) > 1:
            log.warning(
                "amc_several_executions_matched",
                amc_execution_ids=[e.execution_id for e in adopted],
                detail="adopting the earliest; the others were created by an earlier attempt of this run",
            )
        adopted.sort(key=lambda e: e.create_time or datetime.min.replace(tzinfo=UTC))
        return adopted[0] if adopted else None

    async def find_submitted(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        request: ExecutionRequest,
        *,
        marker: str,
        since: datetime,
    ) -> Execution | None:
        """The execution an earlier POST of this run created, if any: searched twice, since lists may lag."""
        found = await self._search(target, tokens, request, marker, since)
        if found is None and self._transport.policy.listing_lag_seconds > 0:
            await self._transport.sleep(self._transport.policy.listing_lag_seconds)
            found = await self._search(target, tokens, request, marker, since)
        log.info(
            "amc_uncertain_submit_decided",
            decision="adopt" if found is not None else "post_again",
            amc_execution_id=found.execution_id if found else None,
        )
        return found

    async def submit_once(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        request: ExecutionRequest,
        *,
        marker: str,
        since: datetime,
        check_first: bool,
        before_post: BeforePost = _nothing,
        after_post: AfterPost = _nothing,
    ) -> Execution:
        """Create the run's execution exactly once.

        `check_first` is set when an earlier attempt for this run may have reached AMC (the marker was
        persisted before a crash): then the search comes before any POST.
        """
        policy = self._transport.policy
        attempts = 0
        while True:
            if check_first:
                found = await self.find_submitted(target, tokens, request, marker=marker, since=since)
                if found is not None:
                    return found
            await before_post()
            attempts += 1
            try:
                execution = await self.create(target, tokens, request, marker=marker)
            except SubmitUncertain as exc:
                await after_post()  # it may have been counted: from now at the latest
                log.warning(
                    "amc_submit_uncertain", http_status=exc.status, error=str(exc), attempt=attempts, marker=marker
                )
                if attempts >= policy.max_attempts:
                    raise
                await self._transport.sleep(policy.wait(attempts))
                check_first = True
                continue
            await after_post()
            log.info("amc_execution_created", amc_execution_id=execution.execution_id, amc_status=execution.status)
            return execution

    async def wait_until_terminal(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        execution_id: str,
        *,
        on_status: Callable[[Execution], Awaitable[None]] | None = None,
        deadline_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Execution:
        """Poll with growing waits until the execution is SUCCEEDED, FAILED, CANCELLED or REJECTED."""
        policy = self._transport.policy
        wait = policy.poll_initial_seconds
        last_status: str | None = None
        started = clock()
        while True:
            if deadline_seconds is not None and clock() - started > deadline_seconds:
                raise AmcError(
                    f"execution {execution_id} was still {last_status} after {deadline_seconds:.0f} s of polling; "
                    "AMC should have stopped it by now. Check it in AMC, and cancel it there if it is stuck",
                    transient=False,
                )
            execution = await self.get(target, tokens, execution_id)
            if execution.status != last_status:
                log.info("amc_execution_status", amc_execution_id=execution_id, amc_status=execution.status)
                last_status = execution.status
                if on_status is not None:
                    await on_status(execution)
            if execution.terminal:
                return execution
            await self._transport.sleep(wait)
            wait = min(wait * policy.poll_multiplier, policy.poll_max_seconds)
