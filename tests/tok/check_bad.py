#!/usr/bin/python3
"""Bad input through `fluxgen tokenize`: invalid UTF-8, NUL bytes, a 1 MB prompt, a 100 KB
word, bad arguments and missing files.  Every run must exit as documented (0 with one
well-formed JSON line per prompt; 1 for a missing file; 2 for a usage error) without a
crash.  Run on the sanitizer build too, where a leak or undefined behaviour fails the run.
Times are printed for information only.  Ends with "N passed, N failed".
"""

import argparse
import json
import random
import subprocess
import sys
import time

passed = failed = 0


def result(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}: {detail}")


def big_inputs():
    rng = random.Random(99)
    mb = 1 << 20
    rand = bytes(rng.getrandbits(8) for _ in range(mb)).replace(b"\n", b" ").replace(b"\r", b" ")
    return [
        ("1 MB random bytes", rand),
        ("1 MB text", (b"a photo of a cat, " * (mb // 18 + 1))[:mb]),
        ("1 MB entities", b"&amp;amp;&#x263A;&eacute; " * (mb // 26)),
        # 256 KB: SentencePiece is quadratic in a run of unknown characters (tok_t5.h).
        ("256 KB CJK", ("\u732b" * (mb // 12)).encode()),
        ("100 KB letters", bytes(97 + (i * 7 + i // 26) % 26 for i in range(100 * 1024))),
        ("100 KB one letter", b"a" * (100 * 1024)),
        ("100 KB punctuation", b"!?" * (50 * 1024)),
        ("invalid utf-8", b"\xff\xfe\xfd \xc0\x80 \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82 \x80\xbf"),
        ("NUL bytes", b"\x00a\x00\x00b\x00"),
        ("only NUL", b"\x00" * 1000),
        ("empty", b""),
    ]


def run(cmd, data=None):
    t = time.monotonic()
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p, time.monotonic() - t


def check_tok(fluxgen, tok_args, label):
    inputs = big_inputs()
    data = b"".join(d + b"\n" for _, d in inputs)
    p, dt = run([fluxgen, "tokenize"] + tok_args + ["--stdin"], data)
    result(p.returncode == 0, f"{label}: exit status", f"{p.returncode}: {p.stderr[-2000:]!r}")
    lines = p.stdout.decode("ascii", "replace").splitlines()
    result(len(lines) == len(inputs), f"{label}: one line per prompt", f"{len(lines)} lines")
    bos = None
    for (name, d), line in zip(inputs, lines):
        try:
            obj = json.loads(line)
        except ValueError as e:
            result(False, f"{label} {name}: JSON", str(e))
            continue
        clip, t5 = obj["clip"], obj["t5"]
        nc, nt = obj["clip_tokens"], obj["t5_tokens"]
        bos = clip[0] if bos is None else bos
        result(len(clip) == 77 and clip[0] == bos, f"{label} {name}: clip length and bos",
               f"{len(clip)} {clip[0]}")
        result(clip[min(nc, 77) - 1] == clip[-1] and nc >= 2, f"{label} {name}: clip eos", nc)
        result(len(t5) == 512 and nt >= 1 and t5[min(nt, 512) - 1] == 1,
               f"{label} {name}: t5 eos", nt)
        if len(d) >= 100 * 1024 and name != "100 KB one letter":
            result(nc > 77, f"{label} {name}: CLIP count before truncation", nc)
        if name == "1 MB text":
            result(nt > 512, f"{label} {name}: T5 count before truncation", nt)
    print(f"  {label}: {len(inputs)} prompts ({len(data) / 1e6:.1f} MB) in {dt:.2f} s")


def check_args(fluxgen, model):
    cases = [
        (["tokenize"], 2),
        (["tokenize", "--model", model], 2),
        (["tokenize", "--model", model, "--prompt", "x", "--stdin"], 2),
        (["tokenize", "--model", model, "--prompt"], 2),
        (["tokenize", "--model", model, "--bogus", "--prompt", "x"], 2),
        (["tokenize", "--model", model, "--clip", model, "--prompt", "x"], 2),
        (["tokenize", "--model", "/nonexistent", "--prompt", "x"], 1),
        (["tokenize", "--t5", "/nonexistent/spiece.model", "--prompt", "x"], 1),
        (["tokenize", "--clip", model, "--prompt", "x"], 1),  # no vocab.json there
        (["frobnicate"], 2),
        ([], 2),
        (["tokenize", "--help"], 0),
    ]
    for argv, want in cases:
        p, _ = run([fluxgen] + argv)
        result(p.returncode == want, f"fluxgen {' '.join(argv)}",
               f"exit {p.returncode}, want {want}: {p.stderr[-500:]!r}")
        if want == 1:
            result(b"fluxgen tokenize: " in p.stderr, f"fluxgen {' '.join(argv)}: message",
                   p.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluxgen", required=True)
    ap.add_argument("--model", required=True, help="folder with tokenizer/ and tokenizer_2/")
    ap.add_argument("--clip", help="real CLIP folder")
    ap.add_argument("--t5", help="real T5 model")
    args = ap.parse_args()
    check_tok(args.fluxgen, ["--model", args.model], "tiny model")
    if args.clip and args.t5:
        check_tok(args.fluxgen, ["--clip", args.clip, "--t5", args.t5], "real vocabularies")
    check_args(args.fluxgen, args.model)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
