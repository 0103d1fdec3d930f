"""Runners' reports of their tasks' states, applied to the cluster.

A runner tells the Host what became of each task it was given: `running`,
then how it ended. `Reports` checks each report against what the Host holds
(the task is this node's, at this attempt) and applies it through the
cluster's guarded `transition`, so a late or repeated report changes nothing
(see `cluster`'s invariants). A runner's ready reports come together
(`POST /api/runner/reports`) and are applied in one go: one read of their
tasks (from memory for those that hold resources, `db/heldrows.py`), their
writes in one group commit, one wake-up of the waiters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..errors import Conflict, HakuRiverError, NotFound, ValidationError
from ..models import TRANSITIONS, RunnerReport, Task, TaskState
from .cluster import Cluster

# What a runner may report is every state a task can move to from assigning
# (the Host's last word before the runner's): one list, not two to keep in step.
RUNNER_REPORTABLE = TRANSITIONS[TaskState.ASSIGNING]
"""States a runner may report. LOST: the task's container vanished under the runner."""


class Reports:
    """Applies runners' reports to `cluster` (see the module docstring)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    async def apply_report(
        self,
        node_name: str,
        task_id: int,
        state: TaskState,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        output_error: str | None = None,
        attempt: int = 1,
    ) -> Task:
        """A runner's report of a task's state. Returns the task as stored afterwards.
        A final report's `output_error` (the task's output files are incomplete)
        is stored with its state and exit code.

        Reports that the guards refuse (a late `completed` after `killed`)
        are acknowledged but change nothing; so is a `running` or `paused`
        report of a `lost` task whose node is offline (its next heartbeat
        restores the task, with the node). A report for another `attempt`
        than the task's current one (the runner of an attempt that was
        retried) is refused: it is about a run the Host gave up on.
        """
        if state not in RUNNER_REPORTABLE:
            raise ValidationError(f"runners cannot report state {state}")
        report = RunnerReport(task_id, state, exit_code, error, output_error, attempt)
        (outcome,) = await self.apply_reports(node_name, [report])
        if isinstance(outcome, HakuRiverError):
            raise outcome
        return outcome

    async def apply_reports(self, node_name: str, reports: Sequence[RunnerReport]) -> list[Task | HakuRiverError]:
        """Several reports of one runner, applied in order, in one go: one read
        of the tasks, their writes queued together (one group commit, `db/store.py`),
        one wake-up of the waiters and at most one kick. Each report's outcome,
        in order: the task as stored afterwards, or why it was refused
        (NotFound, Conflict: as `apply_report` raises them). A task's reports
        are applied one after the other, so `running` then `completed` of one
        task both take effect; different tasks' reports do not wait for each other.

        ValidationError (nothing applied) when one of them reports a state a
        runner may not."""
        for index, report in enumerate(reports):
            if report.state not in RUNNER_REPORTABLE:
                raise ValidationError(f"reports[{index}]: runners cannot report state {report.state}")
        stored = {t.id: t for t in await self.cluster.db.get_tasks(r.task_id for r in reports)}
        outcomes: list[Task | HakuRiverError | None] = [None] * len(reports)
        by_task: dict[int, list[int]] = {}
        for index, report in enumerate(reports):
            by_task.setdefault(report.task_id, []).append(index)
        changed: list[Task] = []

        async def apply_in_order(task_id: int, indexes: list[int]) -> None:
            task = stored.get(task_id)
            for index in indexes:
                try:
                    after = await self._apply_one(node_name, task, reports[index])
                except HakuRiverError as exc:  # this report only; the others go on
                    outcomes[index] = exc
                    continue
                if after is None:  # the guard refused it: the stored state moved on meanwhile
                    task = await self.cluster.db.get_task(task_id) or task
                elif after is not task:
                    task = after
                    changed.append(after)
                outcomes[index] = task

        await asyncio.gather(*(apply_in_order(task_id, indexes) for task_id, indexes in by_task.items()))
        if changed:
            await self.cluster.notify_changed()
            if any(not t.state.holds_resources for t in changed):
                self.cluster.kick()
        return [outcome for outcome in outcomes if outcome is not None]

    async def _apply_one(self, node_name: str, task: Task | None, report: RunnerReport) -> Task | None:
        """One report against `task` (as last read): `task` itself when it is
        in that state already, the task afterwards when it moved, None when
        the guard refused the move; NotFound or Conflict when the report is refused."""
        if task is None:
            raise NotFound(f"no task {report.task_id}")
        if task.node != node_name:
            raise Conflict(f"task {task.id} is assigned to {task.node}, not {node_name}")
        if report.attempt != task.attempt:
            raise Conflict(
                f"task {task.id} is at attempt {task.attempt}; this report is about attempt {report.attempt}"
            )
        if task.state is report.state:
            return task
        if task.state is TaskState.LOST and report.state.holds_resources and not self._online(node_name):
            # Acknowledged, not applied: a task brought back while the Host holds
            # its node offline would hold resources on a node no sweep watches,
            # and stay `running` for good if the runner is gone. The heartbeat
            # that brings the node back restores the task with it.
            return task
        fields: dict[str, Any] = {}
        if report.state.is_final:
            fields = {"exit_code": report.exit_code, "error": report.error, "output_error": report.output_error}
        return await self.cluster.transition(task.id, report.state, current=task, attempt=report.attempt, **fields)

    def _online(self, node_name: str) -> bool:
        node = self.cluster.nodes.get(node_name)
        return node is not None and node.online
