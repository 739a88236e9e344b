"""The Kafka connection (bootstrap servers and librdkafka properties) as faust-streaming settings.

Every other client takes the librdkafka properties unchanged; faust talks through aiokafka, which takes
the same facts in other names: a broker URL list and a credentials object with an SSL context. The
security properties are translated; any other property (librdkafka tuning) has no aiokafka
counterpart here and is named in `not_applied`, so the caller can say so instead of failing.

>>> c = faust_connection(KafkaConnection("k1:9093,k2:9093", {"security.protocol": "SASL_PLAINTEXT",
...     "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "p", "linger.ms": "5"}))
>>> c.brokers, c.credentials, c.not_applied
(['kafka://k1:9093', 'kafka://k2:9093'], <SASLCredentials: username=u>, ['linger.ms'])
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import faust
from faust.types.auth import CredentialsT

from shared.kafka_client import KafkaConnection

# librdkafka's names of what aiokafka can do (sasl.mechanisms is librdkafka's alias of sasl.mechanism).
TRANSLATED = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
    "ssl.ca.location", "ssl.ca.pem", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification",
})  # fmt: skip
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # GSSAPI, OAUTHBEARER need callbacks of their own
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class FaustConnection:
    brokers: list[str]
    credentials: CredentialsT | None
    not_applied: list[str] = field(default_factory=list)  # names, or name=value for an unsupported value


def faust_connection(connection: KafkaConnection) -> FaustConnection:
    properties = connection.properties
    brokers = [f"kafka://{server.strip()}" for server in connection.bootstrap.split(",") if server.strip()]
    not_applied = sorted(set(properties) - TRANSLATED)
    protocol = properties.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        return FaustConnection(brokers, None, [*not_applied, f"security.protocol={protocol}"])
    context = _ssl_context(properties) if protocol.endswith("SSL") else None
    if not protocol.startswith("SASL"):
        return FaustConnection(brokers, faust.SSLCredentials(context) if context else None, not_applied)
    mechanism = properties.get("sasl.mechanism", properties.get("sasl.mechanisms", "GSSAPI")).upper()
    if mechanism not in SASL_MECHANISMS:
        return FaustConnection(brokers, None, [*not_applied, f"sasl.mechanism={mechanism}"])
    credentials = faust.SASLCredentials(
        username=properties.get("sasl.username"),
        password=properties.get("sasl.password"),
        ssl_context=context,
        mechanism=mechanism,
    )
    return FaustConnection(brokers, credentials, not_applied)


def _ssl_context(properties: Mapping[str, str]) -> ssl.SSLContext:
    """librdkafka's TLS client settings: trusted CAs (default: the system's), client certificate, checks."""
    ca = properties.get("ssl.ca.location")
    context = ssl.create_default_context(
        cafile=ca if ca and ca != "probe" and not Path(ca).is_dir() else None,
        capath=ca if ca and Path(ca).is_dir() else None,
        cadata=properties.get("ssl.ca.pem"),
    )
    if "ssl.certificate.location" in properties:
        context.load_cert_chain(
            properties["ssl.certificate.location"],
            properties.get("ssl.key.location"),
            properties.get("ssl.key.password"),
        )
    if properties.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    if properties.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
