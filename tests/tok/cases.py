"""Prompts shared by the tokenizer checks: named cases (str or bytes) and generated ones."""

import random

WORDS = ("a photo of cat dog astronaut riding horse in the moon city night neon rain street "
         "portrait oil painting by artist detailed 8k cinematic lighting forest river mountain "
         "sunset golden hour close-up macro shot of an old man with beard wearing hat red blue "
         "green yellow purple orange glass metal wooden castle dragon flying over sea waves "
         "storm clouds lightning futuristic robot vintage car parked near cafe rainy window "
         "reflections soft focus bokeh background highly detailed trending on artstation "
         "unreal engine octane render volumetric fog dramatic shadows studio ghibli anime "
         "style watercolor sketch pencil drawing minimalistic poster typography logo design "
         "it's don't we're they've I'm you'll he'd").split()


def thousand_words():
    rng = random.Random(1000)
    return " ".join(rng.choice(WORDS) for _ in range(1000))


# (name, prompt).  bytes prompts carry invalid UTF-8 or NUL on purpose.
CASES = [
    ("anchor", "a photo of a cat"),
    ("upper", "A PHOTO OF A CAT!!!"),
    ("punctuation", "Hello, world... (really?) [yes]; {no}: <maybe> \"quoted\" 'single'"),
    ("punct runs", "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ ~~~ ``` ||| \\\\ //"),
    ("digits", "digits 0123456789 and 3.14159, 1e10, 2024-11-26, 1,000,000 x2 4k"),
    ("long number", "7" * 120),
    ("contractions", "it's they're we've I'm you'll he'd don't isn't"),
    ("contraction starts", "'s 't 're 'sun 'LL 'D 'x x'y 'twas rock'n'roll o'clock"),
    ("accents", "café naïve résumé Ångström façade crème brûlée São Paulo Dvořák"),
    ("combining", "e\u0301 a\u0308 n\u0303 \u0345x \u0345"),
    ("greek", "Ελληνικά: ΟΔΥΣΣΕΥΣ σοφός ΣΟΦΟΣ Σ ΑΣ'Σ ΑΣ. Σ'Α"),
    ("cyrillic", "Русский текст: Москва, ЁЖИК в тумане, Україна"),
    ("turkish", "İstanbul DİYARBAKIR ıı Iİ"),
    ("chinese", "中文提示词：一只可爱的猫，坐在窗台上。"),
    ("japanese", "日本語のプロンプト、富士山と桜、カタカナ"),
    ("korean", "한국어 프롬프트 고양이"),
    ("arabic", "قطة جميلة في الحديقة"),
    ("hebrew", "חתול שחור"),
    ("hindi", "एक बिल्ली की तस्वीर"),
    ("thai", "แมวน่ารัก"),
    ("emoji", "🐱 cat 😀😃 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ ✨🔥"),
    ("fullwidth", "ＦＵＬＬＷＩＤＴＨ １２３ ！？"),
    ("math", "∑∫√∞ ≠ ≤ ≥ → ← x² ½ ⅓ Ⅻ ① ⁴"),
    ("quotes dashes", "“curly” ‘quotes’ – dash — emdash … «guillemets»"),
    ("html basic", "&amp; &lt;b&gt; &quot;quoted&quot; &#39;apos&#39; &#x263A; &eacute;t&eacute;"),
    ("html twice", "&amp;amp; &amp;lt;tag&amp;gt; &amp;#39;"),
    ("html legacy", "&copy2024 &ampx &notit; &notin; &nbsp;x &#128; &#0; &#xD800; &#1114112; "
                    "&#x1F600 &NewLine;x&Tab;y &unknown; & ; &#; &#x;"),
    ("html case", "&AMP; &Eacute; &EACUTE; &Amp;"),
    ("tabs newlines", "a\tb\nc\r\nd  \t e\n\nf"),
    ("edge spaces", "   leading and trailing   "),
    ("unicode spaces", "\u00a0nbsp\u2003em\u3000ideo\u2028line\u0085nel"),
    ("controls", "\x1c\x1d a \x1f b \x0b c \x0c d\x1ce \x7f\x01"),
    ("zero width", "zero\u200bwidth\u200cjoin\u200d soft\u00adhyphen \ufeffbom"),
    ("specials typed", "<|startoftext|>a cat<|endoftext|> dog <|ENDOFTEXT|> <|StartOfText|>"),
    ("specials glued", "!<|endoftext|> x<|startoftext|>y <|endoftext|><|endoftext|>"),
    ("specials broken", "<|endoftext <|endoftext| |endoftext|> <| startoftext |>"),
    ("long s", "'ſ ſtar <|ſtartoftext|> 'ſun"),
    ("url", "https://example.com/path?q=1&x=2#frag user@example.org"),
    ("mixed", "GPT-4o, Stable-Diffusion_XL v1.0 @ 1024x1024px f/1.8 ISO-100"),
    ("long word", "supercalifragilisticexpialidocious " +
                  "pneumonoultramicroscopicsilicovolcanoconiosis" * 3),
    ("repeats a", "a" * 300),
    ("repeats ab", "ab" * 200),
    ("mixed word", "".join(chr(0x61 + (i * 7) % 26) for i in range(1500))),
    ("1000 words", thousand_words()),
    ("empty", ""),
    ("only spaces", "    "),
    ("invalid utf8", b"abc\xff\xfe def \xc3\x28 \xe2\x82 \xf0\x9f\x98 end \xed\xa0\x80 \xc0\xaf x"),
    ("nul bytes", b"a\x00b \x00\x00 c\x00"),
    ("latin1 bytes", "caf\xe9 na\xefve".encode("latin-1")),
]


def random_prompts(n, seed):
    """n random prompts mixing scripts, entities, digits, punctuation and white space."""
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 +
            list(" " * 30) + list(".,;:!?'\"-()[]{}<>|/\\@#$%^&*_+=~`") +
            list("éèêëàâäôöüçñßøåæœÆØÅ") + list("αβγδεΣσςΩωλμπ") + list("абвгдЖЁЯщ") +
            list("中文猫狗山水日本語カタ한국") + list("😀🐱🔥✨👍") + ["\u0301", "\u200d", "\t", "\u00a0"] +
            ["&amp;", "&lt;", "&#39;", "&eacute;", "&nbsp;", "&#x41;", "'s", "'ll", "<|endoftext|>"])
    out = []
    for _ in range(n):
        k = rng.randint(0, 60)
        out.append("".join(rng.choice(pool) for _ in range(k)))
    return out
