// One streamed answer, built chunk by chunk: content and reasoning text with their speculation
// marks, tool calls (merged by index), the speculation totals, finish reason, timings and usage.

import { MarkedText, SpecTotals } from "./marks.js";

export class Answer {
  constructor() {
    this.content = new MarkedText();
    this.reasoning = new MarkedText();
    this.toolCalls = [];
    this.totals = new SpecTotals();
    this.finishReason = null;
    this.timings = null;
    this.usage = null;
    this.pending = null; // counts of a chunk without text, carried to the next text
  }

  // one chunk object of a chat.completion.chunk stream
  add(chunk) {
    const spec = chunk.x_speculation || null;
    this.totals.add(spec);
    if (chunk.usage) this.usage = chunk.usage;
    if (chunk.timings) this.timings = chunk.timings;
    const choice = (chunk.choices || [])[0];
    if (!choice) return;
    if (choice.finish_reason) this.finishReason = choice.finish_reason;
    const delta = choice.delta || {};
    const counts = merge(this.pending, spec);
    this.pending = null;
    if (delta.reasoning_content) this.reasoning.append(delta.reasoning_content, counts);
    else if (delta.content) this.content.append(delta.content, counts);
    else if (delta.tool_calls) this.addToolCalls(delta.tool_calls);
    else this.pending = counts;
  }

  addToolCalls(calls) {
    for (const call of calls) {
      const index = call.index ?? this.toolCalls.length;
      const known = this.toolCalls[index] || (this.toolCalls[index] = { id: call.id, type: "function", function: { name: "", arguments: "" } });
      if (call.id) known.id = call.id;
      const fn = call.function || {};
      if (fn.name) known.function.name += fn.name;
      if (fn.arguments) known.function.arguments += fn.arguments;
    }
  }

  // what goes back into the conversation: no reasoning (as the API's own history rule)
  message() {
    const message = { role: "assistant", content: this.content.text };
    if (this.toolCalls.length) message.tool_calls = this.toolCalls.filter(Boolean);
    return message;
  }
}

function merge(a, b) {
  if (!a) return b;
  if (!b) return a;
  const out = { ...a };
  for (const key of Object.keys(b)) out[key] = (out[key] || 0) + b[key];
  return out;
}
