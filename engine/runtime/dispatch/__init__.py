"""The dispatcher in the gateway: durable outbox, receivers, the API and signed links."""
