"""Locust harness for roomcast: fan-out latency, connection capacity and a realistic chat swarm.

``loadtest/locustfile.py`` is the Locust entry point (``locust -f loadtest/locustfile.py``);
``python -m loadtest.run`` starts a local server, runs a headless swarm and writes the reports into
``results/loadtest/``. See docs/loadtest.md.

Only ``locustfile.py`` (and what it imports at run time) may import gevent: ``run.py`` and
``report.py`` stay free of it so that they can be imported from pytest and plain scripts.
"""
