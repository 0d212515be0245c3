"""The embedded MQTT broker (amqtt) as a process of its own: `python -m bikeguard.broker --port N --password-file F`.

It reads the same two files as Mosquitto, as `bikeguard broker files` writes them: the password file with `$7$`
hashes and the ACL file (`user NAME` / `topic read|write|readwrite PATTERN` lines, as `backend.provisioning.acl_file`
writes them). No anonymous client is let in. SIGHUP rereads both files, as Mosquitto does; unlike Mosquitto, clients
already connected stay connected (their next publish, subscription or delivery is checked against the new rules).

amqtt 0.12.1 itself cannot read `$7$` hashes (only argon2 and `$6$`), checks no will topic and, on every connection,
sends the new client the retained messages matching *every* client's subscriptions, unchecked; the plugins and the
broker class below close those three gaps, so the rules hold for publishes, wills, subscriptions and deliveries. The
broker class also keeps delivering to a session that a new connection took over from one still open.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker as AmqttBroker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from backend.provisioning import password_hash

log = logging.getLogger("bikeguard.broker")


class BrokerFileError(ValueError):
    """A password or ACL file the embedded broker cannot use; the message names the file and line."""


def read_passwords(path: Path) -> dict[str, str]:
    """user → `$7$` hash from a Mosquitto password file."""
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith("$7$") or hashed.count("$") != 4:
            raise BrokerFileError(f"{path}:{number}: not `user:$7$…` (the embedded broker reads only $7$ hashes)")
        users[user] = hashed
    return users


def password_matches(password: str, hashed: str) -> bool:
    """Whether a password matches a Mosquitto `$7$` hash (PBKDF2-HMAC-SHA512)."""
    _, _, iterations, salt, _digest = hashed.split("$")
    again = password_hash(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(again, hashed)


@dataclass(frozen=True)
class Acl:
    """Per user, the topic patterns it may read (subscribe to, receive) and write (publish)."""

    read: dict[str, list[str]] = field(default_factory=dict)
    write: dict[str, list[str]] = field(default_factory=dict)

    def may_publish(self, user: str | None, topic: str) -> bool:
        """Whether user may publish to topic (a will included)."""
        return user is not None and any(topic_matches(p, topic) for p in self.write.get(user, []))

    def may_receive(self, user: str | None, topic: str) -> bool:
        """Whether a message on topic may be delivered to user."""
        return user is not None and any(topic_matches(p, topic) for p in self.read.get(user, []))

    def may_subscribe(self, user: str | None, topic_filter: str) -> bool:
        """Whether user may subscribe to a filter: every topic it can match must be readable."""
        return user is not None and any(filter_within(topic_filter, p) for p in self.read.get(user, []))


def read_acl(path: Path) -> Acl:
    """The rules of a Mosquitto ACL file; only the lines `acl_file` writes (user, topic), others are refused."""
    acl = Acl()
    user: str | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user" and len(words) == 2:
            user = words[1]
            continue
        if words[0] == "topic" and user is not None and len(words) in (2, 3):
            access, pattern = ("readwrite", words[1]) if len(words) == 2 else (words[1], words[2])
            if access in ("read", "readwrite"):
                acl.read.setdefault(user, []).append(pattern)
            if access in ("write", "readwrite"):
                acl.write.setdefault(user, []).append(pattern)
            if access in ("read", "write", "readwrite"):
                continue
        raise BrokerFileError(
            f"{path}:{number}: the embedded broker understands only `user` and `topic` lines: {raw!r}"
        )
    return acl


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT matching of a topic name against a pattern with + and #."""
    levels = topic.split("/")
    for i, part in enumerate(pattern.split("/")):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(levels) == len(pattern.split("/"))


def filter_within(topic_filter: str, pattern: str) -> bool:
    """Whether every topic a subscription filter matches also matches the pattern."""
    levels = topic_filter.split("/")
    for i, part in enumerate(pattern.split("/")):
        if part == "#":
            return True
        if i >= len(levels) or levels[i] == "#" or (part != "+" and part != levels[i]):
            return False
    return len(levels) == len(pattern.split("/"))


class PasswordFileAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt has no type hints
    """Lets in only users of the password file with their password, and with a will topic they may publish to."""

    @dataclass
    class Config:
        """The files the broker was started with."""

        password_file: str = ""
        acl_file: str | None = None

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.reload()

    def reload(self) -> None:
        """Reread the files (SIGHUP)."""
        self.users = read_passwords(Path(self.context.config.password_file))
        acl_file = self.context.config.acl_file
        self.acl = read_acl(Path(acl_file)) if acl_file else None

    async def authenticate(self, *, session: Any) -> bool:
        """Refuse anonymous clients, wrong passwords, and wills on topics the user may not publish to."""
        hashed = self.users.get(session.username or "")
        if hashed is None or not password_matches(session.password or "", hashed):
            log.info("refused %r: unknown user or wrong password", session.username)
            return False
        if (
            session.will_flag
            and self.acl is not None
            and not self.acl.may_publish(session.username, session.will_topic)
        ):
            log.info("refused %r: it may not publish its will on %s", session.username, session.will_topic)
            return False
        return True


class AclFileTopics(BaseTopicPlugin):  # type: ignore[misc]  # amqtt has no type hints
    """Publishes, subscriptions and deliveries by the ACL file's rules."""

    @dataclass
    class Config:
        """The ACL file the broker was started with."""

        acl_file: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.reload()

    def reload(self) -> None:
        """Reread the file (SIGHUP)."""
        self.acl = read_acl(Path(self.context.config.acl_file))

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None, action: Any = None) -> bool:
        """Allowed by the ACL, for this session's user."""
        user = session.username if session is not None else None
        if topic is None:
            return False
        if action == Action.PUBLISH:
            return self.acl.may_publish(user, topic)
        if action == Action.SUBSCRIBE:
            return self.acl.may_subscribe(user, topic)
        return self.acl.may_receive(user, topic)


class EmbeddedBroker(AmqttBroker):  # type: ignore[misc]  # amqtt has no type hints
    """amqtt's broker, sending retained messages only for the client's own subscriptions, and only readable ones, and
    still delivering to a session taken over by a new connection."""

    async def _handle_disconnect(self, client_session: Any, handler: Any, disconnect_waiter: Any) -> None:
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        # A client that connects again with its client id while its old connection is still open (a station that
        # gave up on a broker that hung) takes its session over. amqtt 0.12.1 then ends the old connection, and its
        # end marks the shared session disconnected though the new connection holds it: every message for the client
        # was kept for a reconnection that never came, and a station never heard a confirmation or hot list again.
        current = self._sessions.get(client_session.client_id)
        if current is not None and current[0] is client_session and current[1] is not handler:
            client_session.transitions.connect()

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        # amqtt 0.12.1 calls this on each connection for every client's filters, not only the new client's.
        topic_filter = subscription[0]
        if not any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, [])):
            return
        for topic in list(self._retained_messages):
            if self._matches(topic, topic_filter) and not await self._topic_filtering(session, topic, Action.RECEIVE):
                return  # a filter that covers a topic the client may not read gets no retained messages at all
        await super()._publish_retained_messages_for_subscription(subscription, session)


def config(host: str, port: int, password_file: Path, acl_file: Path | None) -> dict[str, Any]:
    """amqtt's configuration: our password check, and our ACL when there is an ACL file."""
    # By this module's own name (__main__ under -m): amqtt must load the very classes _reload looks for.
    plugins: dict[str, Any] = {
        f"{__name__}.PasswordFileAuth": {
            "password_file": str(password_file),
            "acl_file": str(acl_file) if acl_file else None,
        }
    }
    if acl_file is not None:
        plugins[f"{__name__}.AclFileTopics"] = {"acl_file": str(acl_file)}
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": plugins,
    }


async def serve(host: str, port: int, password_file: Path, acl_file: Path | None) -> None:
    """Run amqtt on host:port until SIGTERM or SIGINT; SIGHUP rereads the files."""
    broker = EmbeddedBroker(config(host, port, password_file, acl_file))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, broker)
    await stop.wait()
    await broker.shutdown()


def _reload(broker: EmbeddedBroker) -> None:
    for plugin in broker.plugins_manager._plugins:
        if isinstance(plugin, PasswordFileAuth | AclFileTopics):
            try:
                plugin.reload()
            except (OSError, BrokerFileError) as exc:
                log.error("kept the previous rules: %s", exc)


def main() -> None:
    """Entry point for the broker process."""
    parser = argparse.ArgumentParser(description="embedded MQTT broker for demos and tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--password-file", type=Path, required=True, help="Mosquitto password file ($7$ hashes)")
    parser.add_argument("--acl-file", type=Path, help="Mosquitto ACL file as `bikeguard broker files` writes it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port, args.password_file, args.acl_file))


if __name__ == "__main__":
    main()
