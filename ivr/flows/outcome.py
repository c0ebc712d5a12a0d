"""Typed results between an agent leg and the dispatcher (no strings between rooms)."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How an offer ended, for the agent's next status."""

    TALKED = "talked"  # a conversation took place: wrap-up
    UNANSWERED = "unanswered"  # the phone rang out, or the agent was silent in the preview
    REJECTED = "rejected"  # the phone refused the call (busy, DND)
    DECLINED = "declined"  # the agent said no (2, or hung up in the preview)
    WITHDRAWN = "withdrawn"  # the item closed or the caller left meanwhile
    ATTEMPT_FAILED = "attempt_failed"  # the customer was not reached (busy, no answer, trunk)

    @property
    def unresponsive(self) -> bool:
        """R7/R9: the agent did not take an offered call: set not-ready."""
        return self in (Outcome.UNANSWERED, Outcome.REJECTED)


class Ring(StrEnum):
    ANSWERED = "answered"
    SILENT = "silent"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    DECLINED = "declined"  # the agent declined on the console while it rang


RING_OUTCOME = {Ring.SILENT: Outcome.UNANSWERED, Ring.REJECTED: Outcome.REJECTED,
                 Ring.CANCELLED: Outcome.WITHDRAWN, Ring.DECLINED: Outcome.DECLINED}


class Phase(StrEnum):
    """Where an offer is, for the agent's console card."""

    RINGING = "ringing"  # the softphone rings
    PREVIEW = "preview"  # answered a callback offer: hearing the preview
    DIALLING = "dialling"  # accepted: the customer is being called
    CONNECTED = "connected"  # in conversation
    ENDED = "ended"
