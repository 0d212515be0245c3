"""The three channels, one adapter each: e-mail through SMTP, SMS through a generic HTTP gateway, Web Push.

Each send is synchronous (the worker runs it in a thread) and carries the notification's idempotency key where the
channel has a place for it: the SMS gateway's client reference, the e-mail's Message-ID, the Web Push Topic.
"""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import string
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any

from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from backend.notifications.texts import Text
from backend.settings import BackendSettings


class ChannelError(Exception):
    """A send that failed; `permanent` when trying again cannot help (no address, a refused recipient)."""

    def __init__(self, message: str, permanent: bool = False, gone: list[int] | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        # Web Push subscriptions found gone on the way (to be forgotten).
        self.gone = gone or []


class ChannelNotConfigured(ChannelError):
    """The channel's provider is not configured (no SMTP host, no SMS gateway URL, no VAPID key)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """One of the owner's devices, as its browser subscribed."""

    subscription_id: int
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One notification ready to go: its words, where to, and the key that makes a resend the same message."""

    notification_id: int
    channel: str
    kind: str
    text: Text
    email: str | None = None
    sms_number: str | None = None
    subscriptions: tuple[PushSubscription, ...] = ()

    @property
    def key(self) -> str:
        """The idempotency key the provider sees: stable across retries and workers."""
        return f"bikeguard-n{self.notification_id}"


@dataclass(slots=True)
class Sent:
    """What a send did: the provider's reference, and push subscriptions found gone (to be forgotten)."""

    reference: str
    gone: list[int] = field(default_factory=list)


class Channels:
    """Sends notifications through the providers the settings configure."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    def send(self, out: Outgoing) -> Sent:
        """Send one notification through its channel; raises ChannelError."""
        if out.channel == "email":
            return self._email(out)
        if out.channel == "sms":
            return self._sms(out)
        if out.channel == "webpush":
            return self._push(out)
        raise ChannelError(f"unknown channel {out.channel!r}", permanent=True)

    def _email(self, out: Outgoing) -> Sent:
        s = self.settings
        if not s.smtp_host:
            raise ChannelNotConfigured("e-mail is not configured (BIKEGUARD_SMTP_HOST)")
        if not out.email:
            raise ChannelError("the owner gave no e-mail address", permanent=True)
        domain = parseaddr(s.smtp_from)[1].rpartition("@")[2] or "bikeguard.invalid"
        msg = EmailMessage()
        msg["From"] = s.smtp_from
        msg["To"] = out.email
        msg["Subject"] = out.text.title
        msg["Date"] = formatdate(usegmt=True)
        # The same Message-ID on every attempt: a resend after a crash is recognisably the same message.
        msg["Message-ID"] = f"<{out.key}@{domain}>"
        msg.set_content(out.text.body)
        timeout = s.notify_send_timeout_s
        try:
            smtp_cls = smtplib.SMTP_SSL if s.smtp_tls == "ssl" else smtplib.SMTP
            with smtp_cls(s.smtp_host, s.smtp_port, timeout=timeout) as smtp:
                if s.smtp_tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username and s.smtp_password:
                    smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ChannelError(f"the mail server refused {out.email}", permanent=True) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"SMTP {s.smtp_host}:{s.smtp_port}: {exc}") from exc
        return Sent(msg["Message-ID"])

    def _sms_body(self, out: Outgoing) -> bytes:
        values = {"to": out.sms_number or "", "text": out.text.sms(), "reference": out.key}

        def fill(node: Any) -> Any:
            if isinstance(node, str):
                return string.Template(node).safe_substitute(values)
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, list):
                return [fill(v) for v in node]
            return node

        return json.dumps(fill(json.loads(self.settings.sms_body_template)), ensure_ascii=False).encode()

    def _sms(self, out: Outgoing) -> Sent:
        s = self.settings
        if not s.sms_gateway_url:
            raise ChannelNotConfigured("SMS is not configured (BIKEGUARD_SMS_GATEWAY_URL)")
        if not out.sms_number:
            raise ChannelError("the owner gave no number for SMS", permanent=True)
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": out.key}
        if s.sms_gateway_token:
            headers["Authorization"] = f"Bearer {s.sms_gateway_token.get_secret_value()}"
        elif s.sms_gateway_username and s.sms_gateway_password:
            pair = f"{s.sms_gateway_username}:{s.sms_gateway_password.get_secret_value()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        request = urllib.request.Request(s.sms_gateway_url, self._sms_body(out), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=s.notify_send_timeout_s) as response:
                reply = response.read(4096).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            # 4xx but 408/429: the gateway refuses this message as it is; anything else may pass later.
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
            raise ChannelError(f"SMS gateway answered {exc.code} {exc.reason}", permanent=permanent) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ChannelError(f"SMS gateway unreachable: {exc}") from exc
        return Sent(reply[:200] or out.key)

    def _push(self, out: Outgoing) -> Sent:
        s = self.settings
        if s.vapid_private_key is None:
            raise ChannelNotConfigured("Web Push is not configured (BIKEGUARD_VAPID_PRIVATE_KEY)")
        if not out.subscriptions:
            raise ChannelError("the owner has no device subscribed to Web Push", permanent=True)
        secret = s.vapid_private_key.get_secret_value().strip()
        # PEM (as `vapid --gen` writes it) or base64url of the raw key / its DER.
        vapid = Vapid.from_pem(secret.encode()) if "BEGIN" in secret else Vapid.from_string(secret)
        payload = json.dumps({"title": out.text.title, "body": out.text.body, "tag": out.key}, ensure_ascii=False)
        sent, gone, failures = 0, [], []
        for sub in out.subscriptions:
            info = {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}
            try:
                webpush(
                    info,
                    payload,
                    vapid_private_key=vapid,
                    vapid_claims={"sub": s.vapid_subject},
                    timeout=s.notify_send_timeout_s,
                    ttl=24 * 3600,
                    # A push service replaces an undelivered message of the same topic: a resend is not a second.
                    headers={"Topic": out.key, "Urgency": "high" if out.kind == "stolen_chip_seen" else "normal"},
                )
                sent += 1
            except WebPushException as exc:
                status = getattr(exc.response, "status_code", None)
                if status in (404, 410):
                    gone.append(sub.subscription_id)  # the browser unsubscribed: forget the device
                else:
                    failures.append(f"{sub.endpoint[:60]}: {status or exc}")
            except OSError as exc:
                failures.append(f"{sub.endpoint[:60]}: {exc}")
        if failures and not sent:
            raise ChannelError("Web Push failed: " + "; ".join(failures), gone=gone)
        if not sent:
            raise ChannelError("every subscribed device is gone", permanent=True, gone=gone)
        return Sent(f"{sent} device(s)", gone)
