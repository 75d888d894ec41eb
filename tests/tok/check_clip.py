#!/usr/bin/python3
"""Checks `fluxgen tokenize` CLIP ids against the independent Python tokenizer (clip_ref.py).

Runs the named cases of cases.py plus generated prompts through `fluxgen tokenize --stdin`
(multi-line prompts through --prompt), on the real vocabulary when --real is given (with
the "a photo of a cat" anchor) and on the tiny vocabulary always.
Prints every mismatch with both id lists and ends with "N passed, N failed".
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cases import CASES, random_prompts  # noqa: E402
from clip_ref import ClipRef  # noqa: E402

ANCHOR = [49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70


def as_bytes(p):
    return p if isinstance(p, bytes) else p.encode("utf-8")


def as_text(p):
    # The C side replaces invalid UTF-8 with U+FFFD per maximal subpart, as Python does.
    return p.decode("utf-8", "replace") if isinstance(p, bytes) else p


def run_fluxgen(fluxgen, folder, prompts):
    return run_fluxgen_args(fluxgen, ["--clip", folder], prompts)


def run_fluxgen_args(fluxgen, tok_args, prompts):
    """Runs `fluxgen tokenize TOK_ARGS`; returns one parsed JSON object per prompt."""
    results = [None] * len(prompts)
    one_line = [i for i, p in enumerate(prompts)
                if b"\n" not in as_bytes(p) and b"\r" not in as_bytes(p)]
    data = b"".join(as_bytes(prompts[i]) + b"\n" for i in one_line)
    out = subprocess.run([fluxgen, "tokenize"] + tok_args + ["--stdin"], input=data,
                         stdout=subprocess.PIPE, check=True).stdout.decode().splitlines()
    if len(out) != len(one_line):
        raise SystemExit(f"fluxgen printed {len(out)} lines for {len(one_line)} prompts")
    for i, line in zip(one_line, out):
        results[i] = json.loads(line)
    for i, p in enumerate(prompts):
        if results[i] is None:
            out = subprocess.run([fluxgen, "tokenize"] + tok_args + ["--prompt", as_text(p)],
                                 stdout=subprocess.PIPE, check=True).stdout
            results[i] = json.loads(out)
    return results


def check(fluxgen, folder, label, real):
    ref = ClipRef(folder)
    cases = list(CASES) + [(f"random {i}", p) for i, p in enumerate(random_prompts(150, 7))]
    got = run_fluxgen(fluxgen, folder, [p for _, p in cases])
    passed = failed = 0
    for (name, prompt), g in zip(cases, got):
        want_ids, want_n = ref.encode(as_text(prompt))
        if g["clip"] == want_ids and g["clip_tokens"] == want_n and set(g) == {"clip", "clip_tokens"}:
            passed += 1
            continue
        failed += 1
        print(f"FAIL [{label}] {name}: {as_text(prompt)[:80]!r}")
        print(f"  got  ({g.get('clip_tokens')}): {g.get('clip')}")
        print(f"  want ({want_n}): {want_ids}")
    if real:
        g = got[0]
        if g["clip"] == ANCHOR and g["clip_tokens"] == 7:
            passed += 1
        else:
            failed += 1
            print(f"FAIL [{label}] anchor: got {g['clip'][:8]}..., want {ANCHOR[:8]}...")
    print(f"  {label}: {len(cases)} prompts ({len(CASES)} named) vs clip_ref.py: "
          f"{passed} passed, {failed} failed")
    return passed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluxgen", required=True)
    ap.add_argument("--tiny", required=True, help="tiny CLIP tokenizer folder")
    ap.add_argument("--real", help="real CLIP folder (tests/data/clip)")
    args = ap.parse_args()
    p = f = 0
    if args.real:
        a, b = check(args.fluxgen, args.real, "real vocab " + args.real, True)
        p, f = p + a, f + b
    else:
        print("  real CLIP vocabulary not given (--real): tiny vocabulary only")
    a, b = check(args.fluxgen, args.tiny, "tiny vocab", False)
    p, f = p + a, f + b
    print(f"{p} passed, {f} failed")
    return 1 if f else 0


if __name__ == "__main__":
    sys.exit(main())
