"""A character-level tokenizer for r1core's tasks, built locally with `tokenizers` (no download).

One token per character of the alphabet (printable ASCII and newline by default), plus `<pad>`,
`<s>` (bos), `</s>` (eos), `<unk>` and the R1-Zero tags `<think>`, `</think>`, `<answer>`,
`</answer>` as single tokens. The tags are ordinary added tokens, not special ones, so
`decode(..., skip_special_tokens=True)` keeps them for the format reward. Nothing is added on
encode (TRL tokenizes prompts with add_special_tokens=False anyway); append `eos_token_id` to SFT
targets yourself.

    tok = build_tokenizer()
    tok.save_pretrained("tok/"); tok = load_tokenizer("tok/")   # or AutoTokenizer.from_pretrained
"""
from __future__ import annotations

import os
import string

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
DEFAULT_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"
# what the scratchpad formats of addition, multiplication and countdown use, for the smallest model
TASK_ALPHABET = string.digits + "+-*/=,;:>()TA"


def build_tokenizer(alphabet: str = DEFAULT_ALPHABET, model_max_length: int = 4096):
    """A `PreTrainedTokenizerFast` over the characters of `alphabet` (ids in alphabet order after
    the special and tag tokens, so the same alphabet always gives the same ids)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet: expected a non-empty string, got {alphabet!r}")
    chars = list(dict.fromkeys(alphabet))  # unique, order kept
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + TAG_TOKENS)}
    for c in chars:
        vocab[c] = len(vocab)
    # BPE with no merges is a character tokenizer: each "word" falls apart into its characters; no
    # pre-tokenizer, so spaces are characters too rather than word boundaries
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()  # join tokens with no separator
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer saved with `save_pretrained`."""
    from transformers import PreTrainedTokenizerFast

    if not os.path.isdir(path):
        raise ValueError(f"path: expected a folder written by save_pretrained, got {str(path)!r}")
    return PreTrainedTokenizerFast.from_pretrained(path)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt token ids: no special tokens but a leading bos where the tokenizer defines one. The
    engine (string prompts of generate, beam_search and branches), the SFT and GRPO trainers and
    the evaluation all encode prompts through here, so they agree. Characters the tokenizer cannot
    represent (they would silently become its unknown token) are a ValueError naming them."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string prompt, got {type(text).__name__}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    check_no_unknown(tokenizer, text, ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []) + ids


def check_no_unknown(tokenizer, text: str, ids: list[int], what: str = "prompt") -> None:
    """ValueError when `ids` (text's encoding) hold the unknown token that `text` does not spell out."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in ids or tokenizer.unk_token in text:
        return
    vocab = tokenizer.get_vocab()
    # a character-level check is exact for the character tokenizer and a good pointer elsewhere
    missing = sorted({c for c in text if c not in vocab} or {"?"})
    raise ValueError(f"{what}: {text[:60]!r} has characters the tokenizer does not know ({''.join(missing[:10])!r}); "
                     f"they would all become {tokenizer.unk_token!r}")
