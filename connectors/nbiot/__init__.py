"""NB-IoT ingest: devices over CoAP (``coap``) and raw UDP (``udp``), and the carriers'
HTTP push (``push``: CTWing, OneNET; bodies in ``platforms``), wired in ``service``.
Payloads decode by product profile (``products``, ``products.yaml``) or SenML
(``senml``); ``uplink`` turns one message into readings; ``seal`` authenticates direct
devices (HMAC + counter); ``devices`` is the small-deployment device file; ``unknown``
counts unregistered identities."""
