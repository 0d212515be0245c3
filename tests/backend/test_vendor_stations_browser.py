"""The installer page in headless Chromium with vendor (MR7901) stations: which kind each station is, registering,
replacing and removing a vendor device, and the bridge's `[[device]]` block shown once with the password."""

from __future__ import annotations

import tomllib

import psycopg

from tests import factories
from tests.backend.test_installer_browser import _fits_a_phone, _password_matches, _town
from tests.backend.test_pages_browser import _sign_in, server  # noqa: F401 - the fixture
from tests.browser import browser_page, console_errors, raw_keys, screenshot_path

_REFUSED = "console: Failed to load resource: the server responded with a status of"


def _stations(database_url: str) -> list[str]:
    """The town's stations; the first (online) runs as a vendor station already, with a device id taken."""
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT station_id FROM stations ORDER BY station_id")]
        conn.execute(
            "UPDATE stations SET vendor_protocol = 'mr7901', vendor_device_id = 'MR7901-000001',"
            " time_zone = 'Asia/Shanghai' WHERE station_id = %s",
            (ids[0],),
        )
    return ids


def _vendor_columns(database_url: str, station_id: str) -> tuple[object, ...] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT vendor_protocol, vendor_device_id, time_zone FROM stations WHERE station_id = %s", (station_id,)
        ).fetchone()


def test_installer_registers_a_vendor_device_issues_its_bridge_block_and_removes_it(
    server: str,  # noqa: F811
    database_url: str,
) -> None:
    ids = _stations(database_url)
    vendor, target = ids[0], ids[2]
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "wu.lei")
    with browser_page(1400, 1100) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(f"{server}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        # The vendor station is judged like ours (online from its status), and says which kind it is.
        row = page.locator(f"#station-table tr[data-station='{vendor}']")
        assert row.locator(".bg-health").inner_text() == "online"
        assert row.locator(".bg-inst-kind").inner_text().split() == [
            "Vendor", "MR7901", "device", "MR7901-000001", "clock", "Asia/Shanghai"
        ]  # fmt: skip
        mine = page.locator(f"#station-table tr[data-station='{target}']")
        assert mine.locator(".bg-inst-kind").inner_text() == "Bikeguard station"

        mine.locator("[data-inst-act='vendor']").click()
        assert page.inner_text("#vendor-title") == f"Vendor device of {target}"
        assert not page.is_visible("#vd-remove")  # nothing to remove yet
        page.fill("#vd-device-id", "MR7901 12")
        page.click("#vd-save")
        assert page.inner_text('.bg-msg[data-for="vd-device-id"]') == "1-16 printable ASCII characters, no spaces"
        page.fill("#vd-device-id", "MR7901-000001")  # the other station's: the server refuses it
        page.fill("#vd-time-zone", "Asia/Shanghai")
        page.click("#vd-save")
        page.wait_for_selector('.bg-msg.bad[data-for="vd-device-id"]:has-text("already")')
        assert page.inner_text('.bg-msg[data-for="vd-device-id"]') == (
            f"Device MR7901-000001 is already registered to station {vendor}: remove it there first"
        )
        page.fill("#vd-device-id", "MR7901-000123")
        page.fill("#vd-time-zone", "Asia/Nowhere")
        page.click("#vd-save")
        page.wait_for_selector('.bg-msg.bad[data-for="vd-time-zone"]')
        assert page.inner_text('.bg-msg[data-for="vd-time-zone"]').startswith("Not a known time zone")
        assert _vendor_columns(database_url, target) == (None, None, None)
        page.fill("#vd-time-zone", "Asia/Urumqi")
        page.screenshot(path=str(screenshot_path("installer-vendor-device.png")))
        page.click("#vd-save")

        page.wait_for_selector("#vendor-done:not([hidden])")
        assert page.inner_text("#vendor-done") == (
            f"✓ Station {target} is vendor device MR7901-000123. Next: issue its MQTT password and paste the"
            " [[device]] block it comes with into the bridge's devices file, then restart the bridge."
        )
        assert _vendor_columns(database_url, target) == ("mr7901", "MR7901-000123", "Asia/Urumqi")
        mine = page.locator(f"#station-table tr[data-station='{target}']")
        assert "MR7901-000123" in mine.locator(".bg-inst-kind").inner_text()
        assert "Asia/Urumqi" in mine.locator(".bg-inst-kind").inner_text()

        mine.locator("[data-inst-act='credentials']").click()
        assert "the bridge cannot publish for this station" in page.inner_text("#cred-confirm")
        page.click("#cred-issue")
        page.wait_for_selector("#cred-shown:not([hidden])")
        password = page.inner_text("#cred-password")
        assert page.is_visible("#cred-bridge")
        assert "Copy the block below now into the bridge's devices file" in page.inner_text(".bg-inst-once")
        block = page.inner_text("#cred-device")
        assert tomllib.loads(block)["device"] == [
            {
                "device_id": "MR7901-000123",
                "station_id": target,
                "time_zone": "Asia/Urumqi",
                "mqtt_url": f"mqtt://{target}:{password}@<broker-host>:1883",
            }
        ]
        page.click("[data-copy='cred-device']")
        page.wait_for_selector("[data-copy='cred-device']:has-text('Copied')")
        assert page.evaluate("navigator.clipboard.readText()") == block
        page.screenshot(path=str(screenshot_path("installer-vendor-credentials.png")))
        with psycopg.connect(database_url) as conn:
            (stored,) = conn.execute(
                "SELECT password_hash FROM station_credentials WHERE station_id = %s AND revoked_at IS NULL",
                (target,),
            ).fetchone() or (None,)
        assert stored and _password_matches(stored, password)
        page.click("#cred-close")
        assert page.inner_text("#cred-device") == "" and password not in page.content()  # gone from the page

        # One of ours issues no block.
        ours = page.locator(f"#station-table tr[data-station='{ids[3]}']")
        ours.locator("[data-inst-act='credentials']").click()
        page.click("#cred-issue")
        page.wait_for_selector("#cred-shown:not([hidden])")
        assert not page.is_visible("#cred-bridge")
        page.click("#cred-close")

        mine.locator("[data-inst-act='vendor']").click()
        assert page.input_value("#vd-device-id") == "MR7901-000123"
        page.click("#vd-remove")
        page.wait_for_selector("#vendor-done:has-text('no vendor device')")
        assert page.inner_text("#vendor-done") == (
            f"✓ Station {target} has no vendor device now: take its [[device]] block out of the bridge's devices"
            " file and restart the bridge."
        )
        assert _vendor_columns(database_url, target) == (None, None, None)
        mine = page.locator(f"#station-table tr[data-station='{target}']")
        assert mine.locator(".bg-inst-kind").inner_text() == "Bikeguard station"
        url = f"{server}/api/stations/{target}/vendor-device"
        # Chromium logs each refused request; those two are the refusals this test asks for, and nothing else.
        assert console_errors(page) == [
            f"{_REFUSED} 409 (Conflict) ({url})",
            f"{_REFUSED} 422 (Unprocessable Entity) ({url})",
        ]
        assert raw_keys(page) == []


def test_installer_on_a_phone_registers_a_vendor_device_and_copies_its_block_in_chinese(
    server: str,  # noqa: F811
    database_url: str,
) -> None:
    ids = _stations(database_url)
    vendor, target = ids[0], ids[4]
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "sun.li")
    with browser_page(390, 844) as page:
        page.goto(f"{server}/installer?lang=zh")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        row = page.locator(f"#station-table tr[data-station='{vendor}']")
        assert row.locator(".bg-inst-kind .bg-chip").inner_text() == "厂商 MR7901"
        mine = page.locator(f"#station-table tr[data-station='{target}']")
        assert mine.locator(".bg-inst-kind").inner_text() == "Bikeguard 基站"
        mine.locator("[data-inst-act='vendor']").click()
        assert page.inner_text("#vendor-title") == f"{target} 的厂商设备"
        page.fill("#vd-device-id", "MR7901-000001")
        page.click("#vd-save")
        page.wait_for_selector('.bg-msg.bad[data-for="vd-device-id"]')
        assert page.inner_text('.bg-msg[data-for="vd-device-id"]') == (
            f"设备 MR7901-000001 已登记在基站 {vendor}：请先在那里移除"
        )
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path("installer-phone-vendor-zh.png")))
        page.fill("#vd-device-id", "MR7901-000777")
        page.click("#vd-save")
        page.wait_for_selector("#vendor-done:not([hidden])")
        assert page.inner_text("#vendor-done").startswith(f"✓ 基站 {target} 为厂商设备 MR7901-000777。")
        assert _vendor_columns(database_url, target) == ("mr7901", "MR7901-000777", "Asia/Shanghai")
        mine = page.locator(f"#station-table tr[data-station='{target}']")
        mine.locator("[data-inst-act='credentials']").click()
        page.click("#cred-issue")
        page.wait_for_selector("#cred-shown:not([hidden])")
        assert page.inner_text("#cred-bridge p").startswith("用于桥接程序的设备文件。")
        block = tomllib.loads(page.inner_text("#cred-device"))
        assert block["device"][0]["device_id"] == "MR7901-000777" and block["device"][0]["station_id"] == target
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path("installer-phone-vendor-credentials-zh.png")))
        url = f"{server}/api/stations/{target}/vendor-device"
        assert console_errors(page) == [f"{_REFUSED} 409 (Conflict) ({url})"]  # the refusal this test asks for
        assert raw_keys(page) == []
