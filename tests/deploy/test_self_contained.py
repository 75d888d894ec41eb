"""The repository explains itself: no tracked file points outside the repository, and every
relative link in README.md and docs/*.md names a file that is in it (and a heading that is
in that file, when the link names one)."""

import glob
import os
import re
import subprocess
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Names of documents and folders that live outside the repository.  Spelled in pieces so that
# this file does not match itself.
FORBIDDEN = ["../" + "shared", "DESIGN" + ".md", "STYLE" + ".md", "FLUX" + "-SPEC"]

# [text](target) in Markdown; images too.  Inline code is removed before matching.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def tracked_files():
    """What git tracks, and new files it would track (not ignored), so that a check before a
    commit sees the files that the commit will hold."""
    r = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, check=True)
    return [p for p in r.stdout.decode("utf-8").split("\0") if p]


def markdown_links(path):
    """The link targets of a Markdown file, outside code blocks and code spans."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = FENCE.sub("", text)
    text = CODE_SPAN.sub("", text)
    return LINK.findall(text)


def anchors(path):
    """The anchors of a Markdown file's headings, as GitHub makes them: lower case, spaces to
    '-', punctuation other than '-' and '_' dropped."""
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
        out.add(slug)
    return out


def is_relative(target):
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("#") \
        and not target.startswith("/")


class TestSelfContained(unittest.TestCase):
    def test_no_reference_outside(self):
        files = tracked_files()
        self.assertIn("README.md", files)
        hits = []
        for rel in files:
            path = os.path.join(ROOT, rel)
            if not os.path.isfile(path):
                continue  # deleted in the work tree
            with open(path, "rb") as f:
                data = f.read()
            for n, line in enumerate(data.split(b"\n"), 1):
                for word in FORBIDDEN:
                    if word.encode() in line:
                        hits.append(f"{rel}:{n}: {word}")
        self.assertEqual(hits, [], "files that refer outside the repository:\n" + "\n".join(hits))

    def test_relative_links_resolve(self):
        docs = [os.path.join(ROOT, "README.md")] + sorted(
            glob.glob(os.path.join(ROOT, "docs", "*.md")))
        self.assertGreater(len(docs), 1, "docs/*.md is missing")
        tracked = set(tracked_files())
        broken, seen = [], 0
        for doc in docs:
            for target in markdown_links(doc):
                if target.startswith("#"):
                    seen += 1
                    if target[1:] not in anchors(doc):
                        broken.append(f"{os.path.relpath(doc, ROOT)}: ({target}): no such heading")
                    continue
                if not is_relative(target):
                    continue
                seen += 1
                file_part = target.split("#", 1)[0]
                resolved = os.path.normpath(os.path.join(os.path.dirname(doc), file_part))
                rel = os.path.relpath(resolved, ROOT)
                inside = not rel.startswith("..")
                exists = inside and (rel in tracked or os.path.isdir(resolved)
                                     and any(t.startswith(rel + "/") for t in tracked))
                if not exists:
                    broken.append(f"{os.path.relpath(doc, ROOT)}: ({target})")
                elif "#" in target and resolved.endswith(".md"):
                    anchor = target.split("#", 1)[1]
                    if anchor not in anchors(resolved):
                        broken.append(f"{os.path.relpath(doc, ROOT)}: ({target}): no such heading")
        self.assertGreater(seen, 0, "no relative links found: the link pattern is wrong")
        self.assertEqual(broken, [], "links to files not in the repository:\n" + "\n".join(broken))

    def test_link_pattern(self):
        # the checker itself: a link in prose counts, one in code does not
        text = "see [the API](docs/api.md#errors) and `[x](nowhere.md)`"
        self.assertEqual(LINK.findall(CODE_SPAN.sub("", text)), ["docs/api.md#errors"])
        self.assertFalse(is_relative("https://example.org/x.md"))
        self.assertFalse(is_relative("#errors"))
        self.assertIn("the-c-plugins", anchors(os.path.join(ROOT, "docs", "architecture.md")))
        self.assertTrue(is_relative("../README.md"))


if __name__ == "__main__":
    unittest.main()
