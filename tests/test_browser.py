"""The chat UI in a real browser: headless Chromium (Debian `chromium`, driven by Playwright without
`playwright install`) against a live server on loopback with a tiny model that has memorised one greeting.
Screenshots go to the test's tmp dir and, when $NANOCHAT_SCREENSHOT_DIR is set, there too.

    apt-get install -y chromium      # .ci/run does this; without it these tests skip
    python -m pytest tests/test_browser.py
"""

import os
import shutil

import httpx
import pytest
import torch
from test_chat_web import LiveServer, TrackedEngine, make_workers, tiny_model, wait_for

from nanochat.engine import Engine
from scripts.chat_web import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [  # env-notes section 6: no sandbox or GPU in a container, no background traffic
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
GREETING = {
    "messages": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there! I am nanochat, a very small model. How can I help?"},
    ]
}

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
)


def memorised_model(tokenizer):
    """The tiny model after 30 AdamW steps on one conversation: greedy replies to "Hello!" read like a reply."""
    model = tiny_model(tokenizer).train()
    ids, mask = tokenizer.render_conversation(GREETING)
    inputs = torch.tensor([ids[:-1]])
    targets = torch.tensor([[t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(30):
        loss = model(inputs, targets=targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def save_screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target_dir = os.environ.get("NANOCHAT_SCREENSHOT_DIR")
    if target_dir:
        os.makedirs(target_dir, exist_ok=True)
        shutil.copy(path, os.path.join(target_dir, name))
    print(f"screenshot: {path}")
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_chat_in_the_browser(browser, tiny_tokenizer, tmp_path):
    """The page streams a reply, keeps Shift+Enter as a newline, regenerates, edits a past message, stops a reply
    half-way (freeing the worker), and shows the server's refusal in the error banner."""
    engine = TrackedEngine(Engine(memorised_model(tiny_tokenizer), tiny_tokenizer), delay=0.03)
    app = create_app(make_workers([engine], tiny_tokenizer), temperature=0.0, max_tokens=40)
    with LiveServer(app) as server:
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server.url)
        page.wait_for_selector("#status.ok")
        assert "nanochat-test" in page.text_content("#status")
        assistant = ".message.assistant"

        # record every length the reply's text goes through, to see it arrive in pieces
        page.evaluate(
            """() => {
              window.replyLengths = [];
              new MutationObserver(() => {
                const replies = document.querySelectorAll('.message.assistant .content');
                if (replies.length) window.replyLengths.push(replies[replies.length - 1].textContent.length);
              }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
            }"""
        )

        # send with Enter; while streaming, Send is replaced by Stop
        page.fill("#input", "Hello!")
        page.press("#input", "Enter")
        page.wait_for_selector(f'{assistant}[data-state="streaming"]')
        assert page.is_hidden("#send") and page.is_visible("#stop")
        page.wait_for_selector(f'{assistant}[data-state="done"]', timeout=30_000)
        reply = page.text_content(f"{assistant} .content")
        expected = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [GREETING["messages"][0]]})
        assert reply and reply == expected.json()["choices"][0]["message"]["content"]
        assert len({n for n in page.evaluate("window.replyLengths") if 0 < n < len(reply)}) >= 2, "not streamed"
        assert page.text_content(".message.user .content") == "Hello!" and page.is_enabled("#new-chat")

        # Shift+Enter is a newline, not a send
        page.fill("#input", "line one")
        page.press("#input", "Shift+Enter")
        page.keyboard.type("line two")
        assert page.input_value("#input") == "line one\nline two" and page.locator(".message").count() == 2
        save_screenshot(page, tmp_path, "chat_web_reply.png")
        page.fill("#input", "")

        # regenerate the reply: still one exchange, a fresh complete reply
        page.click(f"{assistant} .regenerate")
        page.wait_for_selector(f'{assistant}[data-state="done"]', timeout=30_000)
        assert page.locator(".message").count() == 2 and page.text_content(f"{assistant} .content") == reply

        # edit the past user message: the conversation is cut after it and answered again
        page.click(".message.user .edit")
        page.fill(".edit-box", "Hello again!")
        page.click(".edit-buttons .save")
        page.wait_for_selector(f'{assistant}[data-state="done"]', timeout=30_000)
        assert page.locator(".message").count() == 2
        assert page.text_content(".message.user .content") == "Hello again!"

        # stop a slow reply half-way: the partial reply stays, and the server gets its worker back
        engine.delay = 1.0
        page.fill("#input", "Hello!")
        page.click("#send")
        page.wait_for_function(
            "() => document.querySelectorAll('.message.assistant .content')[1]?.textContent.length > 0",
            timeout=30_000,
        )
        page.click("#stop")
        page.wait_for_selector(f'{assistant}[data-state="stopped"]')
        engine.delay = 0.03

        stats_url = f"{server.url}/stats"
        wait_for(lambda: httpx.get(stats_url).json()["workers_available"] == 1, what="the stopped reply's worker")
        assert httpx.get(stats_url).json()["requests_cancelled"] == 1

        # new chat empties the page
        page.click("#new-chat")
        assert page.locator(".message").count() == 0 and page.is_visible("#empty")
        page.fill("#input", "Hello!")
        page.press("#input", "Enter")
        page.wait_for_selector(f'{assistant}[data-state="done"]', timeout=30_000)

        # a refused request: max tokens out of range in the settings; the server's message is shown, nothing is lost
        page.click("#settings-button")
        page.fill("#max-tokens", "99999")
        page.fill("#input", "One more question")
        page.click("#send")
        page.wait_for_selector("#error:not([hidden])")
        assert "max_tokens must be an integer in [1, 4096], got 99999" in page.text_content("#error-text")
        assert page.input_value("#input") == "One more question" and page.locator(".message").count() == 2
        path = save_screenshot(page, tmp_path, "chat_web_error.png")
        assert path.stat().st_size > 10_000

        # fix the setting and retry: the banner goes away and the reply comes
        page.fill("#max-tokens", "20")
        page.click("#send")
        page.wait_for_selector("#error", state="hidden")
        page.wait_for_function(
            "() => document.querySelectorAll('.message').length === 4"
            " && document.querySelector('.message.assistant:last-child')?.dataset.state === 'done'",
            timeout=30_000,
        )
        assert page.is_hidden("#error")
        page.close()
