// A small Markdown renderer in plain JavaScript: the work the example plugin caches.
//
// It covers what READMEs use: ATX headings (with ids), paragraphs, emphasis, inline code, links,
// images, autolinks, fenced code blocks, block quotes, nested lists, tables, rules and hard line
// breaks. `guest/python/example/markdown.py` is the same renderer line for line, and both give the
// same HTML for the same input (the end-to-end tests check both against one expected page).

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([A-Za-z0-9_+-]*)/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|[0-9]{1,9}[.)])(?:[ \t]+(.*))?$/;
const TABLE_RULE = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;
const BLANK = /^[ \t]*$/;

const CODE_SPAN = /(`+)(.+?)\1/g;
const IMAGE = /!\[([^\]]*)\]\(([^()\s]+)\)/g;
const LINK = /\[([^\]]+)\]\(([^()\s]+)\)/g;
const AUTOLINK = /&lt;(https?:\/\/[^\s&]+)&gt;/g;
const STRONG = /\*\*(?=\S)(.+?)\*\*|__(?=\S)(.+?)__/g;
const EMPHASIS = /\*(?=[^\s*])(.+?)\*|(?<![A-Za-z0-9])_(?=[^\s_])(.+?)_(?![A-Za-z0-9])/g;
const HARD_BREAK = / {2,}\n/g;
const TAG = /<[^>]*>/g;
const NOT_SLUG = /[^a-z0-9 _-]/g;

function orderedMarker(marker) {
  return "0123456789".includes(marker[0]);
}

function escape(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

// Renders the inline Markdown of one block (its lines joined with newlines).
function inline(text) {
  const out = [];
  let pos = 0;
  for (const span of text.matchAll(CODE_SPAN)) {
    out.push(inlineText(text.slice(pos, span.index)));
    out.push("<code>" + escape(span[2].trim()) + "</code>");
    pos = span.index + span[0].length;
  }
  out.push(inlineText(text.slice(pos)));
  return out.join("");
}

function inlineText(text) {
  text = escape(text);
  text = text.replace(IMAGE, (_, alt, src) => '<img src="' + src + '" alt="' + alt + '">');
  text = text.replace(LINK, (_, label, href) => '<a href="' + href + '">' + label + "</a>");
  text = text.replace(AUTOLINK, (_, url) => '<a href="' + url + '">' + url + "</a>");
  text = text.replace(STRONG, (_, a, b) => "<strong>" + (a || b) + "</strong>");
  text = text.replace(EMPHASIS, (_, a, b) => "<em>" + (a || b) + "</em>");
  return text.replace(HARD_BREAK, "<br>\n");
}

function cells(line) {
  line = line.trim();
  if (line.startsWith("|")) line = line.slice(1);
  if (line.endsWith("|")) line = line.slice(0, -1);
  return line.split("|").map((cell) => cell.trim());
}

function leadingSpaces(line) {
  return line.length - line.replace(/^ +/, "").length;
}

class Renderer {
  constructor() {
    this.slugs = new Map();
  }

  slug(html) {
    const base = html.replace(TAG, "").toLowerCase().replace(NOT_SLUG, "").trim().replace(/ /g, "-") || "section";
    const count = this.slugs.get(base) || 0;
    this.slugs.set(base, count + 1);
    return count === 0 ? base : base + "-" + String(count);
  }

  // Renders a list of lines; `tight` leaves paragraphs unwrapped (inside list items).
  blocks(lines, tight = false) {
    const out = [];
    let i = 0;
    const n = lines.length;
    while (i < n) {
      const line = lines[i];
      if (BLANK.test(line)) {
        i += 1;
        continue;
      }
      const fence = FENCE.exec(line);
      if (fence) {
        const marker = fence[1];
        const language = fence[2];
        const body = [];
        i += 1;
        while (i < n && !lines[i].trim().startsWith(marker)) {
          body.push(lines[i]);
          i += 1;
        }
        i += 1;
        const attr = language ? ' class="language-' + escape(language) + '"' : "";
        const code = body.map((b) => escape(b) + "\n").join("");
        out.push("<pre><code" + attr + ">" + code + "</code></pre>");
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        const level = String(heading[1].length);
        const html = inline(heading[2] || "");
        out.push("<h" + level + ' id="' + this.slug(html) + '">' + html + "</h" + level + ">");
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        out.push("<hr>");
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < n && !BLANK.test(lines[i])) {
          const m = QUOTE.exec(lines[i]);
          quoted.push(m ? m[1] : lines[i]);
          i += 1;
        }
        out.push("<blockquote>\n" + this.blocks(quoted) + "\n</blockquote>");
        continue;
      }
      if (ITEM.test(line)) {
        i = this.list(lines, i, out);
        continue;
      }
      if (line.includes("|") && i + 1 < n && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        i = this.table(lines, i, out);
        continue;
      }
      const para = [];
      while (i < n && !BLANK.test(lines[i]) && !this.interrupts(lines[i])) {
        para.push(para.length === 0 ? lines[i].trim() : lines[i].trimStart());
        i += 1;
      }
      if (para.length === 0) {
        // a line no block takes: keep it as text
        para.push(lines[i].trim());
        i += 1;
      }
      const text = inline(para.join("\n").trimEnd());
      out.push(tight ? text : "<p>" + text + "</p>");
    }
    return out.join("\n");
  }

  interrupts(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
  }

  list(lines, i, out) {
    const first = ITEM.exec(lines[i]);
    const indent = first[1].length;
    const ordered = orderedMarker(first[2]);
    const items = [];
    let loose = false;
    const n = lines.length;
    while (i < n) {
      const m = ITEM.exec(lines[i]);
      if (!m || m[1].length !== indent || orderedMarker(m[2]) !== ordered) break;
      const width = m[1].length + m[2].length + 1;
      const body = [m[3] || ""];
      i += 1;
      while (i < n) {
        const line = lines[i];
        if (BLANK.test(line)) {
          // A blank line ends the item unless indented content follows it.
          if (i + 1 < n && lines[i + 1].startsWith(" ".repeat(width)) && !BLANK.test(lines[i + 1])) {
            loose = true;
            body.push("");
            i += 1;
            continue;
          }
          break;
        }
        const lead = leadingSpaces(line);
        if (lead >= width) {
          body.push(line.slice(width));
        } else if (lead <= indent && this.interrupts(line)) {
          break;
        } else {
          body.push(line.trim());
        }
        i += 1;
      }
      items.push(body);
      if (i < n && BLANK.test(lines[i]) && i + 1 < n) {
        const next = ITEM.exec(lines[i + 1]);
        if (next && next[1].length === indent && orderedMarker(next[2]) === ordered) {
          loose = true;
          i += 1;
        }
      }
    }
    const tag = ordered ? "ol" : "ul";
    const start = ordered ? parseInt(first[2].slice(0, -1), 10) : 1;
    const attrs = ordered && start !== 1 ? ' start="' + String(start) + '"' : "";
    const html = ["<" + tag + attrs + ">"];
    for (const body of items) {
      html.push("<li>" + this.blocks(body, !loose) + "</li>");
    }
    html.push("</" + tag + ">");
    out.push(html.join("\n"));
    return i;
  }

  table(lines, i, out) {
    const head = cells(lines[i]);
    const aligns = cells(lines[i + 1]).map((spec) => {
      if (spec.startsWith(":") && spec.endsWith(":")) return ' style="text-align:center"';
      if (spec.endsWith(":")) return ' style="text-align:right"';
      if (spec.startsWith(":")) return ' style="text-align:left"';
      return "";
    });
    i += 2;
    const rows = [];
    while (i < lines.length && lines[i].includes("|") && !BLANK.test(lines[i])) {
      rows.push(cells(lines[i]));
      i += 1;
    }
    const row = (values, tag) =>
      "<tr>" +
      aligns.map((align, k) => "<" + tag + align + ">" + inline(k < values.length ? values[k] : "") + "</" + tag + ">").join("") +
      "</tr>";
    const html = ["<table>", "<thead>", row(head, "th"), "</thead>"];
    if (rows.length > 0) {
      html.push("<tbody>");
      for (const r of rows) html.push(row(r, "td"));
      html.push("</tbody>");
    }
    html.push("</table>");
    out.push(html.join("\n"));
    return i;
  }
}

// Renders Markdown text to HTML (ending with a newline).
export function render(source) {
  const lines = source.replace(/\r\n/g, "\n").replace(/\r/g, "\n").replace(/\t/g, "    ").split("\n");
  const html = new Renderer().blocks(lines);
  return html ? html + "\n" : "";
}
