// How each piece of an answer was produced, from the server's opt-in `x_speculation` counts.
//
// A streamed chunk carries {draft, target, drafted, accepted, rounds}: `draft`/`target` count its
// committed tokens that were accepted drafts / the target's own. The text of the chunk is marked
// "draft" (all its tokens were accepted drafts), "target" (none was) or "mixed".

export function kindOf(counts) {
  if (!counts) return "unknown";
  const { draft = 0, target = 0 } = counts;
  if (draft > 0 && target === 0) return "draft";
  if (target > 0 && draft === 0) return "target";
  if (draft > 0 && target > 0) return "mixed";
  return "unknown";
}

// The marked runs of one text (content or reasoning): [{start, end, kind, counts}], in order.
// Counts that arrive on a chunk without text of this channel are carried to the next text piece
// (see `carry`), so every committed token is counted once.
export class MarkedText {
  constructor() {
    this.text = "";
    this.runs = [];
  }

  append(text, counts) {
    if (!text) return;
    const start = this.text.length;
    this.text += text;
    const kind = kindOf(counts);
    const last = this.runs[this.runs.length - 1];
    if (last && last.kind === kind && last.end === start && kind !== "mixed") {
      last.end = this.text.length; // one run for consecutive tokens made the same way
      last.counts = addCounts(last.counts, counts);
    } else {
      this.runs.push({ start, end: this.text.length, kind, counts: counts ? { ...counts } : null });
    }
  }
}

// Speculation figures over any number of chunks: token counts, acceptance, mean accepted length.
export class SpecTotals {
  constructor() {
    this.draft = 0;
    this.target = 0;
    this.drafted = 0;
    this.accepted = 0;
    this.rounds = 0;
  }

  add(counts) {
    if (!counts) return this;
    for (const key of ["draft", "target", "drafted", "accepted", "rounds"]) this[key] += counts[key] || 0;
    return this;
  }

  get tokens() {
    return this.draft + this.target;
  }

  // accepted / drafted (what the response's timings say: draft_n_accepted / draft_n); null: no drafts
  get acceptance() {
    return this.drafted ? this.accepted / this.drafted : null;
  }

  // tokens committed per verify round that carried drafts: 1 + accepted / rounds
  get meanAcceptedLength() {
    return this.rounds ? 1 + this.accepted / this.rounds : null;
  }
}

function addCounts(a, b) {
  if (!a || !b) return a || (b ? { ...b } : null);
  const out = { ...a };
  for (const key of Object.keys(b)) out[key] = (out[key] || 0) + b[key];
  return out;
}

// Split the source range [start, start + text.length) of one text leaf by the runs covering it:
// [{text, kind}] (kind "unknown" where no run covers it).
export function splitByRuns(text, start, runs) {
  const out = [];
  const end = start + text.length;
  let at = start;
  for (const run of runs) {
    if (run.end <= at) continue;
    if (run.start >= end) break;
    if (run.start > at) {
      out.push({ text: text.slice(at - start, run.start - start), kind: "unknown" });
      at = run.start;
    }
    const stop = Math.min(run.end, end);
    out.push({ text: text.slice(at - start, stop - start), kind: run.kind });
    at = stop;
  }
  if (at < end) out.push({ text: text.slice(at - start), kind: "unknown" });
  return out;
}
