// Unit tests of the chat page's modules (src/gemma_mtp/server/static), run by node's test runner
// from tests/test_server_page_js.py: the SSE parser, the stream -> answer builder, the token
// marks and the Markdown renderer's escaping.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Answer } from "../../src/gemma_mtp/server/static/answer.js";
import { ApiError, ConnectionLost, streamChat } from "../../src/gemma_mtp/server/static/api.js";
import { escapeHtml, parse, safeHref, toHtml } from "../../src/gemma_mtp/server/static/markdown.js";
import { MarkedText, SpecTotals, kindOf, splitByRuns } from "../../src/gemma_mtp/server/static/marks.js";
import { SSEParser, parseData } from "../../src/gemma_mtp/server/static/sse.js";

// -- SSE ------------------------------------------------------------------------------------------
test("sse: events split anywhere, any line ending, comments and other fields skipped", () => {
  const stream = ': keep-alive\r\ndata: {"a":1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata:[DONE]\r\r';
  for (let cut = 0; cut <= stream.length; cut++) {
    const parser = new SSEParser();
    const out = [...parser.feed(stream.slice(0, cut)), ...parser.feed(stream.slice(cut)), ...parser.end()];
    assert.deepEqual(out, ['{"a":1}', "line1\nline2", "[DONE]"], `cut at ${cut}`);
  }
});

test("sse: one character at a time; an event without its blank line counts at the end", () => {
  const parser = new SSEParser();
  const out = [];
  for (const c of 'data: {"x":"a:b"}\n\ndata: tail') out.push(...parser.feed(c));
  assert.deepEqual(out, ['{"x":"a:b"}']);
  assert.deepEqual(parser.end(), ["tail"]);
  assert.deepEqual(parseData("[DONE]"), { done: true });
  assert.deepEqual(parseData('{"x":1}'), { x: 1 });
});

function sseResponse(frames, { status = 200, cut = false } = {}) {
  const text = frames.map((f) => `data: ${typeof f === "string" ? f : JSON.stringify(f)}\n\n`).join("");
  const bytes = new TextEncoder().encode(text);
  const body = new ReadableStream({
    start(controller) {
      for (let i = 0; i < bytes.length; i += 7) controller.enqueue(bytes.slice(i, i + 7)); // split mid-character too
      if (cut) controller.error(new TypeError("network error"));
      else controller.close();
    },
  });
  return new Response(body, { status, headers: { "content-type": "text/event-stream" } });
}

async function collect(gen) {
  const out = [];
  for await (const x of gen) out.push(x);
  return out;
}

test("stream: chunks until [DONE]; a mid-stream error frame, a 4xx body and a broken stream are errors", async () => {
  const chunk = { choices: [{ delta: { content: "héllo ✓" } }] };
  const ok = async () => sseResponse([chunk, "[DONE]"]);
  assert.deepEqual(await collect(streamChat("/x", {}, { fetchImpl: ok })), [chunk]);

  const midError = async () => sseResponse([chunk, { error: { code: 500, message: "boom" } }]);
  await assert.rejects(collect(streamChat("/x", {}, { fetchImpl: midError })), (e) => e instanceof ApiError && e.message === "boom");

  const tooLong = async () =>
    new Response(JSON.stringify({ error: { code: 400, message: "the prompt has 900 tokens" } }), { status: 400 });
  await assert.rejects(
    collect(streamChat("/x", {}, { fetchImpl: tooLong })),
    (e) => e instanceof ApiError && e.status === 400 && e.message === "the prompt has 900 tokens",
  );
  const down = async () => {
    throw new TypeError("fetch failed");
  };
  await assert.rejects(collect(streamChat("/x", {}, { fetchImpl: down })), (e) => e instanceof ConnectionLost);
  const broken = async () => sseResponse([chunk], { cut: true });
  await assert.rejects(collect(streamChat("/x", {}, { fetchImpl: broken })), (e) => e instanceof ConnectionLost);
  const noDone = async () => sseResponse([chunk]);
  await assert.rejects(collect(streamChat("/x", {}, { fetchImpl: noDone })), (e) => e instanceof ConnectionLost);
});

test("stream: the request is streamed, carries the key and the body", async () => {
  let seen;
  const fetchImpl = async (url, init) => {
    seen = { url, init };
    return sseResponse(["[DONE]"]);
  };
  await collect(streamChat("/v1/chat/completions", { messages: [] }, { apiKey: "k", fetchImpl }));
  assert.equal(seen.init.headers.Authorization, "Bearer k");
  assert.deepEqual(JSON.parse(seen.init.body), { messages: [], stream: true });
});

// -- marks ---------------------------------------------------------------------------------------
test("marks: a chunk's kind from its counts", () => {
  assert.equal(kindOf({ draft: 2, target: 0 }), "draft");
  assert.equal(kindOf({ draft: 0, target: 1 }), "target");
  assert.equal(kindOf({ draft: 1, target: 1 }), "mixed");
  assert.equal(kindOf({ draft: 0, target: 0 }), "unknown");
  assert.equal(kindOf(null), "unknown");
});

test("marks: runs merge consecutive tokens made the same way, and split text leaves", () => {
  const text = new MarkedText();
  text.append("Hel", { draft: 1, target: 0 });
  text.append("lo", { draft: 1, target: 0 });
  text.append(" wor", { draft: 0, target: 1 });
  text.append("ld", { draft: 1, target: 1 });
  text.append("!", null);
  assert.equal(text.text, "Hello world!");
  assert.deepEqual(
    text.runs.map((r) => [r.start, r.end, r.kind]),
    [[0, 5, "draft"], [5, 9, "target"], [9, 11, "mixed"], [11, 12, "unknown"]],
  );
  assert.deepEqual(text.runs[0].counts, { draft: 2, target: 0 });
  // a leaf "lo wo" at offset 3
  assert.deepEqual(splitByRuns("lo wo", 3, text.runs), [
    { text: "lo", kind: "draft" },
    { text: " wo", kind: "target" },
  ]);
  assert.deepEqual(splitByRuns("xy", 20, text.runs), [{ text: "xy", kind: "unknown" }]);
});

test("marks: totals give acceptance and mean accepted length as the server counts them", () => {
  const totals = new SpecTotals();
  assert.equal(totals.acceptance, null);
  totals.add({ draft: 2, target: 1, drafted: 3, accepted: 2, rounds: 1 }).add({ draft: 0, target: 1, drafted: 3, accepted: 1, rounds: 1 }).add(null);
  assert.equal(totals.tokens, 4);
  assert.equal(totals.acceptance, 3 / 6);
  assert.equal(totals.meanAcceptedLength, 1 + 3 / 2);
});

test("answer: content, reasoning, tool calls, counts carried from text-less chunks", () => {
  const a = new Answer();
  const chunk = (delta, spec, extra = {}) => ({ choices: [{ delta, finish_reason: null }], x_speculation: spec, ...extra });
  a.add(chunk({ role: "assistant", content: "" }));
  a.add(chunk({ reasoning_content: "think" }, { draft: 1, target: 0, drafted: 2, accepted: 1, rounds: 1 }));
  a.add(chunk({ content: "Hi" }, { draft: 0, target: 1, drafted: 0, accepted: 0, rounds: 0 }));
  a.add(chunk({ tool_calls: [{ index: 0, id: "c1", type: "function", function: { name: "get", arguments: '{"a":' } }] }, { draft: 1, target: 0, drafted: 2, accepted: 1, rounds: 1 }));
  a.add(chunk({ tool_calls: [{ index: 0, function: { arguments: "1}" } }] }, null));
  a.add({ choices: [{ delta: {}, finish_reason: "tool_calls" }], timings: { draft_n: 4 }, x_speculation: { draft: 0, target: 1, drafted: 0, accepted: 0, rounds: 0 } });
  a.add({ choices: [], usage: { completion_tokens: 4 } });
  assert.equal(a.reasoning.text, "think");
  assert.equal(a.content.runs[0].kind, "target");
  assert.equal(a.finishReason, "tool_calls");
  assert.equal(a.totals.tokens, 4);
  assert.equal(a.totals.drafted, 4);
  assert.deepEqual(a.usage, { completion_tokens: 4 });
  // the history gets no reasoning
  assert.deepEqual(a.message(), {
    role: "assistant",
    content: "Hi",
    tool_calls: [{ id: "c1", type: "function", function: { name: "get", arguments: '{"a":1}' } }],
  });
});

// -- Markdown, escaped ------------------------------------------------------------------------------
test("markdown: <script> and other HTML in model text is escaped, never markup", () => {
  const evil = '<script>alert("x")</script> <img src=x onerror=alert(1)> & \'q\'';
  const html = toHtml(evil);
  assert.ok(!html.includes("<script"), html);
  assert.ok(!html.includes("<img"), html);
  assert.ok(html.includes("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"), html);
  assert.ok(html.includes("&amp; &#39;q&#39;"), html);
  for (const wrapped of ["`<script>`", "**<script>**", "```\n<script>\n```", "# <script>", "- <script>", "> <script>"]) {
    const out = toHtml(wrapped);
    assert.ok(!out.includes("<script") && out.includes("&lt;script&gt;"), `${wrapped} -> ${out}`);
  }
  assert.equal(escapeHtml("<a href='x'>"), "&lt;a href=&#39;x&#39;&gt;");
});

test("markdown: only http(s) and mailto links; attribute values are escaped", () => {
  assert.equal(safeHref("javascript:alert(1)"), null);
  assert.equal(safeHref("data:text/html,x"), null);
  assert.ok(!toHtml("[x](javascript:alert(1))").includes("<a"));
  const link = toHtml('[x](https://e.com/?a="b")');
  assert.ok(link.includes('href="https://e.com/?a=&quot;b&quot;"'), link);
});

test("markdown: blocks and inline elements; text leaves are verbatim slices of the source", () => {
  const source = "# Title\n\nSome **bold** and *em*, `code`.\nNext line\n\n- one\n- two\n\n1. first\n\n```python\ndef f():\n    return 1\n```\n> quoted\n\n---";
  const html = toHtml(source);
  for (const part of ["<h1>Title</h1>", "<strong>bold</strong>", "<em>em</em>", "<code>code</code>", "<ul><li>one</li><li>two</li></ul>", "<ol><li>first</li></ol>", '<pre><code class="language-python" data-lang="python">def f():\n    return 1</code></pre>', "<blockquote>quoted</blockquote>", "<hr>"]) {
    assert.ok(html.includes(part), `${part} in ${html}`);
  }
  const leaves = [];
  const walk = (nodes) => nodes.forEach((n) => (n.type === "text" ? leaves.push(n) : walk(n.children || [])));
  walk(parse(source));
  for (const leaf of leaves) assert.equal(source.slice(leaf.start, leaf.start + leaf.text.length), leaf.text);
  assert.equal(toHtml("snake_case_name and __dunder__"), "<p>snake_case_name and __dunder__</p>");
  assert.equal(toHtml("_em_ and *em*"), "<p><em>em</em> and <em>em</em></p>");
  // a code block still streaming in (no closing fence) is a code block
  assert.ok(toHtml("```js\nlet x = 1;").includes("<pre><code"));
});

test("markdown: marks land on the rendered text, inside code blocks too", () => {
  const source = "**ab**cd\n```\nxy\n```";
  const runs = [
    { start: 2, end: 3, kind: "draft" },
    { start: 3, end: 7, kind: "target" },
    { start: 13, end: 15, kind: "draft" },
  ];
  const html = toHtml(source, runs);
  assert.ok(html.includes('<strong><span class="tok tok-draft">a</span><span class="tok tok-target">b</span></strong>'), html);
  assert.ok(html.includes('<span class="tok tok-target">c</span>d'), html);
  assert.ok(html.includes('<code><span class="tok tok-draft">xy</span></code>'), html);
});
