"""Several Asterisk nodes, real: one of them stops (its Asterisk killed) while a caller
waits on it and a callback is queued. The caller is counted lost (its call died with the
node), the callback stays and is dialled from the node still up, whose caller carries on.
(Callers served across the nodes through the trunk, in one order, are in
``tests/test_standby.py``.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ivr.app import running
from ivr.config import load
from ivr.domain.items import State
from tests.peers import CallBehaviour, SipCaller, SipCarrier, SipPhone
from tests.support.nodes import running_nodes, write_node_config
from tests.support.waiting import until

QUEUE = "q7402"


async def test_a_node_going_down_loses_its_callers_and_keeps_every_callback(
        tmp_path: Path) -> None:
    with running_nodes({"a": ("a1",), "b": ("b1",)}) as nodes:
        cfg = load(write_node_config(
            nodes, tmp_path, QUEUE,
            {"a1": {"endpoint": "PJSIP/a1", "queues": [QUEUE], "node": "a"}},
            node_down_after="2s"))
        phone = SipPhone(nodes["a"], "a1",
                         CallBehaviour(answer_after=0.3, digits=[(1.0, "1")], hangup_after=2))
        carrier = SipCarrier(nodes["a"], CallBehaviour(answer_after=0.3, max_duration=60))
        on_b = SipCaller(nodes["b"], "7402", caller="2015550432", max_duration=60)
        on_a = SipCaller(nodes["a"], "7402", caller="2015550431", max_duration=60)
        phone.start()
        carrier.start()
        try:
            async with running(cfg) as svc:
                assert svc.ctx is not None
                svc.board.set_ready("a1", False)
                callback = svc.engine.add_callback(QUEUE, "+12015550433")
                assert await svc.ctx.commit()
                on_b.start()
                await until(lambda: len(svc.engine.items(QUEUE)) == 2, 30, "caller on b")
                on_a.start()
                await until(lambda: len(svc.engine.items(QUEUE)) == 3, 30, "caller on a")
                [lost] = [i for i in svc.engine.items(QUEUE) if i.number == "+12015550432"]
                assert lost.node == "b"

                # The whole node dies (no BYE to anyone): its calls with it.
                assert nodes["b"].pid is not None
                os.killpg(nodes["b"].pid, signal.SIGKILL)
                await until(lambda: lost.state is State.ABANDONED, 30, "caller on b lost")
                assert lost.history[-1].event == "abandoned"
                assert lost.history[-1].detail == {"reason": "node_down"}
                assert svc.health()["nodes_down"] == ["b"]
                assert callback.is_open

                # The agent on the node still up serves the callback, then the caller.
                svc.board.set_ready("a1", True)
                [dialled] = await carrier.wait_for_calls(1, 40)
                assert dialled.dialled == "+12015550433"
                calls = await phone.wait_for_calls(2, 60)
                assert [c.from_number for c in calls] == ["+12015550433", "+12015550431"]
                result = await on_a.wait(60)
                assert result.answered and result.hung_up_by == "them", on_a.describe()
                await until(lambda: callback.state is State.DONE, 30, "callback done")
        finally:
            for peer in (phone, carrier, on_a, on_b):
                peer.stop()


pytestmark = pytest.mark.asterisk
