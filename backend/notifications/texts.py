"""What a notification says, in the owner's language: the plate, the station and the time, and nothing more.

No owner name, ID number or address ever goes into a text: an SMS or a lock-screen push is read by whoever holds
the phone, and passes through providers we do not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

_TITLES = {
    "armed_bike_moving": {"en": "Your bike is moving", "zh": "您的车辆正在移动"},
    "stolen_chip_seen": {"en": "Your stolen bike was seen", "zh": "您被盗的车辆被发现"},
    "alarm_cleared": {"en": "Alarm cleared", "zh": "警报已解除"},
    "bike_recovered": {"en": "Bike marked recovered", "zh": "车辆已标记为找回"},
    "transfer_requested": {"en": "Transfer consent code made", "zh": "已生成过户同意码"},
    "possibly_recovered": {"en": "Is your bike back?", "zh": "您的车辆找回了吗？"},
}
_BODIES = {
    "armed_bike_moving": {
        "en": "Bike {plate} is armed and moved past {station} at {at}.",
        "zh": "已布防的车辆 {plate} 于 {at} 经过 {station}。",
    },
    "stolen_chip_seen": {
        "en": "Stolen bike {plate} was seen at {station} at {at}. The police are told too.",
        "zh": "被盗车辆 {plate} 于 {at} 在 {station} 被发现，警方已同时收到警报。",
    },
    "alarm_cleared": {
        "en": "The alarm of bike {plate} was cleared at {at}.",
        "zh": "车辆 {plate} 的警报已于 {at} 解除。",
    },
    "bike_recovered": {
        "en": "Bike {plate} was marked recovered at {at}; it is off the stolen list.",
        "zh": "车辆 {plate} 已于 {at} 标记为找回，已移出被盗名单。",
    },
    "transfer_requested": {
        "en": "A code to hand over bike {plate} was made at {at}. If it was not you, change your password.",
        "zh": "车辆 {plate} 的过户同意码已于 {at} 生成。如非本人操作，请立即修改密码。",
    },
    "possibly_recovered": {
        "en": "Stolen bike {plate} has been at {station}, one of its usual places, since {at}. If you have it back, "
        "mark it recovered in the portal.",
        "zh": "被盗车辆 {plate} 自 {at} 起一直在其常到的 {station}。如已找回，请在车主门户中标记为已找回。",
    },
}
_SIGNATURE = {"en": "Bikeguard", "zh": "电动车防盗"}


@dataclass(frozen=True, slots=True)
class Text:
    """A notification's words: a title (e-mail subject, push title) and a body."""

    title: str
    body: str
    language: str = "zh"

    def sms(self) -> str:
        """The SMS: the signature (in 【】 as Chinese SMS rules want it) and the body."""
        if self.language == "zh":
            return f"【{_SIGNATURE['zh']}】{self.body}"
        return f"{_SIGNATURE['en']}: {self.body}"


def _when(value: Any, time_zone: str) -> str:
    if not value:
        return "?"
    at = datetime.fromisoformat(str(value)).astimezone(ZoneInfo(time_zone))
    return at.strftime("%Y-%m-%d %H:%M")


def render(kind: str, facts: dict[str, Any], language: str, time_zone: str) -> Text:
    """The title and body of a notification of this kind from its facts, in `language` ('zh' or 'en')."""
    lang = language if language in ("zh", "en") else "zh"
    station = facts.get("station_name") or facts.get("station_id") or "?"
    body = _BODIES[kind][lang].format(
        plate=facts.get("plate") or "?", station=station, at=_when(facts.get("at"), time_zone)
    )
    return Text(_TITLES[kind][lang], body, lang)
