"""What supervisors and integrations do to the queues from outside a call (SPEC R12,
R13, R17, R18): book a callback ("call me back" on a website), cancel one.

The same rules as a caller's press 1: the queue's number guard (R13), one open callback
per number and queue (R12), durable before the answer (R20). A cancel of a callback an
agent holds stops that agent's leg (nobody is dialled after it).
"""

from __future__ import annotations

import logging

from ivr.domain import events
from ivr.domain.items import Kind, State, WorkItem
from ivr.domain.numbers import parse
from ivr.domain.queues import DuplicateCallback, QueueError
from ivr.flows.context import FlowContext

log = logging.getLogger("ivr.flows.desk")


class Refused(Exception):
    """The request is refused; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, reason: str, existing: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.existing = existing  # R12: the open callback's id


class Desk:
    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx

    async def create_callback(self, queue: str, number: str,
                              not_before: float | None = None) -> WorkItem:
        """Book a callback for ``number`` (any form a customer types: ``(201)
        555-0123``, ``+1 201 555 0123``), now or from ``not_before`` (epoch seconds,
        inside the queue's business hours). Raises ``Refused``."""
        q = self.ctx.queue(queue)
        if q is None:
            raise Refused(404, f"no queue {queue!r}")
        if self.ctx.stopping:
            raise Refused(503, "the service is stopping; try again shortly")
        parsed = parse(number, q.region)
        why = self.ctx.guards[queue].check(parsed)
        if parsed is None or why is not None:
            # R13: the reason names the rule, never echoes more than the caller sent.
            raise Refused(422, f"number refused ({why or 'not a phone number'})")
        now = self.ctx.now()
        if not_before is not None:
            if not_before <= now:
                not_before = None  # "from now on" is just now
            elif q.hours is not None and not q.hours.is_open(not_before):
                raise Refused(422, "not_before is outside the queue's business hours")
        try:
            item = self.ctx.engine.add_callback(queue, parsed.e164, not_before=not_before)
        except DuplicateCallback as exc:
            raise Refused(409, "a callback for this number is already open in this queue",
                          exc.existing.id) from None
        except ValueError as exc:
            raise Refused(422, str(exc)) from None
        if not await self.ctx.commit():
            # Not durable, so not promised: closed again and the client told to retry.
            self.ctx.engine.cancel(item.id, "not_stored")
            await self.ctx.commit()
            raise Refused(503, "the store refused the request (logged); nothing was booked")
        log.info("[item=%s] callback booked from the API in %s%s", item.id[:12], queue,
                 " (scheduled)" if not_before else "")
        self.ctx.publish(events.CallbackCommitted(queue, item.id))
        self.ctx.publish(events.WorkChanged(queue, item.id))
        return item

    async def cancel_callback(self, item_id: str, by: str) -> WorkItem:
        """Close an open callback (R17). Live callers are not cancelled: they are on the
        line and hang up themselves. Raises ``Refused``."""
        try:
            item = self.ctx.engine.get(item_id)
        except QueueError:
            raise Refused(404, "no such callback") from None
        if item.kind is not Kind.CALLBACK:
            raise Refused(409, "a live caller cannot be cancelled (only callbacks)")
        if not item.is_open:
            raise Refused(409, f"the callback is already {item.state}")
        held = item.state in (State.OFFERED, State.DIALLING)
        self.ctx.engine.cancel(item_id, f"cancelled by {by}")
        await self.ctx.commit()
        log.info("[item=%s] callback cancelled by %s", item_id[:12], by)
        # An agent ringing, previewing or dialling it stops now (ItemClosed).
        self.ctx.publish(events.ItemClosed(item.queue, item.id))
        if held:
            log.info("[item=%s] the agent holding it was told", item_id[:12])
        return item
