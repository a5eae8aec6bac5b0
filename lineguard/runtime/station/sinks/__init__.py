"""Line outputs: where a verdict goes besides the PUB socket (MQTT, OPC UA, webhooks).

Every sink takes what the outbox publishes through ``offer`` — a put on the sink's own bounded
queue, never a wait: the sink's thread does the encoding and the network. A full queue drops the
message and counts it (per sink, in ``/healthz``, ``/metrics`` and the web view).
"""
