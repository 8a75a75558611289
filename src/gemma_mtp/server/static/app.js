// The chat page: conversation, streaming, speculation figures, errors. DOM wiring only; the
// logic lives in answer.js (stream -> answer), marks.js, markdown.js, sse.js and api.js.

import { Answer } from "./answer.js";
import { ApiError, ConnectionLost, getJson, streamChat } from "./api.js";
import { SpecTotals } from "./marks.js";
import { renderInto } from "./markdown.js";

const KEY_STORAGE = "gemma-mtp:api-key";
const $ = (id) => document.getElementById(id);

const state = {
  history: [], // [{message, el}] : what is sent back (assistant messages without reasoning)
  controller: null,
  since: { totals: new SpecTotals(), ms: 0 },
  retry: null, // what the Retry button does
  onKey: null, // what to do once a key is given
};

function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

// -- errors and the API key ---------------------------------------------------------------------
function showError(text, retry = null) {
  $("error-text").textContent = text;
  $("retry").hidden = !retry;
  state.retry = retry;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  state.retry = null;
}

function askForKey(refused, then) {
  $("key-reason").textContent = refused
    ? "The server refused this API key; enter the one given to `serve --api-key`."
    : "This server needs an API key (the one given to `serve --api-key`).";
  $("key-dialog").hidden = false;
  $("key-input").focus();
  state.onKey = then;
}

function saveKey() {
  const key = $("key-input").value.trim();
  if (!key) return;
  try {
    localStorage.setItem(KEY_STORAGE, key);
  } catch {
    showError("this browser does not allow localStorage; the key cannot be kept");
    return;
  }
  $("key-input").value = "";
  $("key-dialog").hidden = true;
  const then = state.onKey;
  state.onKey = null;
  if (then) then();
}

// the action an error leaves the person: key, retry, or the server's message
function handleError(err, retry) {
  if (err instanceof ApiError && err.status === 401) {
    const refused = Boolean(apiKey());
    if (refused) localStorage.removeItem(KEY_STORAGE);
    askForKey(refused, retry);
    return "the server asks for an API key";
  }
  if (err instanceof ApiError) {
    showError(`The server answered ${err.status}: ${err.message}`, retry);
    return err.message;
  }
  if (err instanceof ConnectionLost) {
    showError(`Lost the connection to the server (${err.message}). Is it still running?`, retry);
    return err.message;
  }
  showError(`Unexpected error: ${err && err.message ? err.message : err}`, retry);
  return String(err);
}

// -- the model ------------------------------------------------------------------------------------
async function loadModel() {
  try {
    const models = await getJson("/v1/models", { apiKey: apiKey() });
    const model = models.data[0];
    const meta = model.meta || {};
    $("model").textContent = `${model.id} · ${meta.n_slots ?? "?"} slots · ctx ${meta.n_ctx_slot ?? "?"} · default speculation: ${meta.speculative ?? "?"}`;
    const select = $("spec-type");
    for (const kind of [...(meta.drafters || []), "ngram"]) {
      if ([...select.options].some((o) => o.value === kind)) continue;
      const option = document.createElement("option");
      option.value = option.textContent = kind;
      select.append(option);
    }
    if (meta.speculative === "none") $("spec-enabled").checked = false;
    clearError();
  } catch (err) {
    $("model").textContent = "not connected";
    handleError(err, loadModel);
  }
}

// -- messages ---------------------------------------------------------------------------------------
function messageElement(role) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "assistant" ? "model" : role;
  el.append(label);
  if (role === "assistant") {
    const thinking = document.createElement("details");
    thinking.className = "thinking";
    thinking.hidden = true;
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    const text = document.createElement("div");
    text.className = "thinking-text";
    thinking.append(summary, text);
    el.append(thinking);
  }
  const content = document.createElement("div");
  content.className = "content";
  el.append(content);
  if (role === "assistant") {
    for (const name of ["tool-calls", "msg-stats"]) {
      const part = document.createElement("div");
      part.className = name;
      el.append(part);
    }
  }
  $("messages").append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function renderAnswer(el, answer) {
  renderInto(el.querySelector(".content"), answer.content.text, answer.content.runs);
  const thinking = el.querySelector(".thinking");
  if (answer.reasoning.text) {
    thinking.hidden = false;
    renderInto(thinking.querySelector(".thinking-text"), answer.reasoning.text, answer.reasoning.runs);
  }
  const calls = el.querySelector(".tool-calls");
  calls.replaceChildren(
    ...answer.toolCalls.filter(Boolean).map((call) => {
      const box = document.createElement("div");
      box.className = "tool-call";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = `call ${call.function.name}`;
      box.append(name, document.createTextNode(`(${call.function.arguments})`));
      return box;
    }),
  );
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("regenerate").disabled = busy || !state.history.some((h) => h.message.role === "assistant");
}

// -- figures ----------------------------------------------------------------------------------------
function pct(x) {
  return x === null ? "–" : `${(100 * x).toFixed(1)}%`;
}

function showStats(id, totals, ms, finalTps = null) {
  const box = $(id);
  const set = (name, text) => {
    box.querySelector(`[data-stat="${name}"]`).textContent = text;
  };
  set("tokens", String(totals.tokens));
  const tps = finalTps ?? (ms > 0 ? (totals.tokens / ms) * 1000 : null);
  set("tps", tps === null ? "–" : tps.toFixed(1));
  const acc = box.querySelector('[data-stat="acceptance"]');
  acc.textContent = `${pct(totals.acceptance)} (${totals.accepted}/${totals.drafted})`;
  acc.dataset.accepted = totals.accepted;
  acc.dataset.drafted = totals.drafted;
  const mal = totals.meanAcceptedLength;
  set("mal", mal === null ? "–" : mal.toFixed(2));
  box.querySelector('[data-stat="mal"]').dataset.rounds = totals.rounds;
  set("from-draft", totals.tokens ? `${totals.draft}/${totals.tokens}` : "–");
}

// -- a request --------------------------------------------------------------------------------------
function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history.map((h) => h.message));
  const body = { messages, return_speculation: true, stream_options: { include_usage: true } };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  if (!$("spec-enabled").checked) {
    body.speculative = { enabled: false };
  } else {
    const spec = {};
    if ($("spec-type").value) spec.type = $("spec-type").value;
    const nMax = parseInt($("n-max").value, 10);
    if (!Number.isNaN(nMax)) spec.n_max = nMax;
    const pMin = parseFloat($("p-min").value);
    if (!Number.isNaN(pMin)) spec.p_min = pMin;
    if (Object.keys(spec).length) body.speculative = spec;
  }
  if ($("thinking").checked) body.chat_template_kwargs = { enable_thinking: true };
  const tools = $("tools").value.trim();
  if (tools) body.tools = JSON.parse(tools);
  return body;
}

async function generate() {
  clearError();
  let body;
  try {
    body = requestBody();
  } catch (err) {
    showError(`The tools field is not valid JSON: ${err.message}`);
    return;
  }
  const el = messageElement("assistant");
  const answer = new Answer();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let first = null;
  let frame = 0;
  const draw = () => {
    frame = 0;
    renderAnswer(el, answer);
    showStats("stats-answer", answer.totals, first === null ? 0 : performance.now() - first);
    el.scrollIntoView({ block: "end" });
  };
  try {
    for await (const chunk of streamChat("/v1/chat/completions", body, { apiKey: apiKey(), signal: controller.signal })) {
      if (first === null && chunk.x_speculation) first = performance.now();
      answer.add(chunk);
      if (!frame) frame = requestAnimationFrame(draw);
    }
    if (frame) cancelAnimationFrame(frame);
    draw();
    const ms = first === null ? 0 : performance.now() - first;
    const tps = answer.timings ? answer.timings.predicted_per_second : null;
    showStats("stats-answer", answer.totals, ms, tps);
    state.since.totals.add(answer.totals);
    state.since.ms += ms;
    showStats("stats-total", state.since.totals, state.since.ms);
    const t = answer.timings || {};
    el.querySelector(".msg-stats").textContent =
      `${answer.usage ? answer.usage.completion_tokens : answer.totals.tokens} tokens · ${tps ? tps.toFixed(1) : "–"} tokens/s · ` +
      `drafts accepted ${t.draft_n_accepted ?? 0}/${t.draft_n ?? 0} · finish: ${answer.finishReason}`;
    el.dataset.finish = answer.finishReason || "";
    state.history.push({ message: answer.message(), el });
  } catch (err) {
    if (frame) cancelAnimationFrame(frame);
    if (controller.signal.aborted) {
      renderAnswer(el, answer);
      el.querySelector(".msg-stats").textContent = "stopped";
      el.dataset.finish = "stopped";
      if (answer.content.text || answer.toolCalls.length) state.history.push({ message: answer.message(), el });
      else el.remove();
    } else {
      el.remove();
      handleError(err, generate);
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function send() {
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  $("input").value = "";
  const el = messageElement("user");
  el.querySelector(".content").textContent = text;
  state.history.push({ message: { role: "user", content: text }, el });
  generate();
}

function regenerate() {
  if (state.controller) return;
  const last = state.history[state.history.length - 1];
  if (!last || last.message.role !== "assistant") return;
  state.history.pop();
  last.el.remove();
  generate();
}

function clearConversation() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  clearError();
  setBusy(false);
}

$("send").addEventListener("click", send);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("regenerate").addEventListener("click", regenerate);
$("clear").addEventListener("click", clearConversation);
$("retry").addEventListener("click", () => {
  const retry = state.retry;
  clearError();
  if (retry) retry();
});
$("error-close").addEventListener("click", clearError);
$("key-save").addEventListener("click", saveKey);
$("key-input").addEventListener("keydown", (e) => e.key === "Enter" && saveKey());
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    send();
  }
});
$("show-marks").addEventListener("change", (e) => document.body.classList.toggle("marks", e.target.checked));
document.body.dataset.ready = "1";
loadModel();
