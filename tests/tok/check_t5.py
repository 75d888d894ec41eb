#!/usr/bin/python3
"""Checks `fluxgen tokenize` T5 ids against Debian's python3-sentencepiece.

Trains a unigram spiece.model with spm_train (T5 id layout: pad 0, eos 1, unk 2, no bos)
in --work, then compares >= 200 prompts on it, on the tiny model (--tiny) and on the real
T5 model when --real is given (with the "a photo of a cat" anchor).  Expected ids: the
SentencePiece ids, truncated to 511, then eos, padded with pad to 512; the count is the
number of pieces + 1.  Ends with "N passed, N failed".
"""

import argparse
import os
import random
import subprocess
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cases import CASES, WORDS, random_prompts, thousand_words  # noqa: E402
from check_clip import as_text, run_fluxgen_args  # noqa: E402

LENGTH = 512
ANCHOR = [3, 9, 1202, 13, 3, 9, 1712, 1]


def train(work):
    """Trains a small model on a generated corpus; returns its path."""
    os.makedirs(work, exist_ok=True)
    rng = random.Random(5)
    extra = ["café crème brûlée à la façon de São Paulo", "Ελληνικά και Русский текст",
             "中文提示词 日本語のプロンプト", "numbers 12345 67890 3.14", "it's don't we're"]
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(1500)]
    lines += extra * 20
    lines += random_prompts(1000, 3)
    with open(os.path.join(work, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    cmd = ["spm_train", "--input=corpus.txt", "--model_prefix=spiece", "--vocab_size=500",
           "--model_type=unigram", "--character_coverage=0.9995", "--pad_id=0", "--eos_id=1",
           "--unk_id=2", "--bos_id=-1", "--pad_piece=<pad>", "--eos_piece=</s>",
           "--unk_piece=<unk>", "--normalization_rule_name=nmt_nfkc",
           "--shuffle_input_sentence=false", "--num_threads=1", "--minloglevel=2", "--hard_vocab_limit=false"]
    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(work, "spiece.model")


def prompts():
    named = list(CASES)
    named.append(("truncated 1000 words", thousand_words()))
    named.append(("truncated 3000 words", " ".join([thousand_words()] * 3)))
    named += [(f"random {i}", p) for i, p in enumerate(random_prompts(200, 11))]
    return named


def check(fluxgen, model, label, real):
    sp = spm.SentencePieceProcessor(model_file=model)
    eos = sp.eos_id()
    pad = sp.pad_id() if sp.pad_id() >= 0 else 0
    cases = prompts()
    got = run_fluxgen_args(fluxgen, ["--t5", model], [p for _, p in cases])
    passed = failed = 0
    truncated = 0
    for (name, prompt), g in zip(cases, got):
        pieces = sp.encode(as_text(prompt))
        want = pieces[:LENGTH - 1] + [eos]
        want += [pad] * (LENGTH - len(want))
        want_n = len(pieces) + 1
        truncated += want_n > LENGTH
        if g["t5"] == want and g["t5_tokens"] == want_n and set(g) == {"t5", "t5_tokens"}:
            passed += 1
            continue
        failed += 1
        print(f"FAIL [{label}] {name}: {as_text(prompt)[:80]!r}")
        print(f"  got  ({g.get('t5_tokens')}): {g.get('t5')[:40]}...")
        print(f"  want ({want_n}): {want[:40]}...")
    # The rules themselves, independent of the Python side.
    for g in got:
        n = g["t5_tokens"]
        ids = g["t5"]
        ok = len(ids) == LENGTH and ids[min(n, LENGTH) - 1] == eos and all(
            x == pad for x in ids[min(n, LENGTH):]) and eos not in ids[:min(n, LENGTH) - 1]
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
        if not ok:
            print(f"FAIL [{label}] eos/pad rule: n={n} ids={ids[:20]}...")
    if truncated < 2:
        failed += 1
        print(f"FAIL [{label}] expected truncated prompts, got {truncated}")
    if real:
        g = got[0]
        if g["t5"][:8] == ANCHOR and g["t5_tokens"] == 8:
            passed += 1
        else:
            failed += 1
            print(f"FAIL [{label}] anchor: got {g['t5'][:8]}, want {ANCHOR}")
    print(f"  {label}: {len(cases)} prompts vs python3-sentencepiece: "
          f"{passed} passed, {failed} failed")
    return passed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluxgen", required=True)
    ap.add_argument("--work", required=True, help="folder for the model trained here")
    ap.add_argument("--tiny", help="the tiny model (tokenizer_2/spiece.model)")
    ap.add_argument("--real", help="the real T5 spiece.model (tests/data/t5/spiece.model)")
    args = ap.parse_args()
    p = f = 0
    runs = [(train(args.work), "spm_train model (unigram)", False)]
    if args.tiny:
        runs.append((args.tiny, "tiny model", False))
    if args.real:
        runs.append((args.real, "real model " + args.real, True))
    else:
        print("  real T5 model not given (--real): trained and tiny models only")
    for model, label, real in runs:
        a, b = check(args.fluxgen, model, label, real)
        p, f = p + a, f + b
    print(f"{p} passed, {f} failed")
    return 1 if f else 0


if __name__ == "__main__":
    sys.exit(main())
