"""The chat page in a real browser: Debian's headless Chromium (``/usr/bin/chromium``, installed
by `.ci/run`), driven by playwright with that system browser (no ``playwright install``), against
``gemma-mtp serve`` on the embedded demo pair (Gemma 3 270M + its MTP drafter) in a subprocess.

Outside CI a missing browser or playwright skips with the reason; under CI=true it fails.
``PAGE_SCREENSHOT=docs/chat-page.png`` also saves the page (the README's picture) there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

CHROMIUM = "/usr/bin/chromium"
KEY = "page-key"
CTX = 256  # small, so that a pasted long text is an over-long prompt


def _need(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs it; a missing browser fails the suite)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    _need(
        Path(CHROMIUM).exists(), f"no {CHROMIUM}: apt-get install chromium (as root) to run the browser test"
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is missing: pip install -e '.[dev]'")
    return sync_playwright


@pytest.fixture(scope="module")
def server(sync_playwright, tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w+")
    argv = ["serve", "-t", "1", "-np", "2", "-c", str(CTX), "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_mtp.cli.main", *argv],  # `gemma-mtp serve ...`
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            log.seek(0)
            assert proc.poll() is None, f"serve exited: {log.read()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(sync_playwright, server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server}/")
        yield page
        browser.close()
        assert not errors, errors


def sse_chunks(body: bytes) -> list[dict]:
    lines = [line for line in body.decode().splitlines() if line.startswith("data: ")]
    assert lines and lines[-1] == "data: [DONE]", body[-500:]
    return [json.loads(line[6:]) for line in lines[:-1]]


def stats(page, box: str) -> dict[str, str]:
    return page.eval_on_selector_all(
        f"#{box} [data-stat]",
        "els => Object.fromEntries(els.map(e => [e.dataset.stat, e.textContent]))",
    )


def acceptance_data(page, box: str) -> tuple[int, int, int]:
    """(accepted, drafted, rounds) as the figures in ``box`` count them."""
    return tuple(
        page.eval_on_selector(
            f"#{box}",
            """b => {
          const acc = b.querySelector('[data-stat="acceptance"]').dataset;
          const mal = b.querySelector('[data-stat="mal"]').dataset;
          return [Number(acc.accepted), Number(acc.drafted), Number(mal.rounds)];
        }""",
        )
    )


def ask(page, *, send: str) -> tuple[dict, list[dict]]:
    """Click ``send`` (#send or #regenerate) and wait for the answer: (request body, chunks)."""
    page.evaluate(
        """() => {  // every text the answer shows while it streams in
          document.querySelectorAll('.msg.assistant').forEach(el => el.dataset.old = '1');
          window.__seen = [];
          const observer = new MutationObserver(() => {
            const all = document.querySelectorAll('.msg.assistant .content');
            const last = all[all.length - 1];
            if (last && !last.closest('.msg').dataset.finish) window.__seen.push(last.textContent);
          });
          observer.observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    with page.expect_response("**/v1/chat/completions") as info:
        page.click(send)
    response = info.value
    page.locator(".msg.assistant[data-finish]:not([data-old])").wait_for(timeout=120_000)
    assert response.status == 200
    return response.request.post_data_json, sse_chunks(response.body())


def model_named(page) -> None:
    """Wait until the page names the served model. A locator wait, not `wait_for_function`: that
    one polls by evaluating a string in the page, which the page's CSP (script-src 'self', no
    unsafe-eval) refuses whenever the first check is not true yet (a slow, loaded machine)."""
    page.locator("#model", has_text="gguf").wait_for(timeout=120_000)


def test_the_page_chats_streams_and_shows_what_speculation_did(page):
    # the API key is asked once and kept in the browser
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#key-input", KEY)
    page.click("#key-save")
    model_named(page)
    assert page.evaluate("localStorage.getItem('gemma-mtp:api-key')") == KEY
    page.reload()
    model_named(page)
    assert page.locator("#key-dialog").is_hidden()

    page.fill("#max-tokens", "24")
    page.fill("#temperature", "0")
    page.fill("#system", "You are a helpful assistant.")
    page.fill("#input", "Name three colours of the rainbow.")
    body, chunks = ask(page, send="#send")
    assert body["return_speculation"] is True and "speculative" not in body  # the server's default
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    answer = page.locator(".msg.assistant .content").last.text_content()
    assert answer.strip()
    seen = page.evaluate("window.__seen")
    partial = [text for text in seen if text and text != answer]
    assert partial, "the answer appeared all at once, not streamed"
    final = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    timings, usage = final["timings"], chunks[-1]["usage"]
    rounds = sum(c.get("x_speculation", {}).get("rounds", 0) for c in chunks)
    shown = stats(page, "stats-answer")
    assert shown["tokens"] == str(usage["completion_tokens"])
    accepted, drafted, shown_rounds = acceptance_data(page, "stats-answer")
    assert (accepted, drafted, shown_rounds) == (timings["draft_n_accepted"], timings["draft_n"], rounds)
    assert drafted > 0
    assert shown["acceptance"] == f"{100 * accepted / drafted:.1f}% ({accepted}/{drafted})"
    assert shown["mal"] == f"{1 + accepted / rounds:.2f}"
    assert shown["tps"] == f"{timings['predicted_per_second']:.1f}"
    assert stats(page, "stats-total")["acceptance"] == shown["acceptance"]
    # tokens are marked by how they were produced
    marked = page.locator(".msg.assistant .content .tok")
    kinds = set(page.eval_on_selector_all(".msg.assistant .content .tok", "els => els.map(e => e.className)"))
    assert marked.count() > 0 and kinds <= {"tok tok-draft", "tok tok-target", "tok tok-mixed"}
    if timings["draft_n_accepted"]:
        assert any("draft" in k or "mixed" in k for k in kinds)
    if os.environ.get("PAGE_SCREENSHOT"):  # the README's picture: an answer with speculation on
        page.screenshot(path=os.environ["PAGE_SCREENSHOT"])

    # speculation off, the same (greedy) request again: the same text, no drafts
    page.uncheck("#spec-enabled")
    body, chunks = ask(page, send="#regenerate")
    assert body["speculative"] == {"enabled": False}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]  # the old answer left the history
    assert page.locator(".msg.assistant").count() == 1
    assert page.locator(".msg.assistant .content").last.text_content() == answer
    final = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert final["timings"]["draft_n"] == 0
    assert acceptance_data(page, "stats-answer")[:2] == (0, 0)
    total_tokens = usage["completion_tokens"] + chunks[-1]["usage"]["completion_tokens"]
    assert stats(page, "stats-total")["tokens"] == str(total_tokens)
    assert acceptance_data(page, "stats-total")[:2] == (accepted, drafted)  # since start
    page.check("#spec-enabled")


def test_an_over_long_prompt_shows_the_servers_message(page):
    page.fill("#input", "a few words of text " * 200)
    with page.expect_response("**/v1/chat/completions") as info:
        page.click("#send")
    assert info.value.status == 400
    page.locator("#error").wait_for(state="visible")
    text = page.locator("#error-text").text_content()
    assert "400" in text and f"a slot's context holds {CTX}" in text, text
    assert page.locator("#retry").is_visible()


def test_model_text_is_rendered_as_text_never_as_html(page):
    result = page.evaluate(
        """async () => {
          const { renderInto } = await import('/static/markdown.js');
          const div = document.createElement('div');
          document.body.append(div);
          renderInto(div, "<script>window.__pwned = 1</script> **<img src=x onerror='window.__pwned = 2'>**");
          await new Promise(r => setTimeout(r, 50));
          return {scripts: div.querySelectorAll('script, img').length, text: div.textContent,
                  pwned: window.__pwned ?? null};
        }"""
    )
    assert result == {
        "scripts": 0,
        "text": "<script>window.__pwned = 1</script> <img src=x onerror='window.__pwned = 2'>",
        "pwned": None,
    }


def test_a_lost_connection_says_so_and_offers_retry(page):
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionreset"))
    try:
        page.fill("#input", "hello")
        page.click("#send")
        page.locator("#error").wait_for(state="visible")
        assert "Lost the connection" in page.locator("#error-text").text_content()
        assert page.locator("#retry").is_visible()
    finally:
        page.unroute("**/v1/chat/completions")


def test_stop_ends_the_answer_and_frees_the_slot(page, server):
    page.click("#clear")
    page.fill("#max-tokens", "200")
    page.fill("#input", "Count from one to one hundred.")
    page.click("#send")
    page.locator(".msg.assistant .content .tok").first.wait_for()  # the answer has begun
    page.click("#stop")
    page.locator(".msg.assistant[data-finish='stopped']").wait_for()
    assert page.locator("#error").is_hidden()
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()
    deadline = time.monotonic() + 30
    while True:  # the server sees the client go and frees the slot
        slots = httpx.get(f"{server}/slots", headers={"Authorization": f"Bearer {KEY}"}).json()
        if slots["running"] == 0:
            break
        assert time.monotonic() < deadline, slots
        time.sleep(0.1)
    page.fill("#max-tokens", "24")
