"""roomcast: a real-time WebSocket chat server tuned for many concurrent sockets.

The layers and the path of a message are drawn in docs/architecture.md.
"""
