"""The test and quick-start rig: a sandboxed Asterisk 22 (Debian sid in a chroot).

Not part of the service (the wheel ships ``ivr`` only): ``scripts/up`` and the tests use
it; operators run the service against their own Asterisk.
"""
