"""Tokenizer files in the layouts FLUX ships, for the tiny model.

- CLIP (``tokenizer/``): a byte-level BPE vocabulary in the Hugging Face form
  (``vocab.json`` + ``merges.txt``), learned here from a small corpus.  The vocabulary is
  ordered as CLIP's: the 256 byte symbols, the same with ``</w>``, one entry per merge, then
  ``<|startoftext|>`` and ``<|endoftext|>`` (so eos is the largest id, as in the real one).
- T5 (``tokenizer_2/``): a SentencePiece unigram ``spiece.model`` trained with Debian's
  ``spm_train`` (pad 0, eos 1, unk 2, no bos), as the real T5 vocabulary is laid out.
"""

import collections
import json
import os
import shutil
import subprocess

import regex

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# The CLIP pre-token pattern (a fact of the format, see docs/numerics.md).
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def byte_symbols():
    """The 256 printable stand-ins for bytes, in CLIP's vocabulary order: list of (byte, char)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    out = [(b, chr(b)) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            out.append((b, chr(256 + extra)))
            extra += 1
    return out


def _clip_words(lines):
    bmap = dict(byte_symbols())
    counts = collections.Counter()
    for line in lines:
        text = " ".join(line.split()).lower()
        for tok in CLIP_PATTERN.findall(text):
            chars = [bmap[b] for b in tok.encode("utf-8")]
            counts[tuple(chars[:-1]) + (chars[-1] + "</w>",)] += 1
    return counts


def learn_clip_merges(lines, max_merges):
    """Learns up to max_merges BPE merges from text lines; ties break on the smaller pair."""
    words = dict(_clip_words(lines))
    merges = []
    while len(merges) < max_merges:
        pairs = collections.Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_words = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return merges


def write_clip_tokenizer(out_dir, merges, max_length=77):
    """Writes vocab.json, merges.txt and the HF config files for a CLIP BPE vocabulary."""
    os.makedirs(out_dir, exist_ok=True)
    syms = [c for _, c in byte_symbols()]
    vocab = syms + [s + "</w>" for s in syms] + [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS]
    ids = {}
    for tok in vocab:
        if tok in ids:
            raise ValueError(f"duplicate vocabulary entry '{tok}'")
        ids[tok] = len(ids)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(ids, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    bos, eos = ids[CLIP_BOS], ids[CLIP_EOS]
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(bos): {"content": CLIP_BOS, "normalized": True, "special": True},
                                 str(eos): {"content": CLIP_EOS, "normalized": False, "special": True}},
        "bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_EOS, "unk_token": CLIP_EOS,
        "do_lower_case": True, "errors": "replace", "model_max_length": max_length,
        "tokenizer_class": "CLIPTokenizer",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_EOS,
                   "unk_token": CLIP_EOS}, f, indent=1)
    return len(vocab)


def train_t5_spiece(corpus, out_dir, vocab_size):
    """Trains a unigram spiece.model with spm_train (T5 id layout); returns its path."""
    spm_train = shutil.which("spm_train")
    if spm_train is None:
        raise RuntimeError("spm_train not found (Debian package 'sentencepiece'); run 'make deps'")
    os.makedirs(out_dir, exist_ok=True)
    # spm_train records its input and output paths in the model: run it on relative names
    # inside out_dir so that the file does not depend on where the repository lives.
    shutil.copyfile(corpus, os.path.join(out_dir, "corpus.txt"))
    prefix = os.path.join(out_dir, "spiece")
    cmd = [spm_train, "--input=corpus.txt", "--model_prefix=spiece",
           f"--vocab_size={vocab_size}", "--model_type=unigram", "--character_coverage=1.0",
           "--pad_id=0", "--eos_id=1", "--unk_id=2", "--bos_id=-1",
           "--pad_piece=<pad>", "--eos_piece=</s>", "--unk_piece=<unk>",
           "--normalization_rule_name=nmt_nfkc", "--shuffle_input_sentence=false",
           "--num_threads=1", "--minloglevel=2", "--hard_vocab_limit=false"]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=out_dir)
    os.remove(os.path.join(out_dir, "corpus.txt"))
    if res.returncode != 0:
        raise RuntimeError(f"spm_train failed ({res.returncode}): {res.stdout[-2000:]}")
    os.remove(prefix + ".vocab")
    extra = [f"<extra_id_{k}>" for k in range(100)]
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>"}, f, indent=1)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "extra_ids": 100, "model_max_length": 512, "legacy": True,
                   "tokenizer_class": "T5Tokenizer"}, f, indent=1)
    return prefix + ".model"
