"""An independent CLIP BPE tokenizer in Python, the reference for the C one.

Written from the format facts (docs/numerics.md), not from a published tokenizer:
clean (html.unescape twice, strip, collapse white space, lower), split with the CLIP
pattern, map bytes to the printable stand-ins, merge by rank with "</w>" on the last
symbol, then bos + 75 tokens + eos, padded with eos to 77.
Uses Debian's python3-regex for \\p{L} / \\p{N}.
"""

import html
import json
import os

import regex

PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE)
SPACES = regex.compile(r"\s+")
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
LENGTH = 77


def byte_table():
    """bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest get 256+."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, spare = {}, 256
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(spare)
            spare += 1
    return table


class ClipRef:
    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[0].startswith("#"):
            lines = lines[1:]
        pairs = [tuple(ln.split(" ")) for ln in lines if ln]
        self.rank = {}
        for r, p in enumerate(pairs[:48894]):
            self.rank[p] = r
        self.bytes = byte_table()
        self.bos = self.vocab["<|startoftext|>"]
        self.eos = self.vocab["<|endoftext|>"]
        self.memo = {}

    @staticmethod
    def clean(text):
        text = html.unescape(html.unescape(text)).strip()
        return SPACES.sub(" ", text).strip().lower()

    def merge(self, piece):
        """BPE of one pre-token (a str of byte stand-ins): list of symbol strings."""
        syms = list(piece)
        syms[-1] += "</w>"
        while len(syms) > 1:
            best, best_rank = None, None
            for a, b in zip(syms, syms[1:]):
                r = self.rank.get((a, b))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (a, b), r
            if best is None:
                break
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == best[0] and syms[i + 1] == best[1]:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        return syms

    def tokens(self, text):
        ids = []
        for piece in PATTERN.findall(self.clean(text)):
            if piece in SPECIALS:
                ids.append(self.vocab[piece])
                continue
            mapped = "".join(self.bytes[b] for b in piece.encode("utf-8"))
            got = self.memo.get(mapped)
            if got is None:
                got = [self.vocab[s] for s in self.merge(mapped)]
                if len(mapped) <= 64:
                    self.memo[mapped] = got
            ids.extend(got)
        return ids

    def encode(self, text):
        """(77 ids, length before truncation with bos/eos)."""
        toks = self.tokens(text)
        ids = [self.bos] + toks[:LENGTH - 2] + [self.eos]
        return ids + [self.eos] * (LENGTH - len(ids)), len(toks) + 2
