"""Fleet config pushes: signed bundles in, verified before parsing, applied live, rolled back by themselves.

    channels.py   MQTT retained topics and HTTP polling; both feed one pipeline
    bundle.py     the signed envelope: read (size, shape), verify (Ed25519, threshold), sign
    trust.py      the trust file: keys with ids, a threshold and an epoch
    compose.py    a payload + the local bootstrap -> a site config, checked as check-config does
    slots.py      last-good, candidate, pending marker, trust and state files under state_dir/fleet
    pipeline.py   verify -> check -> validate -> dry run -> slot -> apply -> health -> commit or roll back
    unit.py       the fleet unit the agent supervises
    cli.py        ``edgeagent fleet keygen|trust|sign|verify|push|status``

Nothing here imports the agent: the pipeline is handed what it may do to it (``FleetHost``).
Importing this package loads nothing heavy (the config model imports ``settings``).
"""
