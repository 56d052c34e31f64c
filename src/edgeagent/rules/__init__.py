"""Edge rules: conditions over device points that raise alarms and drive actions at the pole.

``expr`` compiles expressions, ``config`` validates rules and binds them to devices,
``engine`` is the clocked state machine (the same code live and in ``rules test``),
``state`` keeps it across restarts, ``actions`` writes devices and reads them back,
``unit`` runs it all inside the agent.
"""
