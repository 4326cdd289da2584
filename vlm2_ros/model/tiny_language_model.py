"""The embedded language model: a small LlamaForCausalLM with a word-level tokenizer.

Written as an ordinary Hugging Face directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, generation_config.json), so it loads through exactly the same
AutoModelForCausalLM / AutoTokenizer path as a real checkpoint.

Tokenizer (the `tokenizers` library, wrapped as PreTrainedTokenizerFast):
    normalizer     NFKC, every whitespace run -> one space, strip
    pre-tokenizer  Metaspace ("▁" marks a word start), then punctuation isolated, then every
                   digit on its own, so any number is representable ("3.75" -> ▁ 3 . 7 5)
    model          WordLevel; a piece not in the vocabulary -> <unk>
    decoder        Metaspace, so decode(encode(text)) == text for in-vocabulary text with single
                   spaces (numbers, punctuation and option letters round-trip exactly)
Why Llama and not Qwen2: transformers 5's AutoTokenizer forces Qwen2Tokenizer (a byte-level BPE
rebuilt from the vocabulary, ignoring tokenizer.json's model) for any directory whose config says
model_type "qwen2", which silently breaks a word-level tokenizer. For model_type "llama" it honours
tokenizer_config.json's generic "TokenizersBackend" and loads tokenizer.json as written. The
architectures differ only by Qwen2's q/k/v biases.

Case is kept ("A" the option letter is not "a"). A word is stored as "▁word" (start of a word)
and "word" (after punctuation, e.g. "chair(s)"); `build_word_vocabulary` collects exactly the
pieces the pre-tokenizer produces on the given texts, plus the three forms of each extra word.
"""
from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<memory>")
PAD, UNK, BOS, EOS, MEMORY = SPECIAL_TOKENS
WORD_START = "▁"
DIGITS = tuple(string.digits)
PUNCTUATION = tuple(string.punctuation)

# VSI-Bench-style question templates (counting, absolute distance, object size, room size, relative
# distance, relative direction, route plan, appearance order) with example fillers.
DEFAULT_QUESTION_TEXTS = (
    "How many chair(s) are in this room?",
    "Measuring from the closest point of each object, what is the direct distance between the "
    "table and the sofa (in meters)?",
    "What is the length of the longest dimension (length, width, or height) of the bed, measured in "
    "centimeters?",
    "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size "
    "of the combined space.",
    "Measuring from the closest point of each object, which of these objects (lamp, plant, tv, cabinet) "
    "is the closest to the box?",
    "If I am standing by the door and facing the window, is the shelf to my left, right, or back? An "
    "object is to my back if I would have to turn at least 135 degrees in order to face it.",
    "If I am standing by the desk and facing the toilet, is the sink to my front-left, front-right, "
    "back-left, or back-right? The directions refer to the quadrants of a Cartesian plane.",
    "You are a robot beginning at the stool facing the refrigerator. You want to navigate to the monitor. "
    "You will perform the following actions (Note: for each [please fill in], choose either 'turn back,' "
    "'turn left,' or 'turn right.'): 1. Go forward until the pillow 2. [please fill in] 3. Go forward "
    "until the trash can. You have reached the final destination.",
    "What will be the first-time appearance order of the following categories in the video: chair, "
    "table, sofa, bed?",
    "Options: A. 1.5 B. 2.0 C. 2.5 D. 3.0 Answer with the option's letter from the given choices directly.",
    "Answer the question about the scene in memory. Memory: Question: Answer:",
)

DEFAULT_WORDS = (
    # categories
    "chair", "chairs", "table", "tables", "sofa", "sofas", "couch", "bed", "beds", "lamp", "lamps", "plant",
    "plants", "tv", "television", "cabinet", "cabinets", "box", "boxes", "trash", "can", "bin", "door",
    "doors", "window", "windows", "shelf", "shelves", "bookshelf", "desk", "desks", "toilet", "sink",
    "refrigerator", "fridge", "stool", "stools", "monitor", "monitors", "pillow", "pillows", "bathtub",
    "counter", "stove", "oven", "microwave", "washer", "dresser", "nightstand", "mirror", "picture",
    "curtain", "rug", "carpet", "backpack", "bag", "bottle", "cup", "keyboard", "computer", "laptop",
    "printer", "fan", "heater", "radiator", "clock", "blanket", "towel", "basket", "suitcase", "piano",
    "armchair", "bench", "ottoman", "wardrobe", "closet", "stairs", "wall", "floor", "ceiling", "kitchen",
    "bedroom", "bathroom", "office", "hallway", "object", "objects", "category", "categories", "room",
    "rooms", "space", "scene", "video", "frame", "frames", "memory", "camera", "robot",
    # units and measures
    "meter", "meters", "m", "centimeter", "centimeters", "cm", "millimeters", "mm", "square", "degrees",
    "degree", "feet", "foot", "inches", "length", "width", "height", "depth", "size", "distance", "area",
    "longest", "shortest", "dimension", "closest", "farthest", "nearest", "furthest", "direct",
    # directions and relations
    "left", "right", "back", "front", "front-left", "front-right", "back-left", "back-right", "behind",
    "above", "below", "under", "over", "near", "far", "next", "between", "beside", "facing", "face",
    "forward", "backward", "turn", "go", "until", "north", "south", "east", "west", "up", "down",
    "clockwise", "counterclockwise", "quadrant", "quadrants", "plane", "Cartesian",
    # question words and function words
    "how", "many", "much", "what", "which", "where", "when", "who", "is", "are", "was", "were", "be", "the",
    "a", "an", "of", "in", "on", "at", "to", "from", "by", "and", "or", "if", "it", "its", "this", "that",
    "these", "those", "there", "here", "i", "my", "me", "you", "your", "am", "do", "does", "did", "will",
    "would", "have", "has", "had", "not", "no", "yes", "with", "for", "each", "every", "all", "any",
    "first", "second", "third", "last", "time", "times", "first-time", "order", "appearance", "appear",
    "appears", "following", "given", "choices", "choice", "option", "options", "letter", "answer",
    "question", "about", "directly", "estimate", "measured", "measuring", "point", "combined", "multiple",
    "shown", "count", "number", "total", "standing", "stand", "sitting", "beginning", "navigate", "want",
    "perform", "actions", "action", "note", "please", "fill", "either", "reached", "final", "destination",
    "route", "plan", "path", "refer", "directions", "direction", "least", "most", "order", "more", "less",
    "than", "larger", "smaller", "bigger", "taller", "shorter", "same", "both", "one", "two", "three",
    "four", "five", "six", "seven", "eight", "nine", "ten", "zero", "none", "unknown", "true", "false",
    # option letters
    "A", "B", "C", "D", "E", "F",
)

# Words of the question templates (sim.questions) and the prompt's instructions that the list above
# missed, each read as <unk> ("further", "map", "towards", ...). Vocabulary version 2 adds them;
# version 1 stays as it was, since the shipped weights were trained with it.
ADDED_WORDS_V2 = ("give", "starting", "along", "apart", "big", "further", "holds", "large", "lies", "looking",
                  "map", "origin", "points", "positive", "quarter", "seen", "side", "their", "they", "towards",
                  "x", "y", "y-axis", "using", "single", "word", "phrase")
VOCABULARY_WORDS = {1: DEFAULT_WORDS, 2: DEFAULT_WORDS + ADDED_WORDS_V2}


def _normalizer():
    from tokenizers import Regex, normalizers
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "),
                                 normalizers.Strip()])


def _pre_tokenizer():
    from tokenizers import pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])


def pieces(text: str) -> list[str]:
    """The pre-tokenizer's pieces of `text` (what the WordLevel vocabulary must contain)."""
    normalized = _normalizer().normalize_str(text)
    return [p for p, _ in _pre_tokenizer().pre_tokenize_str(normalized)]


def build_word_vocabulary(texts: Iterable[str], extra_words: Iterable[str] = DEFAULT_WORDS,
                          min_count: int = 1) -> list[str]:
    """Sorted, de-duplicated pieces: those of `texts` seen at least `min_count` times, each extra
    word as "▁word", "▁Word" and "word", the word-start mark, digits and punctuation (so numbers and
    punctuation are always representable). Special tokens are not included."""
    counts: dict[str, int] = {}
    for text in texts:
        for piece in pieces(text):
            counts[piece] = counts.get(piece, 0) + 1
    vocabulary = {p for p, c in counts.items() if c >= min_count}
    for word in extra_words:
        for piece in pieces(word):
            vocabulary.add(piece)
        for form in {word, word[:1].upper() + word[1:]}:
            vocabulary.update(pieces(form))
        if word and not any(ch in string.punctuation or ch.isspace() for ch in word):
            vocabulary.add(word)
    vocabulary.update((WORD_START,) + DIGITS + PUNCTUATION)
    vocabulary.difference_update(SPECIAL_TOKENS)
    return sorted(vocabulary)


def default_vocabulary(version: int = 1) -> list[str]:
    if version not in VOCABULARY_WORDS:
        raise ValueError(f"tiny LM vocabulary_version must be one of {sorted(VOCABULARY_WORDS)}, got {version!r}")
    return build_word_vocabulary(DEFAULT_QUESTION_TEXTS, VOCABULARY_WORDS[version])


def build_word_tokenizer(vocabulary: Iterable[str], extra_special_tokens: Iterable[str] = ()):
    """PreTrainedTokenizerFast over a WordLevel model: ids 0..4 are <pad> <unk> <bos> <eos> <memory>,
    then `extra_special_tokens`, then the vocabulary in the order given."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    extra = [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS) + extra + list(vocabulary):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                   eos_token=EOS, extra_special_tokens=[MEMORY] + extra,
                                   model_max_length=4096, padding_side="right")


# tie_word_embeddings: the output head is the input embedding, as the shipped weights were trained.
# Untied, the head is a matrix of its own: a from-scratch model then learns to copy a name from
# the question into its answer far sooner (docs/design.md, "Where the comparison breaks").
TINY_DEFAULTS = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=768, max_position_embeddings=4096, rope_theta=10000.0,
                     tie_word_embeddings=True)


def build_tiny_language_model(vocabulary: Iterable[str] | None = None, seed: int = 0, vocabulary_version: int = 1,
                              **overrides):
    """(LlamaForCausalLM, tokenizer) in memory, random weights from `seed` (the global RNG is left
    untouched), over `vocabulary` or else default_vocabulary(vocabulary_version). `overrides`
    replace TINY_DEFAULTS (hidden_size, num_hidden_layers, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    unknown = set(overrides) - set(TINY_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown tiny LM settings {sorted(unknown)}; known: "
                         f"{sorted([*TINY_DEFAULTS, 'vocabulary_version'])}")
    settings = {**TINY_DEFAULTS, **overrides}
    tokenizer = build_word_tokenizer(default_vocabulary(vocabulary_version) if vocabulary is None else vocabulary)
    rope_theta = settings.pop("rope_theta")
    config = LlamaConfig(vocab_size=len(tokenizer),
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def create_tiny_language_model(directory: str | Path, vocabulary: Iterable[str] | None = None, seed: int = 0,
                               **overrides) -> Path:
    """Write the tiny LM as a normal HF directory (safetensors + tokenizer files); returns it."""
    directory = Path(directory)
    model, tokenizer = build_tiny_language_model(vocabulary, seed, **overrides)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
