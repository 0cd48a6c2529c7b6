"""Linking nodes through Redis (``--redis-url``): the broker and its parts.

Layers, top down: ``broker`` (the core's broker interface, messages from the room channels, the
link's outage and recovery) uses ``joins`` (the cross-node join protocol), ``subscriptions``
(interest per room), ``leases`` (node leases, the sweeper), ``repairs`` and ``outage`` (gaps and
lost links), ``registry``, ``positions``, ``scripts`` (the Lua), ``pipeline`` (the outgoing command
queue), ``link`` (the connections) and ``wire`` (keys, channels, the envelope).
"""
