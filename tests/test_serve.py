"""The live server on loopback: the official openai client, streaming, limits, cancellation, infill, playground,
and OpenAI parity (every request field honoured or refused with a 400 that names it).

One uvicorn server runs in a thread for the whole module on a free 127.0.0.1 port, serving a `test`-preset
model made by ``unmask init``. A forward pre-hook can slow the model down (``slow``) so requests overlap.
"""

from __future__ import annotations

import json
import math
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
pytest.importorskip("prometheus_client")

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


# -- OpenAI parity: every field honoured or refused -----------------------------------------------------------


def post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=60)


def returned_count(tokenizer, ids, text):
    """Independently: the fewest leading ids whose decoded text starts with ``text``."""
    for n in range(len(ids) + 1):
        if tokenizer.decode(ids[:n], cut=False).startswith(text):
            return n
    raise AssertionError("the text is not a prefix of the ids' text")


def test_max_completion_tokens_bounds_the_tokens_and_the_forwards(server, client):
    before = server.forwards
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                         max_completion_tokens=4, temperature=0)
    ext = out.choices[0].model_extra["unmask"]
    assert out.usage.completion_tokens <= 4 and ext["forward_passes"] <= 4
    assert server.forwards - before <= 4  # 4 masks, one step each (the old server ran 64 for this request)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                       max_completion_tokens=4, max_tokens=5)
    assert err.value.body["param"] == "max_completion_tokens"


def test_chat_logprobs_are_the_softmax_of_the_committing_forward(server, client):
    """steps=1 at temperature 0: every token is committed by one forward of prompt + masks, so each logprob is
    log softmax of that forward (recomputed here, without the server) at its position, and heads its top list."""
    messages = [{"role": "user", "content": "print"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                         top_logprobs=3, extra_body={"steps": 1})
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert b"".join(bytes(t.bytes) for t in content).decode(errors="replace") == out.choices[0].message.content
    tok = server.tokenizer
    prompt = tok.encode(tok.apply_chat_template(messages))
    with torch.no_grad():
        logits = server.model(torch.tensor([prompt + [tok.special.mask] * 6]))[0].double()  # (T, V)
    logits[:, tok.special.mask] = float("-inf")  # the sampler never draws the mask
    logp = torch.log_softmax(logits, -1)
    for k, entry in enumerate(content):
        row = logp[len(prompt) + k - 1]  # output j - 1 predicts token j
        assert entry.logprob <= 0 and entry.logprob == pytest.approx(row.max().item(), abs=1e-4)
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert tops == pytest.approx(torch.topk(row, 3).values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token and sum(math.exp(t) for t in tops) <= 1 + 1e-6


def test_completion_logprobs_in_the_legacy_shape(server, client):
    out = client.completions.create(model="tiny", prompt="import os", max_tokens=8, temperature=0.7, seed=3,
                                    logprobs=2, extra_body={"steps": 4})
    lp = out.choices[0].logprobs
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert all(v <= 0 for v in lp.token_logprobs)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert token in top and top[token] == value and len(top) <= 3  # the 2 likeliest, plus the sampled one
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    assert lp.text_offset == sorted(lp.text_offset) and (not n or lp.text_offset[0] == 0)
    streamed = [c for c in client.completions.create(model="tiny", prompt="import os", max_tokens=8, temperature=0.7,
                                                     seed=3, logprobs=2, stream=True, extra_body={"steps": 4})]
    assert streamed[-1].choices[0].logprobs.token_logprobs == lp.token_logprobs  # a stream's come at its end


def test_usage_counts_the_tokens_returned_after_a_stop_sequence(server):
    body = {"prompt": "def f(x):", "max_tokens": 24, "temperature": 0, "steps": 24}
    full = post(server, "/v1/completions", body).json()["choices"][0]["text"]
    ids = server.tokenizer.encode("def f(x):")
    region = unmask.generate(server.model, torch.tensor([ids]), max_new_tokens=24, steps=24,
                             temperature=0.0).generated[0].tolist()
    assert server.tokenizer.decode(region, cut=True) == full
    stop = next(full[k:k + 2] for k in range(len(full) // 2, len(full) - 1) if full.find(full[k:k + 2]) > 0)
    out = post(server, "/v1/completions", {**body, "stop": stop}).json()
    text = out["choices"][0]["text"]
    assert text == full[:full.find(stop)] and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == returned_count(server.tokenizer, region, text) < 24


def test_stream_options_include_usage_sends_a_last_usage_chunk(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "go"}], max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content


def test_prompt_batches_and_token_ids_give_one_choice_per_prompt_and_n(server, client):
    kw = dict(model="tiny", max_tokens=5, temperature=1.0, seed=11, n=2, extra_body={"steps": 5})
    prompts = ["def a(", "x = ["]
    batch = client.completions.create(prompt=prompts, **kw)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]  # prompt by prompt, n each (OpenAI's order)
    alone = [client.completions.create(prompt=p, **kw) for p in prompts]
    assert [c.text for c in batch.choices] == [c.text for out in alone for c in out.choices]
    assert batch.usage.prompt_tokens == sum(out.usage.prompt_tokens for out in alone)
    ids = [server.tokenizer.encode(p) for p in prompts]
    assert [c.text for c in client.completions.create(prompt=ids, **kw).choices] == [c.text for c in batch.choices]
    one = client.completions.create(prompt=ids[1], **kw)
    assert [c.text for c in one.choices] == [c.text for c in alone[1].choices]


def test_chat_content_as_text_parts_equals_the_string(client):
    kw = dict(model="tiny", max_tokens=6, temperature=0)
    parts = [{"type": "text", "text": "write "}, {"type": "text", "text": "a loop"}]
    as_parts = client.chat.completions.create(messages=[{"role": "user", "content": parts}], **kw)
    as_text = client.chat.completions.create(messages=[{"role": "user", "content": "write a loop"}], **kw)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_text.usage.prompt_tokens


def test_suffix_makes_the_completion_an_infilled_middle(server, client):
    prefix, suffix = "def f(x):\n    y = ", "\n    return y\n"
    out = client.completions.create(model="tiny", prompt=prefix, suffix=suffix, max_tokens=5, temperature=0)
    infill = post(server, "/v1/infill", {"prefix": prefix, "suffix": suffix, "max_tokens": 5, "temperature": 0})
    middle = infill.json()["choices"][0]["text"]
    text = out.choices[0].text
    assert middle.startswith(text) and out.choices[0].model_extra["unmask"]["filled"] == [middle]
    assert server.tokenizer.decode(infill.json()["choices"][0]["middle_ids"], cut=True) == text
    tok = server.tokenizer
    assert out.usage.prompt_tokens == len(tok.encode(prefix)) + len(tok.encode(suffix))  # the middle is no prompt


def test_model_by_id_and_unknown_models_are_404(server, client):
    assert client.models.retrieve("tiny").id == "tiny"
    for resp in (httpx.get(server.url + "/v1/models/gpt-4"),
                 post(server, "/v1/completions", {"model": "gpt-4", "prompt": "x", "max_tokens": 2}),
                 post(server, "/v1/chat/completions", {**CHAT, "model": "gpt-4"})):
        assert resp.status_code == 404
        error = resp.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model" and error["type"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)


def test_tokenize_version_and_metrics(server, client):
    tok = server.tokenizer
    resp = post(server, "/tokenize", {"prompt": "def f(x):"}).json()
    assert resp["tokens"] == tok.encode("def f(x):") and resp["count"] == len(resp["tokens"])
    messages = [{"role": "user", "content": "hi"}]
    chat = post(server, "/tokenize", {"messages": messages}).json()
    assert chat["count"] == client.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                                           temperature=0).usage.prompt_tokens
    assert httpx.get(server.url + "/version").json()["version"] == unmask.__version__

    def scrape():
        text = httpx.get(server.url + "/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    before = scrape()
    out = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 3, "steps": 3, "temperature": 0}).json()
    after = scrape()
    key = 'unmask_requests_total{route="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["unmask_forward_passes_total"] - before["unmask_forward_passes_total"] == (
        out["choices"][0]["unmask"]["forward_passes"])
    assert after["unmask_generated_tokens_total"] - before["unmask_generated_tokens_total"] == 3
    assert after['unmask_request_latency_seconds_count{route="/v1/completions"}'] >= 1
    assert "unmask_queue_depth" in after and "unmask_active_requests" in after


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "steps": 2}
COMPLETION = {"prompt": "x", "max_tokens": 2, "steps": 2}
REFUSED = [  # (path, extra fields, the field the 400 names)
    ("/v1/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("/v1/completions", {"frequency_penalty": -1.0}, "frequency_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"store": True}, "store"),
    ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/chat/completions", {"max_completion_tokens": 3}, "max_completion_tokens"),  # differs from max_tokens 2
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[1].type"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "1", "tool_call_id": "c"}]},
     "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a", "name": "bob"}]}, "messages[0].name"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a", "mood": "happy"}]},
     "messages[0].mood"),  # unknown, nested
    ("/v1/chat/completions", {"guided_json": {}}, "guided_json"),  # unknown
    ("/v1/completions", {"max_completion_tokens": 2}, "max_completion_tokens"),  # a chat field: unknown here
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"echo": True, "logprobs": 1}, "echo"),
    ("/v1/completions", {"prompt": [5, 100000]}, "prompt"),  # a token id outside the vocabulary
    ("/v1/infill", {"prefix": "a", "frequency_penalty": 0}, "frequency_penalty"),  # infill has no such field
]


@pytest.mark.parametrize("path, extra, param", REFUSED, ids=[r[2] for r in REFUSED])
def test_each_unsupported_field_is_a_400_that_names_it(server, path, extra, param):
    base = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION, "/v1/infill": {"prefix": "a"}}[path]
    resp = post(server, path, {**base, **extra})
    assert resp.status_code == 400, resp.text[:300]
    error = resp.json()["error"]
    assert error["param"] == param and param.split(".")[0].split("[")[0] in error["message"]
    assert error["type"] == "invalid_request_error" and "code" in error


def test_a_penalty_message_says_why_and_the_openai_client_sees_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       presence_penalty=0.5)
    assert "presence_penalty is not supported by a diffusion sampler" in err.value.body["message"]


def test_neutral_values_of_unsupported_fields_are_accepted(server):
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u-1", "seed": 1,
               "response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "store": False,
               "parallel_tool_calls": False, "metadata": {"k": "v"}, "service_tier": "auto", "modalities": ["text"],
               "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    assert post(server, "/v1/chat/completions", {**CHAT, **neutral}).status_code == 200
    legacy = {"presence_penalty": 0, "logit_bias": {}, "user": "u-1", "best_of": 1, "suffix": ""}
    assert post(server, "/v1/completions", {**COMPLETION, **legacy}).status_code == 200
