#!/usr/bin/python3
"""`make bench`: tokenizer prompts/s, C next to Python, on one fixed corpus in one run.

C: tests/bench/bench_tok.c (tok_clip_encode, tok_t5_encode).  Python: tests/tok/clip_ref.py
(the independent CLIP tokenizer used by the tests) and python3-sentencepiece, with the same
eos/truncation/padding work.  "cold" is one pass with an empty word cache; "warm" repeats
passes with the cache filled.  Not a test: prints numbers only.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import sentencepiece as spm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tok"))

from clip_ref import ClipRef  # noqa: E402


def rate(fn, prompts, seconds):
    done, t0 = 0, time.perf_counter()
    while True:
        for p in prompts:
            fn(p)
        done += len(prompts)
        t = time.perf_counter() - t0
        if t >= seconds:
            return done / t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--c-bench", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--t5", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()

    with open(args.corpus, encoding="utf-8") as f:
        prompts = f.read().splitlines()
    c = json.loads(subprocess.run([args.c_bench, "--clip", args.clip, "--t5", args.t5,
                                   "--corpus", args.corpus, "--seconds", str(args.seconds)],
                                  stdout=subprocess.PIPE, check=True).stdout)

    ref = ClipRef(args.clip)
    py_cold = rate(ref.encode, prompts, 0.0)
    py_warm = rate(ref.encode, prompts, args.seconds)
    sp = spm.SentencePieceProcessor(model_file=args.t5)
    eos, pad = sp.eos_id(), max(sp.pad_id(), 0)

    def t5_encode(p):
        ids = sp.encode(p)
        n = len(ids) + 1
        ids = ids[:511] + [eos]
        return ids + [pad] * (512 - len(ids)), n

    py_t5 = rate(t5_encode, prompts, args.seconds)

    words = sum(len(p.split()) for p in prompts)
    print(f"corpus: {args.corpus} ({len(prompts)} prompts, {words} words); "
          f"CLIP {args.clip}; T5 {args.t5}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, single thread")
    print(f"{'tokenizer':<28}{'C prompts/s':>14}{'Python prompts/s':>18}{'C / Python':>12}")
    for name, cv, pv in (("CLIP cold (empty cache)", c["clip_cold"], py_cold),
                         ("CLIP warm", c["clip_warm"], py_warm),
                         ("T5 (SentencePiece)", c["t5"], py_t5)):
        print(f"{name:<28}{cv:>14,.0f}{pv:>18,.0f}{cv / pv:>11.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
