"""Server log lines (seed 002) as a stream: templates mined by Drain3, sessions in Redis, count vectors."""
