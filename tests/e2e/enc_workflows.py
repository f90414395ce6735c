"""Workflows for the payload-encryption end-to-end test: every kind of payload a history holds
(input, result, activity input/result, child workflow, signal, query, update, continue-as-new,
memo, failure details). Every payload carries the caller's secret string; nothing else does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError


@dataclass
class Order:
    secret: str
    amount: int


@activity.defn
async def charge(order: Order) -> str:
    return f"charged {order.secret} {order.amount}"


@activity.defn
async def decline(secret: str) -> None:
    # The message is a string the server stores as is; the details are payloads.
    raise ApplicationError("card declined", {"why": secret}, type="Declined", non_retryable=True)


@workflow.defn
class ChildOrder:
    @workflow.run
    async def run(self, secret: str) -> str:
        return f"child saw {secret}"


@workflow.defn
class OrderWorkflow:
    def __init__(self) -> None:
        self._approved = ""
        self._note = ""
        self._rounds = -1

    @workflow.run
    async def run(self, order: Order, rounds: int) -> dict[str, Any]:
        self._rounds = rounds
        if rounds > 0:
            workflow.continue_as_new(args=[order, rounds - 1])
        charged = await workflow.execute_activity(
            charge, order, start_to_close_timeout=timedelta(seconds=30)
        )
        child = await workflow.execute_child_workflow(
            ChildOrder.run, order.secret, id=f"{workflow.info().workflow_id}-child"
        )
        await workflow.wait_condition(lambda: bool(self._approved))
        return {"charged": charged, "child": child, "approved": self._approved, "note": self._note}

    @workflow.signal
    def approve(self, by: str) -> None:
        self._approved = by

    @workflow.query
    def state(self) -> dict[str, Any]:
        return {"rounds": self._rounds, "note": self._note}

    @workflow.update
    def set_note(self, note: str) -> str:
        self._note = note
        return f"noted {note}"


@workflow.defn
class DecliningWorkflow:
    @workflow.run
    async def run(self, secret: str) -> None:
        await workflow.execute_activity(
            decline,
            secret,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
