"""A small Markdown renderer in pure Python: the work the example plugin caches.

It covers what READMEs use: ATX headings (with ids), paragraphs, emphasis, inline code, links,
images, autolinks, fenced code blocks, block quotes, nested lists, tables, rules and hard line
breaks. `guest/js/example/markdown.js` is the same renderer line for line, and both give the
same HTML for the same input.
"""

import re

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([A-Za-z0-9_+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
RULE = re.compile(r"^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$")
QUOTE = re.compile(r"^ {0,3}> ?(.*)$")
ITEM = re.compile(r"^( *)([-*+]|[0-9]{1,9}[.)])(?:[ \t]+(.*))?$")
TABLE_RULE = re.compile(r"^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$")
BLANK = re.compile(r"^[ \t]*$")

CODE_SPAN = re.compile(r"(`+)(.+?)\1")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^()\s]+)\)")
LINK = re.compile(r"\[([^\]]+)\]\(([^()\s]+)\)")
AUTOLINK = re.compile(r"&lt;(https?://[^\s&]+)&gt;")
STRONG = re.compile(r"\*\*(?=\S)(.+?)\*\*|__(?=\S)(.+?)__")
EMPHASIS = re.compile(r"\*(?=[^\s*])(.+?)\*|(?<![A-Za-z0-9])_(?=[^\s_])(.+?)_(?![A-Za-z0-9])")
HARD_BREAK = re.compile(r" {2,}\n")
TAG = re.compile(r"<[^>]*>")
NOT_SLUG = re.compile(r"[^a-z0-9 _-]")


def ordered_marker(marker):
    return marker[0] in "0123456789"


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def inline(text):
    """Renders the inline Markdown of one block (its lines joined with newlines)."""
    out = []
    pos = 0
    for span in CODE_SPAN.finditer(text):
        out.append(inline_text(text[pos : span.start()]))
        out.append("<code>" + escape(span.group(2).strip()) + "</code>")
        pos = span.end()
    out.append(inline_text(text[pos:]))
    return "".join(out)


def inline_text(text):
    text = escape(text)
    text = IMAGE.sub(lambda m: '<img src="' + m.group(2) + '" alt="' + m.group(1) + '">', text)
    text = LINK.sub(lambda m: '<a href="' + m.group(2) + '">' + m.group(1) + "</a>", text)
    text = AUTOLINK.sub(lambda m: '<a href="' + m.group(1) + '">' + m.group(1) + "</a>", text)
    text = STRONG.sub(lambda m: "<strong>" + (m.group(1) or m.group(2)) + "</strong>", text)
    text = EMPHASIS.sub(lambda m: "<em>" + (m.group(1) or m.group(2)) + "</em>", text)
    return HARD_BREAK.sub("<br>\n", text)


def cells(line):
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [cell.strip() for cell in line.split("|")]


class Renderer:
    def __init__(self):
        self.slugs = {}

    def slug(self, html):
        base = NOT_SLUG.sub("", TAG.sub("", html).lower()).strip().replace(" ", "-") or "section"
        count = self.slugs.get(base, 0)
        self.slugs[base] = count + 1
        return base if count == 0 else base + "-" + str(count)

    def blocks(self, lines, tight=False):
        """Renders a list of lines; `tight` leaves paragraphs unwrapped (inside list items)."""
        out = []
        i = 0
        n = len(lines)
        while i < n:
            line = lines[i]
            if BLANK.match(line):
                i += 1
                continue
            fence = FENCE.match(line)
            if fence:
                marker = fence.group(1)
                language = fence.group(2)
                body = []
                i += 1
                while i < n and not lines[i].strip().startswith(marker):
                    body.append(lines[i])
                    i += 1
                i += 1
                attr = ' class="language-' + escape(language) + '"' if language else ""
                code = "".join(escape(b) + "\n" for b in body)
                out.append("<pre><code" + attr + ">" + code + "</code></pre>")
                continue
            heading = HEADING.match(line)
            if heading:
                level = str(len(heading.group(1)))
                html = inline(heading.group(2) or "")
                out.append("<h" + level + ' id="' + self.slug(html) + '">' + html + "</h" + level + ">")
                i += 1
                continue
            if RULE.match(line):
                out.append("<hr>")
                i += 1
                continue
            if QUOTE.match(line):
                quoted = []
                while i < n and not BLANK.match(lines[i]):
                    m = QUOTE.match(lines[i])
                    quoted.append(m.group(1) if m else lines[i])
                    i += 1
                out.append("<blockquote>\n" + self.blocks(quoted) + "\n</blockquote>")
                continue
            item = ITEM.match(line)
            if item:
                i = self.list(lines, i, out)
                continue
            if "|" in line and i + 1 < n and TABLE_RULE.match(lines[i + 1]) and "-" in lines[i + 1]:
                i = self.table(lines, i, out)
                continue
            para = []
            while i < n and not BLANK.match(lines[i]) and not self.interrupts(lines[i]):
                para.append(lines[i].strip() if not para else lines[i].lstrip())
                i += 1
            if not para:  # a line no block takes: keep it as text
                para.append(lines[i].strip())
                i += 1
            text = inline("\n".join(para).rstrip())
            out.append(text if tight else "<p>" + text + "</p>")
        return "\n".join(out)

    def interrupts(self, line):
        return bool(FENCE.match(line) or HEADING.match(line) or RULE.match(line) or QUOTE.match(line) or ITEM.match(line))

    def list(self, lines, i, out):
        first = ITEM.match(lines[i])
        indent = len(first.group(1))
        ordered = ordered_marker(first.group(2))
        items = []
        loose = False
        n = len(lines)
        while i < n:
            m = ITEM.match(lines[i])
            if not m or len(m.group(1)) != indent or ordered_marker(m.group(2)) != ordered:
                break
            width = len(m.group(1)) + len(m.group(2)) + 1
            body = [m.group(3) or ""]
            i += 1
            while i < n:
                line = lines[i]
                if BLANK.match(line):
                    # A blank line ends the item unless indented content follows it.
                    if i + 1 < n and lines[i + 1].startswith(" " * width) and not BLANK.match(lines[i + 1]):
                        loose = True
                        body.append("")
                        i += 1
                        continue
                    break
                lead = len(line) - len(line.lstrip(" "))
                if lead >= width:
                    body.append(line[width:])
                elif lead <= indent and self.interrupts(line):
                    break
                else:
                    body.append(line.strip())
                i += 1
            items.append(body)
            if i < n and BLANK.match(lines[i]) and i + 1 < n:
                nxt = ITEM.match(lines[i + 1])
                if nxt and len(nxt.group(1)) == indent and ordered_marker(nxt.group(2)) == ordered:
                    loose = True
                    i += 1
        tag = "ol" if ordered else "ul"
        start = int(first.group(2)[:-1]) if ordered else 1
        attrs = ' start="' + str(start) + '"' if ordered and start != 1 else ""
        html = ["<" + tag + attrs + ">"]
        for body in items:
            html.append("<li>" + self.blocks(body, tight=not loose) + "</li>")
        html.append("</" + tag + ">")
        out.append("\n".join(html))
        return i

    def table(self, lines, i, out):
        head = cells(lines[i])
        aligns = []
        for spec in cells(lines[i + 1]):
            if spec.startswith(":") and spec.endswith(":"):
                aligns.append(' style="text-align:center"')
            elif spec.endswith(":"):
                aligns.append(' style="text-align:right"')
            elif spec.startswith(":"):
                aligns.append(' style="text-align:left"')
            else:
                aligns.append("")
        i += 2
        rows = []
        while i < len(lines) and "|" in lines[i] and not BLANK.match(lines[i]):
            rows.append(cells(lines[i]))
            i += 1

        def row(values, tag):
            parts = []
            for k, align in enumerate(aligns):
                value = values[k] if k < len(values) else ""
                parts.append("<" + tag + align + ">" + inline(value) + "</" + tag + ">")
            return "<tr>" + "".join(parts) + "</tr>"

        html = ["<table>", "<thead>", row(head, "th"), "</thead>"]
        if rows:
            html.append("<tbody>")
            html.extend(row(r, "td") for r in rows)
            html.append("</tbody>")
        html.append("</table>")
        out.append("\n".join(html))
        return i


def render(source):
    """Renders Markdown text to HTML (ending with a newline)."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ").split("\n")
    html = Renderer().blocks(lines)
    return html + "\n" if html else ""
