"""The key admin in a real browser (Playwright driving Debian's headless Chromium) against the live gateway.

Log in, create a key, read it from the page, use it with the openai SDK, rotate it (both keys work inside the
grace period), revoke both (401). Screenshots of every page land in `test-artifacts/` (gitignored; CI keeps
them as artifacts). Playwright cannot download its own browser here: the test uses /usr/bin/chromium
(`apt-get install chromium`) and is skipped without it, unless TOLLGATE_REQUIRE_BROWSER=1 (CI) makes that a
failure.
"""

import re
import time
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.utils.crypto import get_random_string

from tests.conftest import ARTIFACTS, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "browser-test-password-0123"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello from the browser test"}]}


@contextmanager
def launched(executable: Path):
    """A headless Chromium. While it runs, Playwright's event loop runs in this thread: Django's ORM refuses to
    work then (SynchronousOnlyOperation), so database work happens before and after, never inside."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def superuser(transactional_db, django_user_model):
    user = django_user_model.objects.create_superuser("keyadmin", "keyadmin@example.com", None)
    # The test settings hash with MD5 (fast), which the server (base settings) does not accept; store a hash it
    # does. Few iterations: the server upgrades the hash on login, which is fine.
    user.password = PBKDF2PasswordHasher().encode(PASSWORD, get_random_string(16), iterations=1000)
    user.save(update_fields=["password"])
    return user


class Pages:
    """One browser tab, with every page's HTML kept (to check for hashes) and a numbered screenshot per step."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url
        self.html: list[str] = []
        self.failed_static: list[str] = []
        self.reveal_cache_control: list[str] = []
        self.step = 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.on("response", self.on_response)

    def on_response(self, response) -> None:
        if "/static/" in response.url and response.status >= 400:
            self.failed_static.append(f"{response.status} {response.url}")
        if "/reveal/" in response.url:
            self.reveal_cache_control.append(response.headers.get("cache-control", ""))

    def snap(self, name: str) -> None:
        self.step += 1
        self.html.append(self.page.content())
        self.page.screenshot(path=str(ARTIFACTS / f"keys-{self.step:02d}-{name}.png"), full_page=True)

    def goto(self, path: str):
        return self.page.goto(self.base_url + path)


def sdk_works(gateway, raw: str) -> bool:
    try:
        answer = gateway.client(raw).chat.completions.create(**CHAT)
    except openai.AuthenticationError:
        return False
    assert answer.choices[0].message.content == "echo: hello from the browser test"
    return True


def refused_within(gateway, raw: str, seconds: float = 5.0) -> float:
    """Poll the SDK until the key is refused; return how long that took."""
    start = time.monotonic()
    while sdk_works(gateway, raw):
        assert time.monotonic() - start < seconds, "the revoked key still works"
        time.sleep(0.05)
    return time.monotonic() - start


def read_raw_key(tab: Pages) -> str:
    field = tab.page.locator("[data-raw-key]")
    assert field.count() == 1
    raw = field.input_value()
    assert re.fullmatch(r"[A-Za-z0-9]{8}\.[A-Za-z0-9]{32}", raw), raw
    return raw


def test_admin_key_lifecycle_in_a_real_browser(superuser, gateway, chromium):
    with launched(chromium) as browser:
        context = browser.new_context(viewport={"width": 1680, "height": 900})
        tab = Pages(context.new_page(), gateway.url)
        try:
            raw, new_raw = drive_the_admin(tab, gateway)
        except BaseException:
            tab.snap("FAILED")
            raise
        finally:
            context.close()

    assert tab.failed_static == [], tab.failed_static
    from apikeys.models import APIKey

    for hashed in APIKey.objects.values_list("hashed_key", flat=True):
        digest = hashed.split("$$")[1]
        assert not any(digest in html for html in tab.html), "a page showed a key hash"
    assert not any("sha512$$" in html for html in tab.html)
    # Each raw key appeared on exactly one page: the one right after it was made.
    assert sum(raw in html for html in tab.html) == 1
    assert sum(new_raw in html for html in tab.html) == 1
    assert all("no-store" in value for value in tab.reveal_cache_control)


def drive_the_admin(tab: Pages, gateway) -> tuple[str, str]:
    """The whole story, step by step; returns the two raw keys it made."""
    from playwright.sync_api import expect

    page = tab.page
    page.set_default_timeout(20_000)

    # Log in; the admin's own CSS must load (WhiteNoise serves it under gunicorn).
    tab.goto("/admin/login/?next=/admin/")
    tab.snap("login")
    page.fill("#id_username", "keyadmin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"^[^?]*/admin/$"))
    header_colour = page.eval_on_selector("#header", "e => getComputedStyle(e).backgroundColor")
    assert header_colour not in ("rgba(0, 0, 0, 0)", "transparent"), "the admin CSS did not load"
    tab.snap("index")

    # Create a key; the raw key is on the next page, once.
    tab.goto("/admin/apikeys/apikey/add/")
    page.fill("#id_name", "browser-app")
    page.fill("#id_owner", "team-browser")
    page.fill("#id_rpm", "600")
    page.fill("#id_allowed_models", "gpt-4o-mini\ngpt-4o")
    tab.snap("add")
    page.click("input[name=_save]")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/reveal/.*"))
    raw = read_raw_key(tab)
    assert "no-store" in tab.reveal_cache_control[-1]
    page.click("button.copy-key")
    expect(page.locator(".copied").first).to_be_visible()
    tab.snap("created-key-shown-once")
    reveal_response = page.reload()
    assert reveal_response.status == 410
    assert raw not in page.content()
    assert page.locator("[data-raw-key]").count() == 0
    tab.snap("reload-shows-nothing")

    # The key works with the official SDK against the live server, and sees its allowlist.
    assert sdk_works(gateway, raw)
    assert sorted(m.id for m in gateway.client(raw).models.list().data) == ["gpt-4o", "gpt-4o-mini"]

    # The list shows it as active, with its limits; search by prefix finds it.
    prefix = raw.partition(".")[0]
    tab.goto(f"/admin/apikeys/apikey/?q={prefix}")
    row = page.locator("#result_list tbody tr")
    assert row.count() == 1
    assert "active" in row.inner_text() and "600" in row.inner_text() and "gpt-4o" in row.inner_text()
    tab.snap("list")

    # Rotate from the key's page with a 10-minute grace: both keys work.
    page.click(f"#result_list a:text('{prefix}')")
    page.wait_for_url(re.compile(rf".*/admin/apikeys/apikey/{prefix}/change/"))
    tab.snap("change-page")
    page.click("a.rotatelink")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/rotate/.*"))
    page.fill("#id_grace", "600")
    tab.snap("rotate-form")
    page.click("input[name=_rotate]")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/reveal/.*"))
    new_raw = read_raw_key(tab)
    assert new_raw != raw
    assert prefix in page.inner_text("#content-main")  # "successor of <old prefix>, which keeps working until…"
    tab.snap("rotated-key-shown-once")
    assert sdk_works(gateway, raw) and sdk_works(gateway, new_raw)
    new_prefix = new_raw.partition(".")[0]
    tab.goto(f"/admin/apikeys/apikey/?q={prefix}")
    assert "in grace" in page.locator("#result_list tbody tr").inner_text()
    tab.goto("/admin/apikeys/apikey/")
    tab.snap("list-after-rotation")

    # Revoke the old key with the list action (confirmation page first): 401.
    page.check(f"#result_list input[name=_selected_action][value='{prefix}']")
    page.select_option("select[name=action]", "revoke_keys")
    page.click("button[name=index]")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/revoke/.*"))
    tab.snap("revoke-confirmation")
    assert sdk_works(gateway, raw), "the confirmation page must not revoke anything by itself"
    page.click("input[name=_revoke]")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/$"))
    old_refused_after = refused_within(gateway, raw)
    assert sdk_works(gateway, new_raw)

    # Revoke the new key from its own page: 401 too.
    tab.goto(f"/admin/apikeys/apikey/{new_prefix}/change/")
    page.click("a.revokelink")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/revoke/.*"))
    page.click("input[name=_revoke]")
    page.wait_for_url(re.compile(r".*/admin/apikeys/apikey/$"))
    new_refused_after = refused_within(gateway, new_raw)
    tab.snap("list-after-revocations")
    print(f"\nrevoked in the browser -> SDK refused after {old_refused_after:.2f} s and {new_refused_after:.2f} s")

    # The audit trail has every step, by the admin user, and is read-only.
    tab.goto(f"/admin/apikeys/auditlogentry/?q={prefix}")
    audit = page.inner_text("#result_list").lower()
    for action in ("create", "rotate", "revoke"):
        assert action in audit
    assert "keyadmin" in audit
    assert page.locator(".object-tools a.addlink").count() == 0  # no "Add audit log entry"
    tab.snap("audit-trail")
    tab.goto(f"/admin/apikeys/apikey/{new_prefix}/change/")
    tab.snap("revoked-key-page")
    return raw, new_raw
