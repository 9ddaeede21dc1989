"""Published checkpoints' configs, processor settings and chat templates (tests/fixtures/checkpoints), made
loadable with ``vl.load(folder, device="meta")``.

A fixture folder holds what a checkpoint publishes besides its weights and its (large) tokenizer: config.json,
preprocessor_config.json, processor_config.json and chat_template.json / .jinja where published, and
special_tokens.json, the special tokens of the published tokenizer with their ids (see SOURCES.md).
`checkpoint_dir` copies one and adds a small word-level tokenizer carrying those special tokens at their real
ids, so the real processor class runs with the real settings and the image tokens have the config's ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tiny_models import CHAT_WORDS, WORDS, gemma4_processor, llama4_image_processor, pixtral_processor, without_video
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
PUBLISHED = ("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
             "chat_template.jinja")
EXTRA_WORDS = tuple("question picture image describe user assistant system [ ] inst img".split())


def fixture(name: str) -> Path:
    """The fixture folder of ``org--name``."""
    folder = FIXTURES / name
    if not (folder / "config.json").exists():
        have = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no fixture {name!r}; have: {have}")
    return folder


def special_tokens(name: str) -> dict:
    return json.loads((fixture(name) / "special_tokens.json").read_text())


def small_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the checkpoint's special tokens at their published ids (matched whole, case
    kept) and a small lower-cased word vocabulary on ids no special token uses."""
    spec = special_tokens(name)
    added: dict[str, int] = spec["added_tokens"]
    unk = spec.get("unk_token") or "<unk_word>"
    taken = set(added.values())
    free = (i for i in range(1, 10**7) if i not in taken)
    words = [w for w in dict.fromkeys((unk, *WORDS, *CHAT_WORDS, *EXTRA_WORDS)) if w not in added]
    vocab = {**{w: next(free) for w in words}, **added}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(list(added))
    named = {k: v for k, v in spec.items() if k in ("bos_token", "eos_token", "pad_token") and v}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, **named,
                                   extra_special_tokens=spec.get("extra_special_tokens", {}))


def _shim(key: str, processor_class: str) -> str:
    """The name of a torchvision-free stand-in for a processor class or (``key`` ``image_processor_type``) an image
    processor class (tests/tiny_models.py registers it)."""
    import transformers
    if key == "image_processor_type":  # transformers ships Llama 4's only with a torchvision backend
        return llama4_image_processor().__name__ if processor_class.startswith("Llama4") else processor_class
    stand_ins = {"PixtralProcessor": pixtral_processor, "Gemma4Processor": gemma4_processor}  # no torchvision / audio
    if processor_class in stand_ins:
        return stand_ins[processor_class]().__name__
    cls = getattr(transformers, processor_class)
    if "video_processor" in getattr(cls, "get_attributes", lambda: [])():
        return without_video(cls).__name__
    return processor_class


def checkpoint_dir(name: str, out: Path) -> Path:
    """A loadable copy of fixture ``name`` in ``out``: the published files, the small tokenizer, and the processor
    and image processor classes swapped for their torchvision-free stand-ins where transformers would need
    torchvision."""
    out.mkdir(parents=True, exist_ok=True)
    for file in PUBLISHED:
        if (fixture(name) / file).exists():
            shutil.copy(fixture(name) / file, out / file)
    small_tokenizer(name).save_pretrained(out)
    for file in ("processor_config.json", "preprocessor_config.json"):
        path = out / file
        if path.exists():
            data = json.loads(path.read_text())
            for key in ("processor_class", "image_processor_type"):
                if key in data:
                    data[key] = _shim(key, data[key])
            path.write_text(json.dumps(data, indent=2))
    return out
