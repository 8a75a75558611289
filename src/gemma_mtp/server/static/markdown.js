// A small, safe Markdown renderer for model output. `parse` builds a tree of plain objects whose
// text leaves are verbatim slices of the source, each with its offset (`start`), so marks made on
// the source text (marks.js) land on the rendered text. `render` turns the tree into output
// through a builder: `domBuilder(document)` makes DOM nodes (text only ever through text nodes),
// `htmlBuilder` makes an escaped HTML string (for tests). Nothing is ever parsed as HTML.
//
// Supported: paragraphs, # headings, fenced code blocks, - / 1. lists, > quotes, --- rules,
// `code`, **strong**, *em* / _em_, [links](https://...) (http, https and mailto only).

import { splitByRuns } from "./marks.js";

export function parse(source) {
  const lines = [];
  let offset = 0;
  for (const text of source.split("\n")) {
    lines.push({ text, start: offset });
    offset += text.length + 1;
  }
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const { text, start } = lines[i];
    const fence = /^\s*(```+|~~~+)\s*([\w+.#-]*)\s*$/.exec(text);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].text.trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of a block still streaming in)
      const leaf = body.length
        ? { type: "text", text: body.map((l) => l.text).join("\n"), start: body[0].start }
        : { type: "text", text: "", start };
      blocks.push({ type: "code", lang: fence[2], children: [leaf] });
      continue;
    }
    if (text.trim() === "") {
      i += 1;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(text);
    if (heading) {
      const at = start + text.length - heading[2].length;
      blocks.push({ type: "heading", level: heading[1].length, children: inline(heading[2], at) });
      i += 1;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(text)) {
      blocks.push({ type: "hr" });
      i += 1;
      continue;
    }
    const item = listItem(text);
    if (item) {
      const list = { type: "list", ordered: item.ordered, children: [] };
      while (i < lines.length) {
        const next = listItem(lines[i].text);
        if (!next || next.ordered !== list.ordered) break;
        list.children.push({ type: "item", children: inline(next.body, lines[i].start + next.at) });
        i += 1;
      }
      blocks.push(list);
      continue;
    }
    if (/^\s*>/.test(text)) {
      const children = [];
      while (i < lines.length && /^\s*>/.test(lines[i].text)) {
        const m = /^\s*>\s?/.exec(lines[i].text);
        if (children.length) children.push({ type: "text", text: "\n", start: lines[i].start - 1 });
        children.push(...inline(lines[i].text.slice(m[0].length), lines[i].start + m[0].length));
        i += 1;
      }
      blocks.push({ type: "quote", children });
      continue;
    }
    const children = [];
    while (i < lines.length && lines[i].text.trim() !== "" && !startsBlock(lines[i].text)) {
      if (children.length) children.push({ type: "text", text: "\n", start: lines[i].start - 1 });
      children.push(...inline(lines[i].text, lines[i].start));
      i += 1;
    }
    blocks.push({ type: "paragraph", children });
  }
  return blocks;
}

function listItem(text) {
  const m = /^(\s*)([-*+]|\d{1,9}[.)])\s+/.exec(text);
  if (!m) return null;
  return { ordered: /\d/.test(m[2]), body: text.slice(m[0].length), at: m[0].length };
}

function startsBlock(text) {
  return /^\s*(```|~~~)/.test(text) || /^#{1,6}\s/.test(text) || /^\s*>/.test(text) || listItem(text) !== null;
}

// `code`, **strong**, *em*, _em_ (not inside a word, so snake_case stays text), [text](href)
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|\*(?=\S)([\s\S]*?\S)\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)|\[([^\]\n]+)\]\(([^()\s]+)\)/g;

// Inline nodes of `text`, which starts at `start` in the source.
export function inline(text, start) {
  const out = [];
  let at = 0;
  INLINE.lastIndex = 0;
  const matches = [...text.matchAll(INLINE)];
  for (const m of matches) {
    if (m.index < at) continue;
    if (m.index > at) out.push({ type: "text", text: text.slice(at, m.index), start: start + at });
    const base = start + m.index;
    if (m[1]) {
      out.push({ type: "code_inline", children: [{ type: "text", text: m[2], start: base + m[1].length }] });
    } else if (m[3] !== undefined) {
      out.push({ type: "strong", children: inline(m[3], base + 2) });
    } else if (m[4] !== undefined || m[5] !== undefined) {
      out.push({ type: "em", children: inline(m[4] ?? m[5], base + 1) });
    } else {
      const href = safeHref(m[7]);
      const children = inline(m[6], base + 1);
      out.push(href ? { type: "link", href, children } : { type: "text", text: m[0], start: base });
    }
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push({ type: "text", text: text.slice(at), start: start + at });
  return out;
}

export function safeHref(href) {
  return /^(https?:\/\/|mailto:)/i.test(href) ? href : null;
}

const TAGS = { paragraph: "p", list: null, item: "li", quote: "blockquote", strong: "strong", em: "em" };

// Render a tree through `builder` ({element(tag, attrs, children), text(string)}); `runs`
// (marks.js) wrap the text they cover in <span class="tok-KIND">.
export function render(nodes, builder, runs = []) {
  return nodes.map((node) => renderNode(node, builder, runs));
}

function renderNode(node, b, runs) {
  const kids = () => render(node.children || [], b, runs);
  switch (node.type) {
    case "text":
      return b.fragment(
        splitByRuns(node.text, node.start, runs).map((piece) =>
          piece.kind === "unknown" ? b.text(piece.text) : b.element("span", { class: `tok tok-${piece.kind}` }, [b.text(piece.text)]),
        ),
      );
    case "heading":
      return b.element(`h${node.level}`, {}, kids());
    case "list":
      return b.element(node.ordered ? "ol" : "ul", {}, kids());
    case "code": {
      const attrs = node.lang ? { class: `language-${node.lang}`, "data-lang": node.lang } : {};
      return b.element("pre", {}, [b.element("code", attrs, kids())]);
    }
    case "code_inline":
      return b.element("code", {}, kids());
    case "link":
      return b.element("a", { href: node.href, rel: "noopener noreferrer nofollow", target: "_blank" }, kids());
    case "hr":
      return b.element("hr", {}, []);
    default:
      return b.element(TAGS[node.type] || "span", {}, kids());
  }
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

export const htmlBuilder = {
  text: (text) => escapeHtml(text),
  fragment: (parts) => parts.join(""),
  element(tag, attrs, children) {
    const attr = Object.entries(attrs)
      .map(([k, v]) => ` ${k}="${escapeHtml(v)}"`)
      .join("");
    return tag === "hr" ? `<hr${attr}>` : `<${tag}${attr}>${children.join("")}</${tag}>`;
  },
};

export function toHtml(source, runs = []) {
  return render(parse(source), htmlBuilder, runs).join("");
}

const ALLOWED_ATTRS = new Set(["class", "href", "rel", "target", "data-lang"]);

export function domBuilder(doc) {
  return {
    text: (text) => doc.createTextNode(text),
    fragment(parts) {
      const fragment = doc.createDocumentFragment();
      fragment.append(...parts);
      return fragment;
    },
    element(tag, attrs, children) {
      const el = doc.createElement(tag);
      for (const [k, v] of Object.entries(attrs)) if (ALLOWED_ATTRS.has(k)) el.setAttribute(k, v);
      el.append(...children);
      return el;
    },
  };
}

// Replace the children of `target` with the rendered `source`.
export function renderInto(target, source, runs = []) {
  const b = domBuilder(target.ownerDocument);
  target.replaceChildren(...render(parse(source), b, runs));
}
