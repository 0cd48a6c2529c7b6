"""Locust harness for roomcast: fan-out latency, connection capacity and a realistic chat swarm.

``loadtest/locustfile.py`` is the Locust entry point (``locust -f loadtest/locustfile.py``);
``python -m loadtest.run`` starts a local server, runs a headless swarm and writes the reports into
``results/loadtest/``. See docs/loadtest.md, whose file table says what each module owns.

Only what runs inside Locust imports gevent and Locust: ``locustfile.py`` and what it imports
(the user classes in ``users.py``, ``resumeuser.py``, ``stormuser.py``; ``process.py``,
``monitor.py``, ``stormperformer.py``, ``stormconductor.py``, ``wsconn.py``). ``run.py``,
``local.py``, ``compare.py``, ``report.py`` and the pure pieces (``settings.py``, ``rooms.py``,
``fanout.py``, ``resume.py``, ``storm.py``, ``failures.py``, ``serverstats.py``,
``procstats.py``) stay free of them so that they can be imported from pytest and plain scripts.
Imports flow one way: the user classes import the process state, which imports the storm's
performer, never the reverse.
"""
