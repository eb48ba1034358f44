"""Random-weight models of the right architecture, built with no model hub: for a GPU check on a
machine that has no weights and no network (``models/doctor.py``).

Random weights exercise every code path that real ones do (loaders, conversion, kernels, the
decode loops) at the cost real ones have per token for the same shapes; only the words are
nonsense. Both models share a word-level vocabulary of plain English words, so what they "say"
can be spoken by a TTS and cut into phrases:

- the LLM is a Llama built from a config, with a chat template, saved as a transformers folder;
- the STT is a Whisper built from a config and converted with CTranslate2's own converter into
  the folder faster-whisper loads (``model.bin``, ``tokenizer.json``,
  ``preprocessor_config.json``). Whisper's special and timestamp tokens get zero embeddings and
  the words large ones, so greedy decoding yields words, not an immediate end of text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WORDS = """
the a an and or but so then now here there this that it is was are be have has do did will can
we you they he she I my your our their yes no not very more most some many few all each every
time day night year week today tomorrow home house room door window table chair book paper city
street road car train bus plane water coffee tea bread rice fish apple music song voice sound
light sun moon star rain snow wind tree flower river sea mountain friend family child people
good great small big long short new old warm cold quick slow happy quiet bright dark easy hard
go come see look hear say tell ask answer speak talk walk run read write play work sleep eat
drink open close start stop turn find give take make help know think want like need love live
""".split()
_PUNCTUATION = [".", ",", "?", "!"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Whisper's special tokens after the text tokens, <|notimestamps|> last: faster-whisper finds the
# first timestamp right after it and treats every id from <|endoftext|> on as not text.
_WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
]
_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>


@dataclass(frozen=True, slots=True)
class Shapes:
    """Model sizes. ``tiny`` runs anywhere in seconds."""

    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    whisper_d_model: int = 64
    whisper_layers: int = 2
    whisper_heads: int = 2
    mel_bins: int = 80


def _word_tokenizer(specials: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(["<unk>", *_WORDS, *_PUNCTUATION])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(specials)
    return tokenizer


def _fast_tokenizer(specials: list[str], **tokens: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast: Any = PreTrainedTokenizerFast  # untyped constructor in transformers' stubs
    return fast(tokenizer_object=_word_tokenizer(specials), unk_token="<unk>", **tokens)


def _id(tokenizer: Any, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


def build_llm(folder: Path, shapes: Shapes = Shapes()) -> Path:
    """A random-weight Llama with a chat template, saved in ``folder``; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    specials = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tokenizer = _fast_tokenizer(specials, eos_token="<|end|>", pad_token="<|end|>")
    tokenizer.chat_template = _CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shapes.llm_hidden,
        intermediate_size=shapes.llm_hidden * 2,
        num_hidden_layers=shapes.llm_layers,
        num_attention_heads=shapes.llm_heads,
        num_key_value_heads=max(1, shapes.llm_heads // 2),
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Words only (special tokens decode to nothing), and no end of reply: a random model
        # would end it at random; here replies run to max_tokens, so every check measures the
        # same work. Tied embeddings: a zero row is a logit of 0, the words' are far above.
        embeddings = model.model.embed_tokens.weight
        first_special = len(_WORDS) + len(_PUNCTUATION) + 1
        embeddings[first_special:].zero_()
        embeddings[0].zero_()  # <unk>
        embeddings[1:first_special].normal_(0.0, 1.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_whisper(folder: Path, shapes: Shapes = Shapes()) -> Path:
    """A random-weight Whisper converted to CTranslate2 in ``folder``; returns it."""
    import tempfile

    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    eot_token = _WHISPER_SPECIALS[0]
    tokenizer = _fast_tokenizer(
        _WHISPER_SPECIALS, bos_token=eot_token, eos_token=eot_token, pad_token=eot_token
    )
    eot, sot = _id(tokenizer, eot_token), _id(tokenizer, "<|startoftranscript|>")
    text_tokens = eot  # every id below <|endoftext|> is a word
    config = WhisperConfig(
        vocab_size=len(tokenizer) + _TIMESTAMPS,
        num_mel_bins=shapes.mel_bins,
        d_model=shapes.whisper_d_model,
        encoder_layers=shapes.whisper_layers,
        decoder_layers=shapes.whisper_layers,
        encoder_attention_heads=shapes.whisper_heads,
        decoder_attention_heads=shapes.whisper_heads,
        encoder_ffn_dim=shapes.whisper_d_model * 4,
        decoder_ffn_dim=shapes.whisper_d_model * 4,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():
        embeddings = model.model.decoder.embed_tokens.weight  # tied to the output projection
        embeddings[text_tokens:].zero_()  # specials and timestamps: logit 0
        embeddings[:text_tokens].normal_(0.0, 1.0)  # words: far above
        embeddings[0].zero_()  # <unk>
    with tempfile.TemporaryDirectory(prefix="voxline-whisper-hf-") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        preprocessor = {
            "feature_size": shapes.mel_bins,
            "sampling_rate": 16_000,
            "hop_length": 160,
            "chunk_length": 30,
            "n_fft": 400,
        }
        (Path(staging) / "preprocessor_config.json").write_text(json.dumps(preprocessor))
        converter = TransformersConverter(
            staging, copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        converter.convert(str(folder), force=True)
    return folder
