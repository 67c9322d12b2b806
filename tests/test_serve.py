"""The live server on loopback: the official openai client, streaming, limits, cancellation, infill, playground.

One uvicorn server runs in a thread for the whole module on a free 127.0.0.1 port, serving a `test`-preset
model made by ``unmask init``. A forward pre-hook can slow the model down (``slow``) so requests overlap.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402
import uvicorn  # noqa: E402

import unmask  # noqa: E402
from unmask.cli import main  # noqa: E402
from unmask.serve.app import create_app  # noqa: E402
from unmask.serve.config import ServeConfig  # noqa: E402

LIMITS = ServeConfig(max_tokens=48, max_n=2, max_stop=2, max_stop_chars=8, max_concurrency=2, max_body_bytes=20_000,
                     max_steps=64, batch_wait_ms=2)


class Server:
    def __init__(self, url, model, tokenizer, app):
        self.url, self.model, self.tokenizer, self.app = url, model, tokenizer, app
        self.delay = 0.0  # seconds each forward sleeps (to make requests overlap)
        self.forwards = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model"
    assert main(["init", str(path), "--preset", "test", "--vocab-size", "400", "--tokenizer-bytes", "200000"]) == 0
    model, tokenizer = unmask.load(path)
    app = create_app(model, tokenizer, LIMITS, model_name="tiny")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = Server(f"http://127.0.0.1:{port}", model, tokenizer, app)
    srv.path = path

    def hook(module, args):
        srv.forwards += 1
        if srv.delay:
            time.sleep(srv.delay)

    model.register_forward_pre_hook(hook)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if uv.started:
            break
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    yield srv
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def direct_text(server, prompt_ids, **params):
    """What the Python API generates for these ids (reference decoder), cut at the first stop token.

    A lone request is decoded as a batch of one, unpadded: the very forwards ``generate`` makes, so the
    tokens are equal bit for bit, near-ties or not."""
    out = unmask.generate(server.model, torch.tensor([prompt_ids]), **params)
    return server.tokenizer.decode(out.generated[0].tolist(), cut=True)


# -- the openai client ----------------------------------------------------------------------------------------


def test_openai_client_completions_plain_and_streamed(server, client):
    kw = dict(model="tiny", prompt="def add(a, b):", max_tokens=12, temperature=0, seed=5,
              extra_body={"steps": 12, "alg": "entropy"})
    out = client.completions.create(**kw)
    text = out.choices[0].text
    assert text == direct_text(server, server.tokenizer.encode("def add(a, b):"), max_new_tokens=12, steps=12,
                               temperature=0.0, alg="entropy")
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.prompt_tokens > 0
    ext = out.choices[0].model_extra["unmask"]
    assert ext["forward_passes"] == 12 and 0 <= ext["arness"]["global"]["1"] <= 1
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_openai_client_chat_plain_and_streamed(server, client):
    messages = [{"role": "user", "content": "write a loop"}]
    kw = dict(model="tiny", messages=messages, max_tokens=10, temperature=0, extra_body={"steps": 10})
    out = client.chat.completions.create(**kw)
    content = out.choices[0].message.content
    prompt = server.tokenizer.apply_chat_template(messages)
    assert content == direct_text(server, server.tokenizer.encode(prompt), max_new_tokens=10, steps=10,
                                  temperature=0.0)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert [m.id for m in client.models.list().data] == ["tiny"]


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_equals_non_stream_at_the_same_seed_when_sampling(client, seed):
    kw = dict(model="tiny", prompt="for i in", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed,
              stop=["\n\n"], n=2, extra_body={"steps": 8, "alg_temp": 0.5})
    out = client.completions.create(**kw)
    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(stream=True, **kw):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == {c.index: c.text for c in out.choices}
    assert all("\n\n" not in c.text for c in out.choices)


def test_stream_canvas_shows_every_step_and_commits_each_position_once(server):
    body = {"prompt": "import os", "max_tokens": 8, "steps": 4, "temperature": 0, "stream": True,
            "stream_canvas": True, "decoder": "blocks", "block_length": 4}
    events = sse(server, "/v1/completions", body)
    canvases = [e["choices"][0]["unmask"] for e in events if "canvas" in e["choices"][0].get("unmask", {})]
    assert [c["step"] for c in canvases] == list(range(len(canvases)))
    committed = sorted(p for c in canvases for p in c["committed"])
    assert committed == list(range(8))  # every position committed exactly once
    assert None not in canvases[-1]["canvas"] and None in canvases[0]["canvas"]
    assert events[-1]["choices"][0]["unmask"]["decoder"] == "blocks"


def sse(server, path, body):
    events = []
    with httpx.stream("POST", server.url + path, json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


# -- overload and cancellation --------------------------------------------------------------------------------


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_overload_429_and_a_disconnect_frees_its_slot(server):
    server.delay = 0.05  # 48 steps ≈ 2.4 s per request: long enough to overlap
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 48, "temperature": 0.5, "stream": True}
    health = lambda: httpx.get(server.url + "/health").json()  # noqa: E731
    try:
        with httpx.Client(timeout=30) as c1, httpx.Client(timeout=30) as c2:
            cm1 = c1.stream("POST", server.url + "/v1/chat/completions", json=body)
            cm2 = c2.stream("POST", server.url + "/v1/chat/completions", json=body)
            s1, s2 = cm1.__enter__(), cm2.__enter__()  # keep the context managers alive: they own the streams
            assert s1.status_code == 200 and s2.status_code == 200
            assert health()["active"] == 2
            over = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
            assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error"
            next(s1.iter_lines())  # the stream is live …
            cm1.__exit__(None, None, None)  # … and the client goes away mid-stream
            assert wait_for(lambda: health()["active"] == 1), "the disconnected request kept its slot"
            ok = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2, "steps": 2},
                            timeout=30)
            assert ok.status_code == 200
            cm2.__exit__(None, None, None)
        assert wait_for(lambda: health()["active"] == 0)
        before = server.forwards
        time.sleep(0.5)
        assert server.forwards == before  # both decodes were stopped, not run to the end
    finally:
        server.delay = 0.0


# -- invalid input --------------------------------------------------------------------------------------------

SECRET = "ZQXSECRET"
BAD = [
    ("/v1/completions", b"{not json", 422),
    ("/v1/completions", b"[1, 2]", 422),
    ("/v1/completions", {"max_tokens": 4}, 422),  # no prompt
    ("/v1/completions", {"prompt": 5}, 422),
    ("/v1/completions", {"prompt": SECRET, "max_tokens": SECRET}, 422),
    ("/v1/completions", {"prompt": SECRET, "max_tokens": "4"}, 422),  # strict types: no string → int
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 422),
    ("/v1/completions", b'{"prompt": "x", "top_p": Infinity}', 422),
    ("/v1/completions", {"prompt": SECRET, "top_p": 0}, 422),
    ("/v1/completions", {"prompt": SECRET, "decoder": SECRET}, 422),
    ("/v1/completions", {"prompt": SECRET, "max_tokens": 49}, 400),  # over the server's max_tokens
    ("/v1/completions", {"prompt": SECRET + " x" * 250, "max_tokens": 8}, 400),  # over the model's context
    ("/v1/completions", {"prompt": SECRET, "n": 3}, 400),
    ("/v1/completions", {"prompt": SECRET, "stop": ["a", "b", "c"]}, 400),
    ("/v1/completions", {"prompt": SECRET, "stop": SECRET + SECRET}, 400),
    ("/v1/completions", {"prompt": SECRET, "stop": [""]}, 400),
    ("/v1/completions", {"prompt": "", "max_tokens": 2}, 400),
    ("/v1/completions", {"prompt": SECRET, "steps": 65}, 400),
    ("/v1/completions", {"prompt": SECRET, "max_tokens": 0}, 400),  # nothing to generate
    ("/v1/completions", {"prompt": SECRET + "<|mask:0|>"}, 400),
    ("/v1/completions", {"prompt": "<|mask|>" + SECRET}, 400),  # position 0 must be real
    ("/v1/completions", {"prompt": SECRET + "<|mask:" + SECRET + "|>"}, 400),  # malformed: an error, as in the CLI
    ("/v1/completions", {"prompt": SECRET, "echo": True, "stream": True}, 400),
    ("/v1/completions", {"prompt": SECRET * 3000}, 413),  # body over 20 kB
    ("/v1/chat/completions", {"messages": []}, 422),
    ("/v1/chat/completions", {"messages": [{"role": SECRET, "content": "x"}]}, 422),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [SECRET]}]}, 422),
    ("/v1/infill", {"prefix": SECRET, "suffix": "y", "stream": True}, 400),
    ("/v1/infill", {"prefix": SECRET + "<|mask|>", "suffix": "y"}, 400),
    ("/v1/infill", {"prefix": SECRET, "max_tokens": 0}, 400),
    ("/v1/nowhere", {"prompt": SECRET}, 404),
]


@pytest.mark.parametrize("path, body, status", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_each_invalid_input_gets_its_4xx_without_echoing_it(server, path, body, status):
    if isinstance(body, bytes):
        resp = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    else:
        resp = httpx.post(server.url + path, json=body)
    assert resp.status_code == status, resp.text[:300]
    message = resp.json()["error"]["message"]
    assert message and len(message) < 400 and SECRET not in message


def test_a_lying_content_length_is_refused_before_parsing(server):
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 99999999\r\n\r\n{")
        assert sock.recv(200).startswith(b"HTTP/1.1 413")


# -- infill and masks anywhere --------------------------------------------------------------------------------


def test_infill_keeps_prefix_and_suffix_byte_exact(server):
    prefix, suffix = "def héllo(x):\n    ", "\n    return x  # ünïcode ✓\n"
    resp = httpx.post(server.url + "/v1/infill", json={"prefix": prefix, "suffix": suffix, "max_tokens": 6,
                                                       "temperature": 0}, timeout=30)
    assert resp.status_code == 200
    body = resp.json()
    choice = body["choices"][0]
    tok = server.tokenizer
    assert body["prefix_ids"] == tok.encode(prefix) and body["suffix_ids"] == tok.encode(suffix)
    assert len(choice["middle_ids"]) == 6 and tok.special.mask not in choice["middle_ids"]
    # full is the decoded final canvas: the prefix and suffix tokens came back unchanged, byte for byte
    assert choice["full"].encode().startswith(prefix.encode())
    assert choice["full"].encode().endswith(suffix.encode())
    assert choice["full"] == prefix + choice["text"] + suffix


def test_completion_placeholders_are_filled_in_place(server):
    prompt = "x = [<|mask:3|>]\ny = <|mask|>\n"
    resp = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "temperature": 0, "echo": True},
                      timeout=30)
    assert resp.status_code == 200
    choice = resp.json()["choices"][0]
    filled = choice["unmask"]["filled"]
    assert len(filled) == 2
    assert choice["text"] == "x = [" + filled[0] + "]\ny = " + filled[1] + "\n"
    assert choice["unmask"]["forward_passes"] == 4  # one step per masked token by default


def test_masks_in_the_prompt_with_the_blocks_decoder_equal_the_cli(server, capsys):
    """The blocks decoder fills placeholders inside the prompt; the server's fill is the CLI's (and the library's:
    ``unmask generate`` runs ``editing.infill``) for the same canvas, decoder and steps."""
    prompt = "x = [<|mask:3|>]\ny = <|mask:2|>\n"
    blocks = {"decoder": "blocks", "block_length": 2, "temperature": 0, "steps": 5, "alg": "entropy"}
    resp = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, **blocks}, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    ext = resp.json()["choices"][0]["unmask"]
    assert ext["decoder"] == "blocks" and ext["steps"] == 5
    capsys.readouterr()
    assert main(["generate", str(server.path), prompt, "--decoder", "blocks", "--block-length", "2",
                 "--temperature", "0", "--alg", "entropy", "--max-new-tokens", "5", "--steps", "5", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["lengths"] == [3, 2] and cli["decoder"]["decoder"] == "blocks"
    assert ext["filled"] == [server.tokenizer.decode(ids, cut=False) for ids in cli["middle_ids"]]


# -- playground -----------------------------------------------------------------------------------------------


def test_playground_is_self_contained(server):
    page = httpx.get(server.url + "/playground").text
    assert "<script>" in page and "/v1/completions" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page  # no CDN, no remote assets


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3/4, NUL-separated JSON).

    Real time, not --virtual-time-budget: virtual time runs out while the page waits on a live stream.
    """

    def __init__(self, binary: str, profile) -> None:
        import os

        self._to_r, self._to_w = os.pipe()  # we write commands, Chromium reads fd 3
        self._from_r, self._from_w = os.pipe()  # Chromium writes fd 4, we read
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=900,500", "about:blank"],
            pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: (os.dup2(self._to_r, 3), os.dup2(self._from_w, 4)))
        os.close(self._to_r)
        os.close(self._from_w)
        self._buf, self._id = b"", 0

    def call(self, method: str, session: str | None = None, **params):
        import os

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_r, 1 << 20)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_playground_renders_a_finished_generation_in_headless_chromium(server, tmp_path):
    import base64

    binary = _chromium()
    if binary is None:
        pytest.skip("headless Chromium not found (apt-get install -y chromium) — playground browser check skipped")
    url = server.url + "/playground?prompt=def%20f(x)%3A&max_tokens=12&steps=6&autostart=1"
    browser = Browser(binary, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url=url)["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

        def js(expression: str):
            return browser.call("Runtime.evaluate", session, expression=expression, returnByValue=True)[
                "result"].get("value")

        end = time.monotonic() + 60
        while js("document.body && document.body.dataset.state") != "done" and time.monotonic() < end:
            time.sleep(0.1)
        status = js("document.getElementById('status').textContent")
        assert js("document.body.dataset.state") == "done", status
        assert status.startswith("done · 6 forward passes") and "AR-ness" in status
        # every generated token is shown, none still masked, each coloured by the step that committed it
        assert js("document.querySelectorAll('#canvas span[title^=\"committed at step\"]').length") == 12
        assert js("document.querySelectorAll('#canvas span.mask').length") == 0
        png = base64.b64decode(browser.call("Page.captureScreenshot", session, format="png")["data"])
    finally:
        browser.close()
    shot = tmp_path / "shot.png"
    shot.write_bytes(png)
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]  # (H, W, 3) floats in [0, 1]
    saturated = (pixels.max(-1) - pixels.min(-1)) > 0.1  # token colours; the page chrome is grey/white
    assert saturated.sum() > 500
