// A server-sent events parser: bytes of a text/event-stream in, the data of each event out.
// Feed it decoded text as it arrives (any split, "\n", "\r\n" or "\r" line ends); it returns the
// events completed by that piece. Comment lines (":...") and fields other than data are skipped.

export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
  }

  // text: the next piece of the stream; returns [data string, ...] for each event it completed
  feed(text) {
    this.buffer += text;
    const out = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // a lone "\r" at the end may be the first half of "\r\n": wait for the next piece
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line, out);
    }
    return out;
  }

  // the stream ended: an event without its final blank line still counts
  end() {
    const out = [];
    if (this.buffer) this.line(this.buffer, out);
    this.buffer = "";
    if (this.data.length) out.push(this.data.join("\n"));
    this.data = [];
    return out;
  }

  line(line, out) {
    if (line === "") {
      if (this.data.length) out.push(this.data.join("\n"));
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
  }
}

// An OpenAI-style stream's events as objects: {done: true} for "[DONE]", else the parsed JSON.
export function parseData(data) {
  if (data === "[DONE]") return { done: true };
  return JSON.parse(data);
}
