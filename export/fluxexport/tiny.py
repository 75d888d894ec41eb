"""Tiny random checkpoints in the real FLUX file layouts (see tiny_main for the layout)."""

import argparse
import os
import shutil
import sys

from . import tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "data", "tiny_corpus.txt")
CLIP_MERGES = 1000
T5_PIECES = 320


def write_tokenizers(root):
    """Writes root/tokenizer (CLIP BPE) and root/tokenizer_2 (T5 spiece). Returns vocab sizes."""
    with open(CORPUS, encoding="utf-8") as f:
        lines = f.read().splitlines()
    merges = tokenizers.learn_clip_merges(lines, CLIP_MERGES)
    clip_vocab = tokenizers.write_clip_tokenizer(os.path.join(root, "tokenizer"), merges)
    tokenizers.train_t5_spiece(CORPUS, os.path.join(root, "tokenizer_2"), T5_PIECES)
    return clip_vocab, T5_PIECES


def main(cmd, argv):
    ap = argparse.ArgumentParser(prog=f"fluxexport {cmd}")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    if cmd == "tiny":
        ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if os.path.exists(args.out):
        if not args.force:
            print(f"fluxexport: '{args.out}' exists (use --force to replace it)", file=sys.stderr)
            return 1
        shutil.rmtree(args.out)
    if cmd == "tiny-tokenizers":
        write_tokenizers(args.out)
        return 0
    raise NotImplementedError
