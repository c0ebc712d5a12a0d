"""What-if simulation (issue #15): replay a day of calls through the real queue engine.

``ivr simulate`` feeds arrivals (a CSV, or generated from an hourly profile) to
``ivr.domain`` (``QueueEngine``, ``AgentBoard``, the queue policy and the EWT estimator)
on a simulated clock, with simulated agents, and compares scenarios (config overrides)
side by side. ``ivr export-arrivals`` turns the store's history into such a CSV.

Modules: ``arrivals`` (the calls: CSV, generation), ``scenarios`` (``--set`` /
``--scenario`` / ``--sweep`` through the config loader), ``model`` (the discrete-event
loop around the engine), ``report`` (metrics, Markdown, chart), ``export`` (store ->
CSV), ``command`` (the two subcommands). No Asterisk, no asyncio, no I/O in the model.
"""
