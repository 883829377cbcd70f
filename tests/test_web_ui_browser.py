"""The web UI in a real browser, used as a person would, against a real `threadline serve` process.

Debian's Chromium (/usr/bin/chromium) driven by Playwright; nothing is downloaded. Without Chromium a local run
skips and says why; in CI (CI=true) `make test` installs it first (scripts/ensure-chromium) and a missing
browser fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import needs
from tests.servers import free_port, threadline_env, threadline_serve

if TYPE_CHECKING:  # Playwright is imported at run time only once the browser is known to be there
    from playwright.sync_api import Browser, ConsoleMessage, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def _require_browser() -> None:
    needs("browser")
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is absent (install Debian's `chromium`, or run scripts/ensure-chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright for Python is not installed (pip install -e '.[dev]')"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser test must run in CI: {reason}")
    pytest.skip(f"browser test skipped: {reason}")


@dataclass(frozen=True)
class Server:
    base_url: str
    api_key: str
    env: dict[str, str]
    workdir: Path

    def cli(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "threadline", *args],
            env=self.env,
            cwd=self.workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key}, timeout=10)


@contextlib.contextmanager
def _serve(**settings: str) -> Iterator[Server]:
    """`threadline serve` on a free port and a temporary SQLite database, plus an API key made by the CLI."""
    with tempfile.TemporaryDirectory(prefix="threadline-ui-") as tmp:
        workdir = Path(tmp)
        env = threadline_env(f"sqlite+aiosqlite:///{workdir / 'ui.db'}") | settings
        port = free_port()
        bootstrap = Server(f"http://127.0.0.1:{port}", "", env, workdir)
        key = bootstrap.cli("keys", "create", "--org", "acme", "--email", "ada@acme.test").strip().splitlines()[-1]
        with threadline_serve(env, log=workdir / "server.log", cwd=workdir, port=port) as base_url:
            yield Server(base_url, key, env, workdir)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A server without a model: the page's own behaviour, with model turns stubbed in the browser."""
    _require_browser()
    with _serve(THREADLINE_LOCAL_MODEL_ENABLED="false") as running:
        yield running


@pytest.fixture(scope="module")
def model_server() -> Iterator[Server]:
    """A server on the defaults, the embedded SmolLM2 included (short answers keep the test quick)."""
    _require_browser()
    with _serve(THREADLINE_LOCAL_MODEL_ENABLED="true", THREADLINE_DEFAULT_MAX_OUTPUT_TOKENS="48") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def _open_page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    # Page errors (an exception in a module, a CSP violation) fail the test: the page must run clean.
    problems: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        # A failed fetch (the 404s the test provokes) logs "Failed to load resource": the page handles those.
        if message.type == "error" and "Failed to load resource" not in message.text:
            problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    yield page
    context.close()
    assert problems == []


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with _open_page(browser, server.base_url) as opened:
        yield opened


def _sse(*events: tuple[str, dict[str, object]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def test_a_person_manages_a_thread(page: Page, server: Server) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in to Threadline")).to_be_visible()

    # Sign in with an API key made by the CLI.
    page.get_by_label("API key", exact=True).fill(server.api_key)
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.locator("#whoami")).to_contain_text("ada@acme.test")
    expect(page.locator("#thread-list-empty")).to_be_visible()

    # Create a thread, then rename it; the list shows the new title.
    page.get_by_role("button", name="New thread").click()
    expect(page.locator("#thread-title")).to_have_text("Untitled")
    expect(page.locator("#thread-badges .badge-open")).to_have_text("Open")
    page.get_by_role("button", name="Rename").click()
    page.get_by_role("textbox", name="Title").fill("Quarterly plan")
    page.locator("#rename-dialog").get_by_role("button", name="Save").click()
    expect(page.locator("#thread-title")).to_have_text("Quarterly plan")
    item = page.locator("#thread-list .thread-item").filter(has_text="Quarterly plan")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("0 messages")
    thread_id = page.locator("#thread-meta code").inner_text()
    assert re.fullmatch(r"thread_\w+", thread_id)

    # Messages added through the API appear in the thread view, oldest first.
    with server.api() as api:
        for role, text in (("user", "Hello from the API"), ("assistant", "Hi! How can I help you today?")):
            response = api.post(f"/v1/threads/{thread_id}/messages", json={"role": role, "content": text})
            assert response.status_code == 200, response.text
    item.click()
    messages = page.locator("#messages .message")
    expect(messages).to_have_count(2)
    expect(messages.nth(0)).to_contain_text("Hello from the API")
    expect(messages.nth(1)).to_contain_text("Hi! How can I help you today?")
    expect(item).to_contain_text("2 messages")

    # Edit the first message: the edit marker appears, and the history shows the previous version.
    messages.nth(0).get_by_role("button", name="Edit message").click()
    page.locator("#edit-input").fill("Hello from the API (edited)")
    page.locator("#edit-dialog").get_by_role("button", name="Save").click()
    expect(messages.nth(0).locator(".message-content")).to_have_text("Hello from the API (edited)")
    marker = messages.nth(0).locator("button.edited")
    expect(marker).to_have_text("edited (1)")
    marker.click()
    history = page.locator("#history-list .history-entry")
    expect(history).to_have_count(2)
    expect(history.nth(0)).to_contain_text("Hello from the API (edited)")
    expect(history.nth(1)).to_contain_text("Hello from the API")
    page.locator("#history-dialog").get_by_role("button", name="Close").click()

    # A turn goes to POST /v1/model/response as the contract says, and its streamed answer renders delta by
    # delta. (The endpoint is stubbed in the browser here: the real one is exercised below.)
    sent: list[dict[str, object]] = []

    def stream(events: str) -> Callable[[Route], None]:
        def handle(route: Route) -> None:
            sent.append(route.request.post_data_json)
            route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=events)

        return handle

    delta = "response.output_text.delta"
    page.route(
        "**/v1/model/response",
        stream(
            _sse(
                ("response.created", {"type": "response.created", "response": {"status": "in_progress"}}),
                (delta, {"type": delta, "delta": "Streamed "}),
                (delta, {"type": delta, "delta": "answer"}),
                ("response.completed", {"type": "response.completed", "response": {"status": "completed"}}),
            )
        ),
    )
    page.get_by_label("Context", exact=True).select_option("smart")
    page.get_by_label("Message", exact=True).fill("First turn")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_label("Message", exact=True)).to_have_value("")  # cleared once the response completed
    assert sent == [
        {
            "thread": thread_id,
            "inputs": [{"role": "user", "texts": [{"text": "First turn"}]}],
            "stream": True,
            "thread_context_mode": "smart",
        }
    ]
    expect(page.locator("#notice")).to_be_hidden()
    page.unroute("**/v1/model/response")

    # A response.failed event keeps what was written and shows its error verbatim.
    failed = {"status": "failed", "error": {"code": "server_error", "message": "Model fell over."}}
    page.route(
        "**/v1/model/response",
        stream(
            _sse(
                (delta, {"type": delta, "delta": "Partial "}),
                (delta, {"type": delta, "delta": "answer"}),
                ("response.failed", {"type": "response.failed", "response": failed}),
            )
        ),
    )
    page.get_by_label("Message", exact=True).fill("Tell me more")
    page.get_by_role("button", name="Send").click()
    pending = page.locator("#messages .message-pending.message-assistant")
    expect(pending.locator(".message-content")).to_have_text("Partial answer")
    expect(pending.locator(".message-error")).to_have_text("Model fell over. (server_error)")
    expect(page.locator("#notice-text")).to_have_text("Model fell over. server_error")
    expect(page.get_by_label("Message", exact=True)).to_have_value("Tell me more")  # kept, to retry
    page.unroute("**/v1/model/response")

    # Against the real endpoint of this model-less server: its 404 envelope (no model is configured) is shown
    # verbatim, and the typed text is kept for a retry. (The real model's turn is the test further down.)
    with server.api() as api:
        direct = api.post(
            "/v1/model/response",
            json={"thread": thread_id, "inputs": [{"role": "user", "texts": [{"text": "x"}]}], "stream": True},
        )
    assert direct.status_code == 404, direct.text
    error = direct.json()["error"]
    assert error["code"] == "model_not_found"
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#notice-text")).to_have_text(f"{error['message']} {error['code']}")
    expect(page.get_by_label("Message", exact=True)).to_have_value("Tell me more")

    # Pin, then lock: the badges show it, and a locked thread's composer is closed.
    page.get_by_role("button", name="Pin", exact=True).click()
    expect(page.get_by_role("button", name="Unpin")).to_have_attribute("aria-pressed", "true")
    expect(item.locator(".badge-pinned")).to_be_visible()
    page.get_by_role("button", name="Lock", exact=True).click()
    expect(page.locator("#thread-badges .badge-locked")).to_have_text("Locked")
    expect(item.locator(".badge-locked")).to_have_text("Locked")
    expect(page.get_by_role("button", name="Unlock")).to_be_visible()
    expect(page.locator("#composer-input")).to_be_disabled()
    expect(page.locator("#composer-note")).to_have_text(
        "This thread is locked: unlock it to continue the conversation."
    )
    with server.api() as api:
        assert api.get(f"/v1/threads/{thread_id}").json()["state"] == "locked"

    # A reload keeps the session (sessionStorage) and reopens the thread named in the URL fragment.
    page.reload()
    expect(page.locator("#thread-title")).to_have_text("Quarterly plan")
    expect(page.locator("#thread-badges .badge-locked")).to_have_text("Locked")
    expect(messages).to_have_count(2)

    # The thread view as it stands: kept for a person to look at.
    shot = Path(tempfile.gettempdir()) / "threadline-ui-thread-view.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # Archive (confirmed in a dialog): permanent, so lock and archive are no longer offered.
    page.get_by_role("button", name="Archive", exact=True).click()
    page.locator("#confirm-dialog").get_by_role("button", name="Archive").click()
    expect(page.locator("#thread-badges .badge-archived")).to_have_text("Archived")
    expect(page.locator("#act-lock")).to_be_disabled()
    expect(page.locator("#act-archive")).to_be_disabled()

    # An archived thread is read-only: the API's 409 for an edit is shown in the dialog, verbatim.
    messages.nth(1).get_by_role("button", name="Edit message").click()
    page.locator("#edit-input").fill("changed")
    page.locator("#edit-dialog").get_by_role("button", name="Save").click()
    dialog_error = page.locator("#edit-dialog .dialog-error")
    expect(dialog_error).to_contain_text("(thread_archived)")
    page.locator("#edit-dialog").get_by_role("button", name="Cancel").click()
    expect(messages.nth(1).locator(".message-content")).to_have_text("Hi! How can I help you today?")

    # Filters: "Pinned only" keeps it; "Hidden threads" lists only visible_in_ui=false ones (none here).
    page.get_by_label("Pinned only", exact=True).check()
    expect(item).to_have_count(1)
    page.get_by_label("Hidden threads", exact=True).check()
    expect(page.locator("#thread-list .thread-item")).to_have_count(0)
    expect(page.locator("#thread-list-empty")).to_be_visible()


def test_password_sign_in_with_several_organizations(page: Page, server: Server) -> None:
    from playwright.sync_api import expect

    for org in ("acme", "globex"):
        server.cli(
            "users", "create", "--org", org, "--email", "grace@multi.test", "--password-stdin", stdin="s3cret-pass\n"
        )
    with server.api() as api:
        acme_thread = api.post("/v1/threads", json={"title": "Acme only"}).json()

    page.goto("/")
    page.get_by_label("Email", exact=True).fill("grace@multi.test")
    page.get_by_label("Password", exact=True).fill("wrong-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#notice-text")).to_have_text("Wrong email or password. invalid_login")

    page.get_by_label("Password", exact=True).fill("s3cret-pass")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#whoami")).to_contain_text("grace@multi.test")
    picker = page.get_by_label("Organization", exact=True)
    expect(picker.locator("option")).to_have_count(2)
    assert sorted(picker.locator("option").all_inner_texts()) == ["acme", "globex"]
    session = page.evaluate("JSON.parse(sessionStorage.getItem('threadline.session'))")
    assert session["kind"] == "token"
    token = session["secret"]
    assert httpx.get(f"{server.base_url}/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    # Each organization has its own threads: the picker switches the list.
    picker.select_option(label="acme")
    expect(page.locator("#thread-list .thread-item").filter(has_text="Acme only")).to_have_count(1)
    picker.select_option(label="globex")
    expect(page.locator("#thread-list .thread-item")).to_have_count(0)
    page.get_by_role("button", name="New thread").click()
    expect(page.locator("#thread-list .thread-item")).to_have_count(1)
    with server.api() as api:
        assert api.get(f"/v1/threads/{acme_thread['id']}").status_code == 200

    # Signing out revokes the token and forgets it.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to Threadline")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('threadline.session')") is None
    response = httpx.get(f"{server.base_url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_sse_parser_survives_any_chunking(page: Page) -> None:
    """The composer's SSE parser, fed the same stream in awkward chunks: split mid-field, between "\\r" and
    "\\n", with comments and multi-line data. Every split yields the same events."""
    page.goto("/")
    events = page.evaluate(
        """async () => {
          const { parseSSE } = await import("/static/api.js");
          const wire = ": keepalive\\r\\n"
            + "event: response.output_text.delta\\r\\ndata: {\\"delta\\": \\"Hel\\"}\\r\\n\\r\\n"
            + "event: response.output_text.delta\\ndata: {\\"delta\\":\\n"
            + "data: \\"lo\\"}\\n\\n"
            + "event: response.completed\\ndata: {}\\n\\n";
          const results = [];
          for (let size = 1; size <= wire.length; size += 1) {
            const chunks = [];
            for (let i = 0; i < wire.length; i += size) chunks.push(wire.slice(i, i + size));
            const body = new ReadableStream({
              start(controller) {
                for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
                controller.close();
              },
            });
            const got = [];
            for await (const event of parseSSE(body)) got.push([event.event, event.data]);
            results.push(JSON.stringify(got));
          }
          return [...new Set(results)];
        }"""
    )
    assert len(events) == 1, events  # one outcome whatever the chunking
    assert json.loads(events[0]) == [
        ["response.output_text.delta", '{"delta": "Hel"}'],
        ["response.output_text.delta", '{"delta":\n"lo"}'],
        ["response.completed", "{}"],
    ]


def test_stream_errors_are_read_in_every_shape(page: Page) -> None:
    """An error inside the stream may come as response.failed, an error envelope, or a flat `error` event."""
    page.goto("/")
    described = page.evaluate(
        """async () => {
          const { errorOfEvent } = await import("/static/api.js");
          return [
            {type: "response.failed", response: {status: "failed", error: {code: "a", message: "One."}}},
            {error: {code: "b", message: "Two.", type: "api_error"}},
            {type: "error", code: "c", message: "Three.", param: null},
            {type: "response.failed", response: {status: "failed"}},
          ].map((data) => { const e = errorOfEvent(data); return [e.message, e.code]; });
        }"""
    )
    assert described == [["One.", "a"], ["Two.", "b"], ["Three.", "c"], ["The response failed.", None]]


def test_paging_and_deleting(page: Page, server: Server) -> None:
    """Keyset pages in both lists ("Load more" threads, "Load older" messages), then deletes."""
    from playwright.sync_api import expect

    key = server.cli("keys", "create", "--org", "pager", "--email", "pat@pager.test").strip().splitlines()[-1]
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": key}, timeout=10) as api:
        ids = [api.post("/v1/threads", json={"title": f"T{n:02d}"}).json()["id"] for n in range(25)]
        for n in range(35):
            api.post(f"/v1/threads/{ids[-1]}/messages", json={"role": "user", "content": f"m{n:02d}"})

    page.goto("/")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in with key").click()
    titles = page.locator("#thread-list .thread-item-title")
    expect(titles).to_have_count(20)
    page.get_by_role("button", name="Load more").click()
    expect(titles).to_have_count(25)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    assert titles.all_inner_texts() == [f"T{n:02d}" for n in reversed(range(25))]  # newest first, no repeats

    # The newest thread's 35 messages: the last 30 first, then the older 5 above them, oldest → newest.
    page.locator("#thread-list .thread-item").first.click()
    contents = page.locator("#messages .message-content")
    expect(contents).to_have_count(30)
    expect(contents.first).to_have_text("m05")
    page.get_by_role("button", name="Load older").click()
    expect(contents).to_have_count(35)
    assert contents.all_inner_texts() == [f"m{n:02d}" for n in range(35)]

    # Delete a message, then the thread (both confirmed in a dialog).
    page.locator("#messages .message").nth(0).get_by_role("button", name="Delete message").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
    expect(contents).to_have_count(34)
    expect(contents.first).to_have_text("m01")
    expect(page.locator("#thread-meta")).to_contain_text("34 messages")

    page.get_by_role("button", name="Delete", exact=True).click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
    expect(titles).to_have_count(24)
    expect(page.locator("#thread-empty")).to_be_visible()
    expect(titles.first).to_have_text("T23")

    # "Include deleted" brings it back, marked.
    page.get_by_label("Include deleted", exact=True).check()
    deleted = page.locator("#thread-list .thread-item").filter(has_text="T24")
    expect(deleted.locator(".badge-deleted")).to_have_text("Deleted")


# A 2×2 red PNG: what the thumbnail shows (a data: URL, as images are stored: docs/items.md).
RED_PNG = "".join(
    (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP4z8DAwMDA",
        "xMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
    )
)


def test_tool_calls_outputs_and_images_render_in_the_thread_view(page: Page, server: Server) -> None:
    from playwright.sync_api import expect

    key = server.cli("keys", "create", "--org", "tools", "--email", "tia@tools.test").strip().splitlines()[-1]
    long_output = "\n".join(f"line {n}: {'x' * 30}" for n in range(40))
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": key}, timeout=10) as api:
        thread_id = api.post("/v1/threads", json={"title": "Agent run"}).json()["id"]
        items = [
            {"type": "message", "role": "user", "content": "Weather in Paris, and the log?"},
            {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_w", "output": "sunny, 21 °C"},
            {"type": "function_call", "call_id": "call_l", "name": "read_log", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_l", "output": long_output},
        ]
        created = api.post(f"/v1/conversations/{thread_id}/items", json={"items": items})
        assert created.status_code == 200, created.text

    # The first message carries an image part (stubbed into the page's own API answer: images are stored by
    # the image-parts work, docs/items.md; this test is about how the page shows them).
    def add_image(route: Route) -> None:
        answer = route.fetch()
        body = answer.json()
        for message in body["data"]:
            if message["type"] == "message":
                message["images"] = [{"url": RED_PNG, "detail": "low"}]
        route.fulfill(response=answer, json=body)

    page.route(re.compile(rf".*/v1/threads/{thread_id}/messages\?.*"), add_image)
    page.goto("/")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in with key").click()
    page.locator("#thread-list .thread-item").filter(has_text="Agent run").click()

    messages = page.locator("#messages .message")
    expect(messages).to_have_count(5)
    call, output, long_call, long_out = (messages.nth(n) for n in range(1, 5))
    expect(call.locator(".tool-name")).to_contain_text("Calls get_weather")
    expect(call.locator(".tool-name")).to_contain_text("call_w")
    expect(call.locator("pre.tool-text")).to_have_text('{\n  "city": "Paris"\n}')  # indented JSON
    expect(call.locator("pre.tool-text")).to_be_visible()  # short: open
    expect(output.locator(".tool-name")).to_contain_text("Output of call_w")
    expect(output.locator("pre.tool-text")).to_have_text("sunny, 21 °C")
    expect(call.get_by_role("button", name="Edit message")).to_have_count(0)  # tool items are not edited
    expect(long_call.locator(".tool-name")).to_contain_text("Calls read_log")

    # A long output starts collapsed behind its first line, and opens on a click.
    expect(long_out.locator("pre.tool-text")).to_be_hidden()
    expect(long_out.locator("summary")).to_contain_text("line 0:")
    long_out.locator("summary").click()
    expect(long_out.locator("pre.tool-text")).to_be_visible()
    assert long_out.locator("pre.tool-text").inner_text() == long_output

    # The image shows as a thumbnail (it loads: the page's CSP allows data: images) linking to the full image.
    thumb = messages.nth(0).locator("img.thumb")
    expect(thumb).to_have_attribute("alt", "Image 1")
    expect(messages.nth(0).locator("a.thumb-link")).to_have_attribute("href", RED_PNG)
    page.wait_for_function("img => img.complete && img.naturalWidth === 2", arg=thumb.element_handle())
    expect(messages.nth(0).locator(".message-content")).to_have_text("Weather in Paris, and the log?")


@pytest.mark.slow
def test_a_turn_from_the_composer_streams_the_real_models_answer(browser: Browser, model_server: Server) -> None:
    """The composer against the embedded SmolLM2 (no stub): the answer streams into the page, is saved, and is
    still there after a reload."""
    from playwright.sync_api import expect

    with model_server.api() as api:
        thread_id = api.post("/v1/threads", json={"title": "Live model"}).json()["id"]
    with _open_page(browser, model_server.base_url) as page:
        page.goto("/")
        page.get_by_label("API key", exact=True).fill(model_server.api_key)
        page.get_by_role("button", name="Sign in with key").click()
        page.locator("#thread-list .thread-item").filter(has_text="Live model").click()
        expect(page.locator("#thread-title")).to_have_text("Live model")
        expect(page.locator("#model-picker option[value='smollm2-135m-instruct']")).to_have_count(1)

        # Record every text the pending answer shows while the stream arrives: proof it rendered as it came.
        page.evaluate(
            """() => {
              window.__streamed = [];
              new MutationObserver(() => {
                const pending = document.querySelector("#messages .message-pending.message-assistant .message-content");
                if (pending && pending.textContent) window.__streamed.push(pending.textContent);
              }).observe(document.getElementById("messages"), {childList: true, subtree: true, characterData: true});
            }"""
        )
        with page.expect_response("**/v1/model/response") as answered:
            page.get_by_label("Message", exact=True).fill("Say hello to Ada.")
            page.get_by_role("button", name="Send").click()
        assert answered.value.status == 200
        assert answered.value.headers["content-type"].startswith("text/event-stream")
        # The first generation loads the weights: give the model time on a shared machine.
        expect(page.get_by_label("Message", exact=True)).to_have_value("", timeout=120_000)
        messages = page.locator("#messages .message")
        expect(messages).to_have_count(2)
        expect(page.locator("#messages .message-pending")).to_have_count(0)  # replaced by the stored messages
        expect(page.locator("#notice")).to_be_hidden()
        streamed: list[str] = page.evaluate("window.__streamed")
        assert streamed and streamed[-1].strip(), streamed

        with model_server.api() as api:
            stored = api.get(f"/v1/threads/{thread_id}/messages", params={"order": "asc"}).json()["data"]
            thread = api.get(f"/v1/threads/{thread_id}").json()
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert stored[0]["content"] == "Say hello to Ada."
        assert stored[1]["content"] == streamed[-1]  # what streamed is what was saved
        assert stored[1]["model"] == "smollm2-135m-instruct"
        assert thread["status"] == "inactive" and thread["last_model_used"] == "smollm2-135m-instruct"
        expect(messages.nth(1).locator(".message-content")).to_have_text(stored[1]["content"])

        page.reload()
        expect(page.locator("#thread-title")).to_have_text("Live model")
        expect(messages).to_have_count(2)
        expect(messages.nth(0).locator(".message-content")).to_have_text("Say hello to Ada.")
        expect(messages.nth(1).locator(".message-content")).to_have_text(stored[1]["content"])


def test_fork_export_and_import(page: Page, server: Server, tmp_path: Path) -> None:
    """Fork from a message, download a thread's export, import a ChatGPT conversations.json."""
    from playwright.sync_api import expect

    from tests.test_thread_data import chatgpt_export

    key = server.cli("keys", "create", "--org", "forker", "--email", "fay@forker.test").strip().splitlines()[-1]
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": key}, timeout=10) as api:
        source = api.post("/v1/threads", json={"title": "Source"}).json()["id"]
        for text in ("first", "second", "third"):
            api.post(f"/v1/threads/{source}/messages", json={"role": "user", "content": text})

    page.goto("/")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in with key").click()
    page.locator("#thread-list .thread-item").filter(has_text="Source").click()
    contents = page.locator("#messages .message-content")
    expect(contents).to_have_count(3)

    # Fork after the second message: a new thread opens with the history up to there.
    page.locator("#messages .message").nth(1).get_by_role("button", name="Fork from this message").click()
    expect(page.locator("#thread-meta code")).not_to_have_text(source)
    expect(contents).to_have_count(2)
    assert contents.all_inner_texts() == ["first", "second"]
    expect(page.locator("#thread-meta")).to_contain_text("2 messages")
    expect(page.locator("#thread-list .thread-item").filter(has_text="Source")).to_have_count(2)

    # Export the fork: a JSON Lines download, its header then its two items.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export", exact=True).click()
    download = download_info.value
    assert download.suggested_filename.endswith(".jsonl")
    lines = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
    assert [line["object"] for line in lines] == ["thread", "thread.item", "thread.item"]
    assert [line["content"] for line in lines[1:]] == ["first", "second"]

    # Import a ChatGPT export: the result is said, the conversations appear in the list.
    conversations = tmp_path / "conversations.json"
    conversations.write_text(json.dumps(chatgpt_export()))
    page.locator("#import-file").set_input_files(str(conversations))
    expect(page.locator("#notice-text")).to_contain_text("2 created, 0 already there, 0 failed")
    expect(page.locator("#thread-list .thread-item").filter(has_text="Paris trip")).to_have_count(1)
    page.locator("#import-file").set_input_files(str(conversations))
    expect(page.locator("#notice-text")).to_contain_text("0 created, 2 already there, 0 failed")
