"""NATS: the embedded server, connections, the JetStream event consumer and publisher, the micro service."""
