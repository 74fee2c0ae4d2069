"""The bundled samples: building them, loading them into Kafka/MongoDB, replaying them."""
