"""SIP peers for tests against the sandboxed Asterisk, driven by sipp subprocesses.

* ``SipCaller``  — a customer calling a DID through the carrier trunk (sends from
  ``instance.carrier_host`` so Asterisk identifies it as the carrier); ``SipCallers``
  many of them from one sipp (``peers/caller.py``).
* ``SipPhone``   — an agent softphone on its static-contact port (or, for
  ``"regagent"``, one that registers with digest auth and answers via ``-oocsf``).
* ``SipCarrier`` — the carrier answering outbound callbacks on
  ``carrier_host:carrier_port``; ``FaultyCarrier`` fails the INVITE itself.
* ``DemoCallerPhone`` — the quick start's demo caller softphone (``peers/uas.py``).

Results are parsed from sipp's own message trace (``-trace_msg``, ``peers/trace.py``):
what sipp actually sent and received, with wall-clock times. sipp cannot take injected
values in ``<pause>`` or ``recv timeout`` (sipp 3.6), so every peer renders its scenario
from the templates in ``tests/sipp/`` into a temp dir (``peers/sipp.py``). Every wait
inside a call is a ``<recv request="BYE" timeout=...>`` so the far end may hang up at
any moment.

Per-call behaviour of a UAS (phone/carrier): ONE sipp process serves every call; a
sipp global counter numbers incoming INVITEs and call k follows ``behaviours[k-1]``
(the last behaviour repeats). No restart between calls, so no window where the port
is closed. Concurrent calls work (each is its own sipp call).
"""

from tests.peers.caller import CallerResult, CallPlan, PlannedCallResult, SipCaller, SipCallers
from tests.peers.sipp import SipError, stop_all
from tests.peers.trace import SipMessage
from tests.peers.uas import (
    BUSY,
    RING_FOREVER,
    TRUNK_503,
    TRUNK_SILENT,
    CallBehaviour,
    DemoCall,
    DemoCallerPhone,
    FaultyCarrier,
    ReceivedCall,
    SipCarrier,
    SipPhone,
    TrunkFault,
)

__all__ = [
    "BUSY",
    "RING_FOREVER",
    "TRUNK_503",
    "TRUNK_SILENT",
    "CallBehaviour",
    "CallPlan",
    "CallerResult",
    "DemoCall",
    "DemoCallerPhone",
    "FaultyCarrier",
    "PlannedCallResult",
    "ReceivedCall",
    "SipCaller",
    "SipCallers",
    "SipCarrier",
    "SipError",
    "SipMessage",
    "SipPhone",
    "TrunkFault",
    "stop_all",
]
