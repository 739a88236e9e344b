"""The summarizer's faust app gets the same Kafka connection as every librdkafka client, translated."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from shared.faust_connection import faust_connection
from shared.kafka_client import KafkaConnection
from tests.throwaway_ca import issue_certificates


def test_sasl_ssl_properties_become_scram_credentials_that_trust_the_given_ca(tmp_path: Path) -> None:
    ca = issue_certificates(tmp_path).ca
    properties = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "alice-secret",
        "ssl.ca.location": str(ca),
    }
    connection = faust_connection(KafkaConnection("127.0.0.1:9093", properties))
    assert connection.brokers == ["kafka://127.0.0.1:9093"] and connection.not_applied == []
    auth = credentials_to_aiokafka_auth(connection.credentials)  # what faust hands to aiokafka
    assert {key: auth[key] for key in ("security_protocol", "sasl_mechanism", "sasl_plain_username")} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
    }
    assert auth["sasl_plain_password"] == "alice-secret"
    context: ssl.SSLContext = auth["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [dict(entry[0] for entry in cert["subject"]) for cert in context.get_ca_certs()] == [
        {"commonName": "fleetwatch throw-away test CA"}
    ]


def test_tls_without_verification_and_plaintext() -> None:
    properties = {"security.protocol": "ssl", "enable.ssl.certificate.verification": "false"}
    unverified = faust_connection(KafkaConnection("a:1", properties))
    assert isinstance(unverified.credentials, faust.SSLCredentials)
    assert unverified.credentials.context.verify_mode == ssl.CERT_NONE
    plain = faust_connection(KafkaConnection("a:1, b:2"))
    assert plain.brokers == ["kafka://a:1", "kafka://b:2"] and plain.credentials is None


def test_properties_without_an_aiokafka_counterpart_are_named_not_applied() -> None:
    properties = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "GSSAPI",
        "sasl.kerberos.service.name": "kafka",
        "linger.ms": "5",
    }
    connection = faust_connection(KafkaConnection("a:1", properties))
    assert connection.credentials is None
    assert connection.not_applied == ["linger.ms", "sasl.kerberos.service.name", "sasl.mechanism=GSSAPI"]
