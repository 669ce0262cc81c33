"""MQTT ingest: the paho client (``client``), Vigil's JSON payloads (``payload``), topic
templates (``topics``), connection settings (``options``), and the mosquitto launcher
with the configuration Vigil ships (``mosquitto``, ``vigil-mosquitto.conf``)."""
