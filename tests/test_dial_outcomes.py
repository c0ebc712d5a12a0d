"""How an unanswered callback attempt is classified, from what Asterisk 22 reports
(measured with a SIP carrier; the real-SIP test ``test_faults_real`` re-measures the main
rows). A carrier that never answers is a trunk failure (our outage, no attempt used up);
a customer who does not answer is not."""

from __future__ import annotations

import pytest

from ivr.flows.customer import Dial, _classify

# carrier does, Dial dialstatus seen last, rang, ChannelHangupRequest cause, Destroyed cause
MEASURED = [
    ("nothing at all", "", False, None, 19, Dial.TRUNK_FAILURE),
    ("100 Trying, then nothing", "", False, None, 19, Dial.TRUNK_FAILURE),
    ("nothing, SIP timer B first", "NOANSWER", False, 18, 18, Dial.TRUNK_FAILURE),
    ("503", "CONGESTION", False, 34, 34, Dial.TRUNK_FAILURE),
    ("500", "NOANSWER", False, 38, 38, Dial.TRUNK_FAILURE),
    ("502", "NOANSWER", False, 27, 27, Dial.TRUNK_FAILURE),
    ("504", "NOANSWER", False, 102, 102, Dial.TRUNK_FAILURE),
    ("180, no answer", "RINGING", True, None, 19, Dial.NO_ANSWER),
    ("486 busy", "BUSY", False, 17, 17, Dial.BUSY),
    ("404", "NOANSWER", False, 1, 1, Dial.FAILED),
    ("480", "NOANSWER", False, 19, 19, Dial.FAILED),
    ("603", "NOANSWER", False, 21, 21, Dial.FAILED),
]


@pytest.mark.parametrize(("what", "dialstatus", "rang", "refused", "cause", "expected"),
                         MEASURED, ids=[m[0] for m in MEASURED])
def test_classification(what: str, dialstatus: str, rang: bool, refused: int | None,
                        cause: int, expected: Dial) -> None:
    assert _classify(dialstatus, rang, refused, cause) is expected
