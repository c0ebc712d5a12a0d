"""Calls we only answer, tell one thing, and end: nothing is queued for them.

- ``UnknownQueueCall``: the Stasis argument names no configured queue (a dialplan
  mistake): "unavailable", then goodbye.
- ``AlreadyConfirmed``: a caller whose callback was committed before the service
  restarted is still on the line (they were hearing the confirmation): the
  confirmation again, then goodbye — never queued anew as a live caller.
"""

from __future__ import annotations

import logging

from ivr import ari
from ivr.config import QueueConfig
from ivr.domain import events
from ivr.flows.context import FlowContext
from ivr.flows.session import ChannelSession, Hangup

log = logging.getLogger("ivr.flows.caller")


class UnknownQueueCall(ChannelSession):
    """A call whose Stasis argument names no configured queue (a dialplan mistake):
    answered, told the service is unavailable, hung up; nothing is queued."""

    def __init__(self, ctx: FlowContext, channel: ari.Channel, queue_name: str, *,
                 node: str = "") -> None:
        node = ctx.node_name(node)
        super().__init__(ctx.client(node), channel.id, log, ctx.clock, node)
        self.ctx = ctx
        self.queue_name = queue_name

    async def run(self) -> None:
        self.log.error("Stasis argument names no configured queue: %r; hanging up politely",
                       self.queue_name)
        self.ctx.publish(events.CallToUnknownQueue(queue=self.queue_name))
        try:
            await self.quietly(self.ari.answer(self.channel_id))
            await self.play_until([self.ctx.prompt(None, "unavailable")])
            await self.hangup()
        except Hangup:
            pass
        finally:
            self.ended.set()


class AlreadyConfirmed(ChannelSession):
    """A caller whose callback was committed before the service restarted, still on the
    line (they were hearing the confirmation): the confirmation again, then goodbye."""

    def __init__(self, ctx: FlowContext, channel: ari.Channel, queue: QueueConfig, *,
                 node: str = "") -> None:
        node = ctx.node_name(node)
        super().__init__(ctx.client(node), channel.id, log, ctx.clock, node)
        self.ctx = ctx
        self.q = queue

    async def run(self) -> None:
        try:
            await self.quietly(self.ari.stop_moh(self.channel_id))
            await self.play_until([self.ctx.prompt(self.q, "confirmation")])
            await self.hangup()
        except Hangup:
            pass
        finally:
            self.ended.set()
