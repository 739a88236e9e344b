"""The benchmark suite (`fleetwatch bench`): throughput, latency, hot reload, scaling, training and memory.

Every scenario runs against a real Kafka broker and Redis server: the bench's own, started on free
loopback ports, unless FLEETWATCH_KAFKA_BOOTSTRAP and FLEETWATCH_REDIS_URL name others. The scorer
always runs as the real `fleetwatch worker` process; its peers run as processes of their own too.
"""
