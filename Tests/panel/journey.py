"""The control panel's journey in a real browser: Playwright driving Debian's chromium (never a downloaded one).

Signs in with the admin token, deploys a world, sees it live, sends a message and watches the counters move,
creates and copies a key, adds a webhook (a receiver on loopback that checks the Standard Webhooks signature
with the secret the page showed), scales and sees the signed scaling_event delivered, reads the live logs, opens
the endpoint's deliveries, redelivers, rotates its secret, and shuts the world down. Checks the cookie and CSRF
rules from inside the page. Saves screenshots of the main pages when --screenshots names a directory.

  python journey.py --panel http://127.0.0.1:7401 --token-file <home>/admin.token [--screenshots docs/panel]
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect, sync_playwright


class Receiver:
    """A webhook endpoint on loopback: keeps every request's headers and body, answers 204."""

    def __init__(self):
        self.requests = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, event):
        return [(hd, b) for hd, b in self.requests if json.loads(b).get("type") == event]

    @staticmethod
    def signed(secret, headers, body):
        """Whether one of the v1 signatures is HMAC-SHA256(id.timestamp.body) under the whsec_ secret."""
        key = base64.b64decode(secret.removeprefix("whsec_"))
        content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        want = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        return any(s == "v1," + want for s in headers["webhook-signature"].split(" "))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--panel", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--screenshots", default="")
    p.add_argument("--world", default="journey")
    a = p.parse_args()
    token = open(a.token_file).read().strip()
    started = time.monotonic()
    steps = []

    def step(name):
        steps.append((name, time.monotonic()))
        print(f"[{time.monotonic() - started:6.2f} s] {name}", flush=True)

    def shot(page, name):
        if a.screenshots:
            page.screenshot(path=f"{a.screenshots}/{name}.png", full_page=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="dark")
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=a.panel)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(30_000)

        step("sign in")
        page.goto(a.panel + "/panel")
        expect(page.get_by_test_id("token")).to_be_visible()
        shot(page, "signin")
        page.get_by_test_id("token").fill("not-the-token")
        page.get_by_test_id("signin").click()
        expect(page.locator("form.signin .error")).to_contain_text("not the admin token")
        page.get_by_test_id("token").fill(token)
        page.get_by_test_id("signin").click()
        expect(page.get_by_test_id("worlds")).to_be_visible()
        # The session cookie is HttpOnly (not readable by scripts), SameSite=Strict; the token is in no URL.
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["soulfra_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict", session
        assert "soulfra_session" not in page.evaluate("document.cookie")
        assert token not in page.url
        # A change without the CSRF token is refused, even from the panel's own page with its cookie.
        status = page.evaluate("""async () => (await fetch('/admin/v1/worlds', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                  body: JSON.stringify({type: 'kids', name: 'csrf-probe'})})).status""")
        assert status == 403, status

        step("deploy a world")
        page.goto(a.panel + "/panel#/deploy")
        page.get_by_test_id("deploy-type").select_option("kids")
        page.get_by_test_id("deploy-name").fill(a.world)
        page.get_by_test_id("deploy-submit").click()
        expect(page.get_by_test_id("deploy-done")).to_be_visible(timeout=60_000)
        first_key = page.get_by_test_id("deploy-key").inner_text()
        assert first_key.startswith("sk-slfr_kids_"), first_key
        shot(page, "deploy")

        step("see it live")
        page.goto(a.panel + "/panel#/worlds")
        row = page.get_by_test_id("world-row-" + a.world)
        expect(row.locator("[data-field=health]")).to_have_text("healthy", timeout=15_000)
        shot(page, "worlds")

        step("send a message, watch the counters move")
        row.click()
        expect(page.get_by_test_id("stat-interactions")).to_be_visible()
        before = int(page.get_by_test_id("stat-interactions").inner_text().replace(",", ""))
        page.get_by_test_id("try-text").fill("Tell me about Mars")
        page.get_by_test_id("try-send").click()
        expect(page.get_by_test_id("try-reply")).to_contain_text("cal", timeout=20_000)
        expect(page.get_by_test_id("stat-interactions")).not_to_have_text(str(before), timeout=15_000)
        after = int(page.get_by_test_id("stat-interactions").inner_text().replace(",", ""))
        assert after > before, (before, after)

        step("create and copy a key")
        page.get_by_test_id("key-create").click()
        expect(page.get_by_test_id("new-key")).to_be_visible()
        secret = page.get_by_test_id("new-key").inner_text()
        page.get_by_test_id("new-key-copy").click()
        expect(page.locator("#toast")).to_contain_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        expect(page.get_by_test_id("keys").locator("tr")).to_have_count(3)

        step("add a webhook")
        receiver = Receiver()
        page.goto(a.panel + "/panel#/webhooks")
        page.get_by_test_id("hook-url").fill(receiver.url)
        page.get_by_role("button", name="Add").click()
        expect(page.get_by_test_id("hook-secret")).to_be_visible()
        hook_secret = page.get_by_test_id("hook-secret").inner_text()
        assert hook_secret.startswith("whsec_"), hook_secret
        expect(page.get_by_test_id("hooks").locator("tr")).to_have_count(2)

        step("scale to 2, the signed scaling_event arrives")
        page.goto(a.panel + "/panel#/world/" + a.world)
        page.get_by_test_id("scale-to").fill("2")
        page.get_by_test_id("scale-submit").click()
        expect(page.get_by_test_id("stat-instances")).to_have_text("2/2", timeout=30_000)
        deadline = time.monotonic() + 20
        while not receiver.events("scaling_event") and time.monotonic() < deadline:
            time.sleep(0.1)
        scaled = receiver.events("scaling_event")
        assert scaled and Receiver.signed(hook_secret, *scaled[0]), scaled

        step("read the live logs")
        expect(page.get_by_test_id("logs")).to_contain_text(a.world + "-1 |", timeout=15_000)
        expect(page.get_by_test_id("deliveries")).to_contain_text("scaling_event", timeout=15_000)
        shot(page, "world")

        step("usage page")
        page.goto(a.panel + "/panel#/usage")
        expect(page.get_by_test_id("usage-table")).to_contain_text(a.world, timeout=15_000)
        shot(page, "usage")

        step("an endpoint's deliveries, redeliver, rotate its secret")
        page.goto(a.panel + "/panel#/webhooks")
        page.get_by_test_id("hook-deliveries-open").click()
        delivered = page.get_by_test_id("hook-deliveries").get_by_test_id("delivery-scaling_event")
        expect(delivered).to_contain_text("delivered")
        sent = len(receiver.events("scaling_event"))
        delivered.get_by_test_id("redeliver").click()
        expect(delivered.get_by_test_id("delivery-attempts")).to_have_text("2", timeout=15_000)
        again = receiver.events("scaling_event")
        assert len(again) == sent + 1 and again[-1][0]["webhook-id"] == scaled[0][0]["webhook-id"], "the same message, sent again"
        page.get_by_test_id("hook-rotate").click()
        page.get_by_test_id("rotate-confirm").click()
        expect(page.get_by_test_id("rotated-secret")).to_be_visible()
        rotated = page.get_by_test_id("rotated-secret").inner_text()
        assert rotated.startswith("whsec_") and rotated != hook_secret
        shot(page, "webhooks")
        receiver.server.shutdown()

        step("shut down")
        page.goto(a.panel + "/panel#/world/" + a.world)
        page.get_by_test_id("shutdown").click()
        page.get_by_test_id("shutdown-name").fill(a.world)
        page.get_by_test_id("shutdown-confirm").click()
        expect(page.get_by_test_id("worlds")).to_be_visible()
        expect(page.get_by_test_id("world-row-" + a.world)).to_have_count(0, timeout=30_000)

        step("sign out")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_test_id("token")).to_be_visible()
        assert page.evaluate("async () => (await fetch('/admin/v1/worlds')).status") == 401
        browser.close()
        if errors:
            print("page errors:", errors, file=sys.stderr)
            return 1
    total = time.monotonic() - started
    print(json.dumps({"journey_seconds": round(total, 2), "steps": [s for s, _ in steps]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
