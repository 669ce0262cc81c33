"""Faust transports: the embedded durable log (``local://``); Kafka is Faust's own."""
