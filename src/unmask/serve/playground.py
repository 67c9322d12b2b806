"""The live playground page served at ``GET /playground``: one self-contained HTML string (no CDN, no fonts).

It posts to ``/v1/completions`` with ``stream`` and ``stream_canvas``, reads the Server-Sent Events with
``fetch`` and redraws the generated region after every step: masked positions as grey blocks, committed
tokens coloured by the step that committed them (early = blue, late = red). When the decode finishes it shows
the statistics and sets ``data-state="done"`` on ``<body>`` (the browser test waits for it).
``/playground?prompt=...&max_tokens=...&steps=...&autostart=1`` starts a generation on load.
"""

PLAYGROUND_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unmask playground</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
textarea{width:100%;height:90px;font-family:monospace;font-size:14px}
label{margin-right:12px;font-size:14px} input[type=number]{width:70px}
#canvas{font-family:monospace;font-size:16px;white-space:pre-wrap;background:#fff;border:1px solid #ccc;
  padding:12px;min-height:80px;margin-top:12px;line-height:1.7}
#canvas span{border-radius:3px;padding:1px 0}
.mask{background:#ddd;color:#999}
#status{margin-top:8px;font-size:14px;color:#555}
button{font-size:15px;padding:4px 16px}
</style></head>
<body data-state="idle">
<h2>unmask playground</h2>
<textarea id="prompt">def fibonacci(n):</textarea><br>
<label>max tokens <input id="max_tokens" type="number" value="32" min="1"></label>
<label>steps <input id="steps" type="number" value="32" min="1"></label>
<label>temperature <input id="temperature" type="number" value="0" min="0" step="0.1"></label>
<label>seed <input id="seed" type="number" value="0" min="0"></label>
<button id="go">Generate</button>
<div id="canvas"></div>
<div id="status">type a prompt and press Generate</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function colour(step, total) {
  const hue = 220 - 220 * (total > 1 ? step / (total - 1) : 0);  // blue (early) to red (late)
  return "hsl(" + hue.toFixed(0) + ",75%,82%)";
}
function render(canvas, stepOf, total) {
  const box = $("canvas");
  box.textContent = "";
  box.appendChild(document.createTextNode($("prompt").value));
  canvas.forEach((tok, i) => {
    const span = document.createElement("span");
    if (tok === null) { span.className = "mask"; span.textContent = "\\u2591"; }
    else { span.textContent = tok; span.style.background = colour(stepOf[i], total);
           span.title = "committed at step " + (stepOf[i] + 1); }
    box.appendChild(span);
  });
}
async function generate() {
  document.body.dataset.state = "running";
  const steps = parseInt($("steps").value, 10), maxTokens = parseInt($("max_tokens").value, 10);
  const body = {prompt: $("prompt").value, max_tokens: maxTokens, steps: steps, stream: true,
                stream_canvas: true, temperature: parseFloat($("temperature").value),
                seed: parseInt($("seed").value, 10)};
  const stepOf = [];
  let canvas = new Array(maxTokens).fill(null), text = "", last = null;
  $("status").textContent = "denoising…";
  const resp = await fetch("/v1/completions", {method: "POST", headers: {"content-type": "application/json"},
                                               body: JSON.stringify(body)});
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({error: {message: resp.statusText}}));
    $("status").textContent = "error " + resp.status + ": " + err.error.message;
    document.body.dataset.state = "error";
    return;
  }
  const reader = resp.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\\n\\n")) >= 0) {
      const line = buf.slice(0, cut).replace(/^data: /, ""); buf = buf.slice(cut + 2);
      if (line === "[DONE]") continue;
      const msg = JSON.parse(line);
      if (msg.error) { $("status").textContent = "error: " + msg.error.message; continue; }
      const choice = msg.choices[0];
      text += choice.text || "";
      const ext = choice.unmask;
      if (ext && ext.canvas) {
        for (const i of ext.committed) stepOf[i] = ext.step;
        canvas = ext.canvas;
        render(canvas, stepOf, steps);
        $("status").textContent = "step " + (ext.step + 1) + " / " + steps;
      }
      if (choice.finish_reason) last = ext;
    }
  }
  const ar = last && last.arness ? " · local AR-ness@1 " + last.arness.local["1"].toFixed(2) +
             " · global AR-ness@1 " + last.arness.global["1"].toFixed(2) : "";
  $("status").textContent = "done · " + (last ? last.forward_passes : "?") + " forward passes" + ar;
  $("status").dataset.text = text;
  document.body.dataset.state = "done";
}
$("go").addEventListener("click", () => { generate().catch((e) => {
  $("status").textContent = "error: " + e; document.body.dataset.state = "error"; }); });
const q = new URLSearchParams(location.search);
for (const k of ["prompt", "max_tokens", "steps", "temperature", "seed"]) if (q.has(k)) $(k).value = q.get(k);
if (q.get("autostart") === "1") $("go").click();
</script>
</body></html>
"""
