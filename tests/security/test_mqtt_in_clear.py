"""Finding 16: stations talked MQTT in clear text, so anyone on the backhaul read their password and every sighting.

Now `mqtts://` (TLS, the broker's name checked against a CA the station is given, and a client certificate when
the broker asks for one), tested against a real Mosquitto TLS listener with certificates made here.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backend.ingest.consumer import Ingest
from backend.settings import BackendSettings
from bikeguard.services import Broker, start_broker
from gateway.mqtt import Connection, MqttError, Tls
from gateway.settings import GatewaySettings
from protocol.topics import station_topic
from tests import factories
from tests.backend.test_provisioning import require_mosquitto

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-station-password"
STATION_USER = "st-tls"  # the brokers let in no anonymous client


@dataclass
class Pki:
    """A CA, the broker's certificate for 127.0.0.1 and a station's client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing of ours


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return key


def _cert(
    path: Path,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made in the test: nothing real is trusted."""
    d = tmp_path_factory.mktemp("pki")
    d.chmod(0o755)
    ca_key = _key(d / "ca.key")
    ca = _cert(d / "ca.pem", "Bikeguard test CA", ca_key, None, ca_key, ca=True)
    server_key = _key(d / "broker.key")
    _cert(d / "broker.pem", "broker", server_key, ca, ca_key, ip="127.0.0.1")
    client_key = _key(d / "station.key")
    _cert(d / "station.pem", "station", client_key, ca, ca_key)
    other_key = _key(d / "other-ca.key")
    _cert(d / "other-ca.pem", "Someone else's CA", other_key, None, other_key, ca=True)
    for key in d.glob("*.key"):
        key.chmod(0o644)  # Mosquitto may run as a user of its own
    return Pki(
        d / "ca.pem", d / "broker.pem", d / "broker.key", d / "station.pem", d / "station.key", d / "other-ca.pem"
    )


def tls_mosquitto(pki: Pki, *, client_certificates: bool = False) -> Broker:
    """Mosquitto with one TLS listener (and, if asked, a client certificate required)."""
    require_mosquitto()
    conf = f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
    if client_certificates:
        conf += "require_certificate true\n"
    return start_broker("mosquitto", extra_conf=conf, username=STATION_USER, password=PASSWORD)


@pytest.fixture(scope="module")
def broker_tls(pki: Pki) -> Iterator[Broker]:
    broker = tls_mosquitto(pki)
    yield broker
    broker.stop()


class Tap:
    """A relay on the backhaul that keeps a copy of every byte a station sends: the eavesdropper."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.heard = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Tap:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            while data := await src.read(65536):
                if keep:
                    self.heard += data
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False), return_exceptions=True)


async def publish_through(url_scheme: str, broker: Broker, tap: Tap, tls: Tls | None, topic_prefix: str) -> None:
    """A station connects through the tap with its password and publishes one sightings batch."""
    settings = GatewaySettings(
        station_id=topic_prefix,
        serial_url="/dev/null",
        mqtt_url=f"{url_scheme}://{STATION_USER}:{PASSWORD}@127.0.0.1:{tap.port}",  # type: ignore[arg-type]
        mqtt_ca_file=tls.ca_file if tls else None,
    )
    host, port, user, password = settings.mqtt_address
    batch = factories.batch(topic_prefix, 1, [0xC0FFEE]).to_json()
    async with Connection(
        host, port, client_id=topic_prefix, username=user, password=password, tls=settings.mqtt_tls
    ) as mqtt:
        await mqtt.publish(station_topic(topic_prefix, "sightings"), batch, qos=1)


async def test_in_clear_the_backhaul_reads_the_password_and_the_sightings(topic_prefix: str) -> None:
    # What the finding was, and what a station on mqtt:// still shows anyone on its backhaul.
    require_mosquitto()
    broker = start_broker("mosquitto", username=STATION_USER, password=PASSWORD)
    try:
        async with Tap(broker.port) as tap:
            await publish_through("mqtt", broker, tap, None, topic_prefix)
    finally:
        broker.stop()
    assert PASSWORD.encode() in tap.heard and b"00C0FFEE" in tap.heard


async def test_over_mqtts_the_backhaul_reads_neither(broker_tls: Broker, pki: Pki, topic_prefix: str) -> None:
    async with Tap(broker_tls.port) as tap:
        await publish_through("mqtts", broker_tls, tap, Tls(ca_file=pki.ca), topic_prefix)
    assert len(tap.heard) > 100  # it did talk through the tap
    assert PASSWORD.encode() not in tap.heard and b"00C0FFEE" not in tap.heard and b"MQTT" not in tap.heard


async def test_a_broker_whose_certificate_our_ca_did_not_sign_is_refused(broker_tls: Broker, pki: Pki) -> None:
    # A man in the middle with a certificate of his own: the station says why it will not talk to him.
    mqtt = Connection("127.0.0.1", broker_tls.port, client_id="st-mitm", tls=Tls(ca_file=pki.other_ca), timeout_s=5)
    with pytest.raises(MqttError, match="TLS: CERTIFICATE_VERIFY_FAILED"):
        async with mqtt:
            pass


async def test_a_broker_asking_for_client_certificates_admits_only_a_station_with_one(pki: Pki) -> None:
    broker = tls_mosquitto(pki, client_certificates=True)
    try:
        password = {"username": STATION_USER, "password": PASSWORD}
        without = Connection(
            "127.0.0.1", broker.port, client_id="st-nocert", tls=Tls(ca_file=pki.ca), timeout_s=5, **password
        )
        with pytest.raises(MqttError):
            async with without:
                pass
        with_cert = Tls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        async with Connection(
            "127.0.0.1", broker.port, client_id="st-cert", tls=with_cert, timeout_s=5, **password
        ) as mqtt:
            assert mqtt.connected
    finally:
        broker.stop()


def test_tls_files_with_a_clear_text_url_are_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="not mqtts://: the station would talk in clear"):
        GatewaySettings(station_id="st-001", serial_url="/dev/null", mqtt_url="mqtt://broker", mqtt_ca_file=pki.ca)  # type: ignore[arg-type]


@pytest.fixture
async def ingest_tls(database_url: str, broker_tls: Broker, pki: Pki, topic_prefix: str) -> AsyncIterator[Ingest]:
    """The backend's ingest over TLS."""
    settings = BackendSettings(
        environment="development",
        database_url=database_url,
        mqtt_url=f"mqtts://{STATION_USER}:{PASSWORD}@127.0.0.1:{broker_tls.port}",
        mqtt_ca_file=pki.ca,
        mqtt_client_id=f"ingest-{topic_prefix}",
        mqtt_shared_group=f"ingest-{topic_prefix}",
    )
    worker = Ingest(settings)
    await asyncio.to_thread(worker.start)
    yield worker
    await asyncio.to_thread(worker.stop)


async def test_a_sighting_travels_station_to_database_over_tls(
    database_url: str, broker_tls: Broker, pki: Pki, topic_prefix: str, ingest_tls: Ingest
) -> None:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, topic_prefix)
    assert ingest_tls.broker_connected
    batch = factories.batch(topic_prefix, 1, [0xC0FFEE]).to_json()
    async with Connection(
        "127.0.0.1",
        broker_tls.port,
        client_id=topic_prefix,
        tls=Tls(ca_file=pki.ca),
        username=STATION_USER,
        password=PASSWORD,
    ) as mqtt:
        await mqtt.publish(station_topic(topic_prefix, "sightings"), batch, qos=1)
    deadline = time.monotonic() + 15
    while ingest_tls.counters.sightings < 1:
        assert time.monotonic() < deadline, "the sighting did not arrive over TLS"
        await asyncio.sleep(0.05)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT tag_id FROM sightings WHERE station_id = %s", (topic_prefix,)).fetchall() == [
            (0xC0FFEE,)
        ]
