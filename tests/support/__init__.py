"""The tests' support wing: shared helpers, one home each (test modules import from here,
never from one another).

* ``asterisk``  — start/finish a sandboxed Asterisk 22 (the shared one and a test's own).
* ``nodes``     — several sandboxed nodes with SIP trunks between them; an ARI app each.
* ``config``    — the service's config file pointed at the sandbox; queue and agent bits.
* ``service``   — the service in-process (the ``service`` fixture) or as a subprocess.
* ``observer``  — the independent ARI observer (a second app, ``subscribeAll``).
* ``observing`` — questions asked of its events: playbacks, callers' channels, bridges.
* ``store``     — what the service committed to SQLite.
* ``waiting``   — polling with a deadline, never a fixed sleep.
* ``tcpproxy``  — a TCP proxy whose connections a test can cut.

The SIP peers (sipp) have their own package, ``tests.peers``.
"""
