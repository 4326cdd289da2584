"""Language bridge: memory tokens + a question -> the language model -> answer text.

At question time the language model reads the whole memory at a fixed size: M = (L_w + L_e) * k
memory tokens of size C_in (k = gh * gw pooled tokens per entry). A trained projector maps them
into the LM's embedding space and they replace the embedding rows of M placeholder positions in
one fixed prompt, so the cost of a question does not depend on the length of the stream.

Prompt (one explicit template for every checkpoint; no chat template):

    [bos]{system_prompt}\\nMemory:<m_1>...<m_M>\\nQuestion: {question}\\nAnswer: {answer}[eos]

Each piece is tokenized on its own (no special tokens added), so the M placeholders are exactly M
positions whatever the tokenizer. The placeholder id is only a stand-in (its embedding is
replaced): the tokenizer's <memory> token when it has one, Qwen2.5-VL's <|video_pad|>, else pad.

Positions:
    causal_lm   plain 1D positions (any AutoModelForCausalLM directory, or the Qwen2 LM inside a
                LLaVA-Video / LLaVA-OneVision checkpoint).
    qwen2_5_vl  MRoPE: the memory is laid out as a video, T = entries, each entry an h x w frame
                (memory_entry_grid), marked with mm_token_type_ids = 2 and positioned by the
                checkpoint's own `model.model.get_rope_index` (entries memory_seconds_per_entry
                apart). One adjustment: text after the memory starts at (max memory position + 1),
                the rule of the original Qwen2.5-VL code the checkpoints were trained with;
                transformers 5.23's get_rope_index restarts it at start + max(h, w), below later
                entries' temporal positions. Training (`loss`) and `generate` use the same positions.

Trained parts: the projector always; the language model unless freeze_language_model.
Projector: Linear -> GELU -> Linear; when C_in equals the LM hidden size it is residual
(x + MLP(x), last layer zero-initialised), so tokens that are already in the LM's embedding space
(the HF semantic encoders' output) are read as they are from the first step. With
standardize_memory, each channel is first standardised by running statistics (batch norm without
affine terms) and the projector is never residual: for memory tokens that are not in the LM's
embedding space and whose scene-to-scene differences are small beside one offset they all share
(the tiny model's: norm ~18 against its word embeddings' ~0.5, differences ~1 % of it), which
the LM's RMSNorm would otherwise pass on as nearly the same vector at every memory position.

memory_relevance (for citing evidence): at every generated answer token, the final-layer (post
final norm) hidden state h at the position that predicts it is compared with the final-layer
hidden states k_m of the M memory positions: softmax_m(h . k_m / sqrt(d)); averaged over the
generated answer tokens (the first step's when the answer is empty). A distribution over memory
tokens that sums to 1: a representation-similarity signal, not an attention map or a causal
attribution.

`generate` can also draw several answers from the model's own distribution (temperature 1), in
the same batch as the greedy answer, sharing the prompt's keys/values; the engine decodes number
answers from them (see engine/number_decoding.py). With number_head, `estimate_number` gives a
measure's distribution in one pass instead (NumberHead on the final hidden state that would
predict the first answer token; the trainer reads the same state in answer_pass's `final`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .prompt import question_option_texts
from .hf_backbone import DTYPES, BackboneLoader, LanguageParts, language_parts_from_model, load_backbone
from .number_pointers import MEASURES, BoxLayout, MemoryPointers, PointerInputs, PointerReading
from .tiny_language_model import MEMORY, build_tiny_language_model

KINDS = ("causal_lm", "qwen2_5_vl")
CHOICE_ANSWERS = ("letter", "option_text")
DEFAULT_SYSTEM_PROMPT = "Answer the question about the scene in memory."
VIDEO_TOKEN_TYPE = 2          # mm_token_type_ids: text 0, image 1, video 2


@dataclass
class LanguageBridgeConfig:
    kind: str = "causal_lm"
    checkpoint_dir: str | None = None        # None: the embedded tiny LM, built in memory (causal_lm only)
    memory_dim: int = 256                    # C_in of the memory tokens
    projector_hidden_dim: int | None = None  # None: the LM hidden size
    memory_entry_grid: tuple[int, int] = (2, 2)   # qwen2_5_vl: tokens per entry laid out as h x w
    memory_seconds_per_entry: float = 1.0    # qwen2_5_vl: time between entries for MRoPE
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    dtype: str = "float32"                   # the LM's weights (projector stays float32)
    freeze_language_model: bool = False
    standardize_memory: bool = False         # per-channel running standardisation before the projector
    tiny_lm: dict = field(default_factory=dict)   # checkpoint_dir None: build_tiny_language_model kwargs
    # How a multiple-choice question is answered. "letter": the model writes the option's letter
    # (VSI-Bench's rule). "option_text": it is taught the chosen option's text, and at inference
    # each listed option's text is scored by its likelihood and the best one's letter returned.
    # A small language model trained from scratch learns to look a named object up in memory and
    # answer with the option's text, but not the further step from that text to its letter.
    choice_answer: str = "letter"
    # How a measure (a distance, a size, an area: prompt.asks_measure) is answered. False:
    # the model writes the number as text. True: a head on the final hidden state at the answer's
    # first position (NumberHead) gives a Gaussian over the answer's natural log, trained by its
    # likelihood (the trainer's number_loss_weight), and the engine answers the value it expects
    # to be least wrong in relative terms. A small language model trained from scratch on a CPU
    # wrote numbers digit by digit at 1.1-1.2 nats a token after 700 steps, its answers piling on
    # a few values; one scalar on a log scale has no digits to get wrong. A count, a small whole
    # number, the model writes either way: the shipped tiny model's written counts score as its
    # head's did on them (design note).
    number_head: bool = False
    # With number_head: the head also measures the boxes it points at in an object memory
    # (model.number_pointers; the model must read its memory as objects: object_readout).
    number_pointers: bool = False

    def __post_init__(self) -> None:
        self.memory_entry_grid = tuple(int(g) for g in self.memory_entry_grid)
        if self.kind not in KINDS:
            raise ValueError(f"bridge kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "qwen2_5_vl" and not self.checkpoint_dir:
            raise ValueError("bridge kind 'qwen2_5_vl' needs checkpoint_dir (a local Qwen2.5-VL directory)")
        if self.memory_dim <= 0 or (self.projector_hidden_dim is not None and self.projector_hidden_dim <= 0):
            raise ValueError("memory_dim and projector_hidden_dim must be positive")
        if len(self.memory_entry_grid) != 2 or min(self.memory_entry_grid) <= 0:
            raise ValueError(f"memory_entry_grid must be two positive ints, got {self.memory_entry_grid}")
        if self.memory_seconds_per_entry <= 0:
            raise ValueError("memory_seconds_per_entry must be positive")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not self.system_prompt.strip():
            raise ValueError("system_prompt is empty")
        if self.choice_answer not in CHOICE_ANSWERS:
            raise ValueError(f"choice_answer must be one of {CHOICE_ANSWERS}, got {self.choice_answer!r}")
        if self.number_pointers and not self.number_head:
            raise ValueError("number_pointers extends the number head: set number_head too")
        if self.checkpoint_dir is not None and self.tiny_lm:
            raise ValueError("tiny_lm settings apply only without checkpoint_dir")


@dataclass(frozen=True)
class GeneratedText:
    text: str
    token_ids: list[int]
    token_probs: list[float]          # probability of each generated answer token (EOS excluded)
    memory_relevance: torch.Tensor    # [M] float32, sums to 1
    samples: tuple[str, ...] = ()     # answers drawn by sampling (generate's num_samples)


@dataclass(frozen=True)
class NumberEstimate:
    log_mean: float                   # the answer's natural log: mean ...
    log_std: float                    # ... and standard deviation
    memory_relevance: torch.Tensor    # [M] float32, sums to 1


@dataclass(frozen=True)
class ScoredOptions:
    log_likelihoods: torch.Tensor     # [K] float32, each option's answer tokens and EOS
    memory_relevance: torch.Tensor    # [M] float32, sums to 1


@dataclass(frozen=True)
class PickedOption:
    letter: str
    text: str
    share: float                      # its share of the listed options' likelihoods
    memory_relevance: torch.Tensor    # [M] float32, sums to 1


def memory_relevance(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Attention-like weights [M] of the memory's final hidden states keys [M,d] for the hidden
    state query [d] that predicts an answer token."""
    return torch.softmax(keys.float() @ query.float() / math.sqrt(keys.shape[-1]), dim=0)


@dataclass(frozen=True)
class PromptBatch:
    input_ids: torch.Tensor           # [B,L]
    attention_mask: torch.Tensor      # [B,L]
    labels: torch.Tensor              # [B,L], -100 off the answer (+EOS)
    memory_start: int                 # memory occupies [memory_start, memory_start + M) in every row
    num_memory: int


@dataclass(frozen=True)
class AnswerPass:
    loss: torch.Tensor                # teacher-forced cross-entropy over the answer tokens and EOS
    question_losses: torch.Tensor     # [Q] the same per question, over its own tokens (detached)
    hidden: torch.Tensor | None       # [Q,L,d] after answer_pass's hidden_layer, per question row
    # [Q,H,L,K] attention weights of answer_pass's attention_layer, each row's positions over the
    # prompt's K positions (memory prefix included): the row's j-th token is key row_start + j
    attention: torch.Tensor | None = None
    row_start: int = 0
    final: torch.Tensor | None = None  # [Q,L,d] the final layer's (post norm) hidden states over each row
    memory_final: torch.Tensor | None = None  # [Q,M,d] the same at the memory tokens each row read


LOG_STD_RANGE = (-5.0, 3.0)       # NumberHead's log standard deviation, clamped: no zero-width certainty


class NumberHead(nn.Module):
    """A Gaussian over a number answer's natural log from the final hidden state at the answer's
    first position: [...,d] -> mean [...], standard deviation [...], and with `pointers`
    (model.number_pointers) what they read. With pointers the mean adds a combination of the
    measures of the boxes they point at, weighted from the same state (zero-initialised: a head
    given pointers starts as the plain head it was)."""

    def __init__(self, hidden_size: int, pointers: MemoryPointers | None = None):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, 2)
        self.pointers = pointers
        self.measure_weights = nn.Linear(hidden_size, len(MEASURES)) if pointers is not None else None
        if self.measure_weights is not None:
            nn.init.zeros_(self.measure_weights.weight)
            nn.init.zeros_(self.measure_weights.bias)

    def forward(self, hidden: torch.Tensor, inputs: PointerInputs | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, PointerReading | None]:
        # hidden [...,d]; with pointers [N,d] and their inputs
        features = F.gelu(self.fc1(hidden.float()))
        mean, log_std = self.fc2(features).unbind(-1)                                  # [N], [N]
        reading = None
        if self.pointers is not None:
            if inputs is None:
                raise ValueError("a number head with memory pointers reads the question and the memory: "
                                 "pass PointerInputs")
            reading = self.pointers(hidden, inputs)
            mean = mean + (self.measure_weights(features) * reading.measures).sum(-1)
        return mean, log_std.clamp(*LOG_STD_RANGE).exp(), reading

    @staticmethod
    def nll(mean: torch.Tensor, std: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the positive `values` under the Gaussians over their logs
        (constant dropped), per value."""
        return 0.5 * ((values.log() - mean) / std).square() + std.log()


class MemoryProjector(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, standardize: bool = False):
        super().__init__()
        # running mean / variance per channel: batch statistics while training, fixed at inference
        self.standardize = nn.BatchNorm1d(in_dim, affine=False) if standardize else None
        self.residual = in_dim == out_dim and not standardize
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        if self.residual:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [...,C_in] -> [...,d]
        if self.standardize is not None:
            x = self.standardize(x.reshape(-1, x.shape[-1])).view_as(x)
        y = self.fc2(F.gelu(self.fc1(x)))
        return x + y if self.residual else y


def _load_language(config: LanguageBridgeConfig, loader: BackboneLoader | None) -> LanguageParts:
    if config.checkpoint_dir is None:
        model, tokenizer = build_tiny_language_model(**config.tiny_lm)
        return language_parts_from_model(model.to(DTYPES[config.dtype]), tokenizer, "causal_lm")
    if loader is not None:
        backbone = loader.get(config.checkpoint_dir, config.dtype)
    else:
        backbone = load_backbone(config.checkpoint_dir, ("language",), config.dtype)
    return backbone.language


class LanguageBridge(nn.Module):
    def __init__(self, config: LanguageBridgeConfig, loader: BackboneLoader | None = None,
                 language: LanguageParts | None = None, box_layout: BoxLayout | None = None):
        super().__init__()
        self.config = config
        language = language if language is not None else _load_language(config, loader)
        if config.kind == "qwen2_5_vl" and language.rope_index is None:
            raise ValueError(f"bridge kind 'qwen2_5_vl' needs a Qwen2.5-VL checkpoint, got a {language.family} one")
        self.decoder = language.decoder
        self.lm_head = language.lm_head
        self.tokenizer = language.tokenizer
        self.eos_token_ids = tuple(language.eos_token_ids)
        self._rope_index = language.rope_index if config.kind == "qwen2_5_vl" else None
        self.hidden_size = language.hidden_size
        self.projector = MemoryProjector(config.memory_dim, config.projector_hidden_dim or self.hidden_size,
                                         self.hidden_size, standardize=config.standardize_memory)
        if config.number_pointers and box_layout is None:
            raise ValueError("number_pointers needs the memory's box layout (an object readout's memory tokens)")
        pointers = MemoryPointers(self.hidden_size, config.memory_dim, box_layout) if config.number_pointers else None
        self.number_head = NumberHead(self.hidden_size, pointers) if config.number_head else None
        if config.freeze_language_model:
            self.decoder.requires_grad_(False)
            self.lm_head.requires_grad_(False)

        tok = self.tokenizer
        memory_id = tok.convert_tokens_to_ids(MEMORY) if MEMORY in tok.get_vocab() else None
        if config.kind == "qwen2_5_vl":
            memory_id = language.video_token_id
        self.placeholder_id = int(memory_id if memory_id is not None else
                                  (tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_ids[0]))
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_ids[0])
        self._bos = [int(tok.bos_token_id)] if tok.bos_token_id is not None else []
        self._prefix = self._bos + self._encode(f"{config.system_prompt}\nMemory:")
        template = self._prefix + self._encode("\nQuestion:") + self._encode("\nAnswer:")
        if tok.unk_token_id is not None and tok.unk_token_id in template:
            raise ValueError("the tokenizer cannot represent the prompt template (unknown words in "
                             f"{config.system_prompt!r} / 'Memory: Question: Answer:'); add them to its vocabulary")

    # ------------------------------------------------------------------ prompt
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def question_text(question: str) -> str:
        """The prompt's text from the end of the memory to where the answer starts."""
        return f"\nQuestion: {question.strip()}\nAnswer:"

    def question_ids(self, question: str) -> list[int]:
        """The tokens of question_text: the start of answer_pass's rows."""
        return self._encode(self.question_text(question))

    def answer_ids(self, answer: str) -> list[int]:
        """The target tokens of an answer: its text after one space, then EOS."""
        return self._encode(" " + answer.strip()) + [self.eos_token_ids[0]]

    def target_ids(self, question: str, answer: str) -> list[int]:
        """The tokens a question's ground-truth `answer` teaches: answer_ids of the answer, or with
        choice_answer "option_text" and a letter that names one of the options the question lists
        (prompt.question_option_texts), of that option's text."""
        if self.config.choice_answer == "option_text":
            answer = question_option_texts(question).get(answer.strip(), answer)
        return self.answer_ids(answer)

    def encode_prompts(self, num_memory: int, questions: list[str], answers: list[str] | None = None,
                       device: torch.device | str = "cpu") -> PromptBatch:
        if answers is not None and len(answers) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        rows, label_rows = [], []
        for i, question in enumerate(questions):
            ids = self._prefix + [self.placeholder_id] * num_memory + self.question_ids(question)
            labels = [-100] * len(ids)
            if answers is not None:
                target = self.target_ids(question, answers[i])
                ids, labels = ids + target, labels + target
            rows.append(ids)
            label_rows.append(labels)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, label_rows)):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            labels[i, :len(lab)] = torch.tensor(lab)
            mask[i, :len(ids)] = 1
        return PromptBatch(input_ids.to(device), mask.to(device), labels.to(device), len(self._prefix), num_memory)

    # ------------------------------------------------------------------ pieces
    @property
    def embed_tokens(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    @property
    def num_layers(self) -> int:
        return int(self.decoder.config.get_text_config().num_hidden_layers)

    def _lm_dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def _inputs_embeds(self, memory_tokens: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        embeds = self.embed_tokens(batch.input_ids)                              # [B,L,d]
        memory = self.projector(memory_tokens.to(self.projector.fc1.weight.dtype)).to(embeds.dtype)
        s, m = batch.memory_start, batch.num_memory
        return torch.cat([embeds[:, :s], memory, embeds[:, s + m:]], dim=1)

    def entry_layout(self, num_memory: int, entry_grid: tuple[int, int] | None = None) -> tuple[int, int, int]:
        gh, gw = entry_grid or self.config.memory_entry_grid
        if num_memory % (gh * gw):
            raise ValueError(f"{num_memory} memory tokens are not whole entries of {gh}x{gw} tokens")
        return num_memory // (gh * gw), gh, gw

    def position_ids(self, batch: PromptBatch, entry_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """[B,L] (causal_lm) or [3,B,L] MRoPE positions (qwen2_5_vl)."""
        b, length = batch.input_ids.shape
        if self._rope_index is None:
            return torch.arange(length, device=batch.input_ids.device).expand(b, -1)
        entries, gh, gw = self.entry_layout(batch.num_memory, entry_grid)
        s, m = batch.memory_start, batch.num_memory
        token_type = torch.zeros_like(batch.input_ids, dtype=torch.int)
        token_type[:, s:s + m] = VIDEO_TOKEN_TYPE
        merge = self._merge_size()
        grid = torch.tensor([[entries, gh * merge, gw * merge]] * b, device=batch.input_ids.device)
        seconds = torch.full((b,), float(self.config.memory_seconds_per_entry))
        positions, _ = self._rope_index(batch.input_ids, token_type, video_grid_thw=grid,
                                        second_per_grid_ts=seconds, attention_mask=batch.attention_mask)
        # Text after the memory starts right after its largest position (original Qwen2.5-VL rule).
        shift = positions[:, :, s:s + m].amax() + 1 - positions[:, :, s + m].amin()
        if s + m < length and shift > 0:
            positions[:, :, s + m:] += shift * batch.attention_mask[:, s + m:].to(positions.dtype)
        return positions

    def _merge_size(self) -> int:
        return int(self._rope_index.__self__.config.vision_config.spatial_merge_size)

    def _hidden(self, memory_tokens: torch.Tensor, batch: PromptBatch, entry_grid=None, use_cache=False,
                output_hidden_states=False, output_attentions=False):
        if memory_tokens.ndim != 3 or memory_tokens.shape[-1] != self.config.memory_dim:
            raise ValueError(f"memory_tokens must be [B,M,{self.config.memory_dim}], got {tuple(memory_tokens.shape)}")
        return self.decoder(inputs_embeds=self._inputs_embeds(memory_tokens, batch),
                            attention_mask=batch.attention_mask,
                            position_ids=self.position_ids(batch, entry_grid), use_cache=use_cache,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    # ------------------------------------------------------------------ training
    def loss(self, memory_tokens: torch.Tensor, questions: list[str], answers: list[str],
             entry_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Teacher-forced cross-entropy over the answer tokens and EOS (mean over those tokens)."""
        if memory_tokens.shape[0] != len(questions):
            raise ValueError(f"{memory_tokens.shape[0]} memory sets but {len(questions)} questions")
        batch = self.encode_prompts(memory_tokens.shape[1], questions, answers, memory_tokens.device)
        return self._answer_losses(self._hidden(memory_tokens, batch, entry_grid).last_hidden_state, batch.labels)[0]

    def _answer_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over every answer token of the batch, and [B] each row's own (detached).
        hidden [B,L,d] final layer, labels [B,L] (-100 off the answer): each position predicts the next token."""
        targets = labels[:, 1:]
        keep = targets != -100
        logits = self.lm_head(hidden[:, :-1][keep]).float()                         # [T,V]
        per_token = F.cross_entropy(logits, targets[keep], reduction="none")        # [T]
        row = keep.nonzero()[:, 0]                                                 # [T] each token's row
        sums = per_token.new_zeros(len(labels)).index_add_(0, row, per_token.detach())
        return per_token.mean(), sums / keep.sum(dim=1).clamp(min=1)

    def loss_per_memory(self, memory_tokens: torch.Tensor, questions: list[list[str]],
                        answers: list[list[str]]) -> torch.Tensor:
        """`loss` for several questions per memory set: memory_tokens [E,M,C], questions[e] and
        answers[e] asked of set e (see answer_pass)."""
        return self.answer_pass(memory_tokens, questions, answers).loss

    def answer_pass(self, memory_tokens: torch.Tensor, questions: list[list[str]], answers: list[list[str]],
                    hidden_layer: int | None = None, attention_layer: int | None = None) -> AnswerPass:
        """The answer loss of several questions per memory set (memory_tokens [E,M,C], questions[e]
        and answers[e] asked of set e) and, with `hidden_layer`, the hidden states after that many
        decoder layers over each question's row: its question_text tokens, then its answer's; with
        `attention_layer` (a decoder layer's index, negative from the last), that layer's attention
        weights from each row's positions (the decoder must run eager attention:
        `decoder.set_attn_implementation("eager")`; the fused kernels do not return them).
        With plain positions (causal_lm) the prompt up to the end of the memory runs once per set
        and its keys/values serve every question on it: the same loss at a fraction of the cost,
        the memory being most of each prompt. MRoPE (qwen2_5_vl) positions depend on the whole
        prompt, so there the sets are expanded into whole prompts."""
        counts = [len(q) for q in questions]
        if len(counts) != memory_tokens.shape[0] or [len(a) for a in answers] != counts or min(counts) < 1:
            raise ValueError("one non-empty question list and an answer list of the same length per memory set")
        if hidden_layer is not None and not 0 <= hidden_layer <= self.num_layers:
            raise ValueError(f"hidden_layer must be in [0, {self.num_layers}], got {hidden_layer}")
        attentions = attention_layer is not None
        if attentions and not -self.num_layers <= attention_layer < self.num_layers:
            raise ValueError(f"attention_layer must be in [{-self.num_layers}, {self.num_layers}), "
                             f"got {attention_layer}")
        if attentions and self.decoder.config._attn_implementation != "eager":
            raise ValueError("attention weights need the decoder's eager attention: "
                             "decoder.set_attn_implementation('eager')")
        states = hidden_layer is not None
        device = memory_tokens.device
        flat_questions = [q for qs in questions for q in qs]
        flat_answers = [a for ans in answers for a in ans]
        repeat = torch.repeat_interleave(torch.arange(len(counts), device=device),
                                         torch.tensor(counts, device=device))
        if self._rope_index is not None:
            batch = self.encode_prompts(memory_tokens.shape[1], flat_questions, flat_answers, device)
            out = self._hidden(memory_tokens[repeat], batch, output_hidden_states=states, output_attentions=attentions)
            start = batch.memory_start + batch.num_memory
            return AnswerPass(*self._answer_losses(out.last_hidden_state, batch.labels),
                              out.hidden_states[hidden_layer][:, start:] if states else None,
                              out.attentions[attention_layer][:, :, start:] if attentions else None, start,
                              out.last_hidden_state[:, start:], out.last_hidden_state[:, batch.memory_start:start])
        out, labels, memory_hidden = self._prefixed_pass(memory_tokens, repeat, flat_questions, flat_answers,
                                                         states, attentions)
        return AnswerPass(*self._answer_losses(out.last_hidden_state, labels),
                          out.hidden_states[hidden_layer] if states else None,
                          out.attentions[attention_layer] if attentions else None,
                          len(self._prefix) + memory_tokens.shape[1], out.last_hidden_state, memory_hidden[repeat])

    def _prefixed_pass(self, memory_tokens: torch.Tensor, repeat: torch.Tensor, questions: list[str],
                       answers: list[str], output_hidden_states: bool = False, output_attentions: bool = False):
        """Plain positions only: the prompt up to the end of the memory runs once per memory set
        [E,M,C], then row i (questions[i] and answers[i]'s target tokens) over the keys/values of
        set repeat[i]. Returns the rows' decoder output [Q,L,d], their labels [Q,L] (-100 off the
        answer) and the final hidden states of the sets' memory tokens [E,M,d]."""
        cache, p, memory_hidden = self._memory_prefix(memory_tokens, repeat)
        suffix, labels, mask = self._suffix_batch(questions, answers, p, memory_tokens.device)
        positions = (p + torch.arange(suffix.shape[1], device=suffix.device)).expand(len(suffix), -1)
        out = self.decoder(input_ids=suffix, attention_mask=mask, past_key_values=cache, use_cache=True,
                           position_ids=positions, output_hidden_states=output_hidden_states,
                           output_attentions=output_attentions)
        return out, labels, memory_hidden

    def _memory_prefix(self, memory_tokens: torch.Tensor, repeat: torch.Tensor):
        """The prompt up to the end of the memory, run once per memory set [E,M,C]. Returns its
        keys/values with row i holding set repeat[i] ([Q,...] per layer), the prefix length p, and
        the final hidden states of the sets' memory tokens [E,M,d]."""
        sets, num_memory = memory_tokens.shape[:2]
        device = memory_tokens.device
        prefix_ids = torch.tensor([self._prefix + [self.placeholder_id] * num_memory], device=device).expand(sets, -1)
        p = prefix_ids.shape[1]
        prefix = PromptBatch(prefix_ids, torch.ones_like(prefix_ids), torch.full_like(prefix_ids, -100),
                             len(self._prefix), num_memory)
        out = self.decoder(inputs_embeds=self._inputs_embeds(memory_tokens, prefix),
                           attention_mask=prefix.attention_mask,
                           position_ids=torch.arange(p, device=device).expand(sets, -1), use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(repeat)
        return cache, p, out.last_hidden_state[:, len(self._prefix):]

    def _suffix_batch(self, questions: list[str], answers: list[str], p: int, device):
        """The rows after a p-token memory prefix: each question's tokens then its answer's target
        tokens, right-padded. Returns ids [Q,L], labels [Q,L] (-100 off the answer) and the
        attention mask over prefix and row [Q,p+L]."""
        rows, label_rows = [], []
        for question, answer in zip(questions, answers):
            ids, target = self.question_ids(question), self.target_ids(question, answer)
            rows.append(ids + target)
            label_rows.append([-100] * len(ids) + target)
        length = max(len(r) for r in rows)
        suffix = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), p + length), dtype=torch.long)
        mask[:, :p] = 1
        for i, (ids, lab) in enumerate(zip(rows, label_rows)):
            suffix[i, :len(ids)] = torch.tensor(ids)
            labels[i, :len(lab)] = torch.tensor(lab)
            mask[i, p:p + len(ids)] = 1
        return suffix.to(device), labels.to(device), mask.to(device)

    def answer_position(self, question: str) -> int:
        """The index, in answer_pass's row of `question`, of its last prompt token: the one whose
        hidden state predicts the first answer token."""
        return len(self.question_ids(question)) - 1

    def phrase_positions(self, question: str, phrase: str) -> list[int]:
        """Where each whole-word occurrence of `phrase` in `question` ends: the index, in the
        question's tokens (the start of answer_pass's rows), of the token holding its last character."""
        text = self.question_text(question)
        spans = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        ends = [m.end() - 1 for m in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)]
        return [i for end in ends for i, (a, b) in enumerate(spans) if a <= end < b]

    def next_token_logits(self, memory_tokens: torch.Tensor, questions: list[str],
                          entry_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """[B,V] float32 logits of the first answer token."""
        batch = self.encode_prompts(memory_tokens.shape[1], questions, None, memory_tokens.device)
        hidden = self._hidden(memory_tokens, batch, entry_grid).last_hidden_state
        last = batch.attention_mask.sum(dim=1) - 1
        return self.lm_head(hidden[torch.arange(hidden.shape[0]), last]).float()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def score_options(self, memory_tokens: torch.Tensor, question: str, options: list[str],
                      entry_grid: tuple[int, int] | None = None) -> ScoredOptions:
        """Log-likelihood of each option's text (and EOS) as the answer to `question`, for one
        memory set [1,M,C_in]: every option runs as a row of one teacher-forced batch. With plain
        positions the prompt up to the end of the memory runs once for all options (answer_pass)."""
        if memory_tokens.ndim != 3 or memory_tokens.shape[0] != 1:
            raise ValueError(f"score_options takes one memory set [1,M,C], got {tuple(memory_tokens.shape)}")
        if not options:
            raise ValueError("no options to score")
        device = memory_tokens.device
        if self._rope_index is None:
            out, labels, memory_hidden = self._prefixed_pass(
                memory_tokens, torch.zeros(len(options), dtype=torch.long, device=device),
                [question] * len(options), list(options))
            hidden = out.last_hidden_state                                                  # [K,L,d]
            keys = memory_hidden[0]                                                         # [M,d]
        else:
            batch = self.encode_prompts(memory_tokens.shape[1], [question] * len(options), list(options), device)
            hidden = self._hidden(memory_tokens.expand(len(options), -1, -1), batch, entry_grid).last_hidden_state
            labels = batch.labels
            keys = hidden[0, batch.memory_start:batch.memory_start + batch.num_memory]
        targets = labels[:, 1:]                                                      # [K,L-1]
        keep = targets != -100
        # logits at the answer positions only: a large vocabulary over the whole prompt is big
        logp = torch.log_softmax(self.lm_head(hidden[:, :-1][keep]).float(), dim=-1)   # [T,V]
        token_logp = logp.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)         # [T]
        rows = keep.nonzero()[:, 0]
        log_likelihoods = torch.zeros(len(options), device=logp.device).index_add_(0, rows, token_logp)
        # the memory's relevance to the answer, as generate measures it, at the first answer token
        relevance = memory_relevance(keys, hidden[0, int(keep[0].nonzero()[0])])
        return ScoredOptions(log_likelihoods.cpu(), relevance.cpu())

    def listed_options(self, question: str) -> dict[str, str]:
        """{letter: text} of the options a question lists one per line, when the bridge answers a
        choice by its options' texts (choice_answer "option_text"); else {}: the answer is generated."""
        return question_option_texts(question) if self.config.choice_answer == "option_text" else {}

    @torch.no_grad()
    def pick_option(self, memory_tokens: torch.Tensor, question: str, options: dict[str, str],
                    entry_grid: tuple[int, int] | None = None) -> PickedOption:
        """The option of `options` (listed_options) whose text is likeliest (score_options)."""
        scored = self.score_options(memory_tokens, question, list(options.values()), entry_grid=entry_grid)
        shares = torch.softmax(scored.log_likelihoods, dim=0)
        best = int(shares.argmax())
        letter = list(options)[best]
        return PickedOption(letter, options[letter], float(shares[best]), scored.memory_relevance)

    def pointer_inputs(self, result: AnswerPass, questions: list[str], rows: list[int],
                       memory_tokens: torch.Tensor) -> PointerInputs:
        """The number head's PointerInputs for answer_pass rows `rows`, which asked `questions`
        and read memory_tokens [len(rows),M,C]: each row's question tokens lead it, its answer's
        follow the last prompt token and are masked off."""
        device = result.final.device
        ends = torch.tensor([self.answer_position(q) for q in questions], device=device)
        mask = torch.arange(result.final.shape[1], device=device)[None] <= ends[:, None]   # [N,L]
        return PointerInputs(result.final[rows], mask, result.memory_final[rows], memory_tokens)

    @torch.no_grad()
    def estimate_number(self, memory_tokens: torch.Tensor, question: str,
                        entry_grid: tuple[int, int] | None = None) -> NumberEstimate:
        """The number head's Gaussian over the log of the answer to `question`, for one memory set
        [1,M,C_in]; the memory's relevance as generate measures it at the first answer token."""
        if self.number_head is None:
            raise RuntimeError("this language bridge has no number head (bridge config number_head)")
        if memory_tokens.ndim != 3 or memory_tokens.shape[0] != 1:
            raise ValueError(f"estimate_number takes one memory set [1,M,C], got {tuple(memory_tokens.shape)}")
        batch = self.encode_prompts(memory_tokens.shape[1], [question], None, memory_tokens.device)
        hidden = self._hidden(memory_tokens, batch, entry_grid).last_hidden_state[0]           # [L,d]
        s, m = batch.memory_start, batch.num_memory
        inputs = PointerInputs(hidden[None, s + m:], torch.ones_like(hidden[None, s + m:, 0], dtype=torch.bool),
                               hidden[None, s:s + m], memory_tokens)
        mean, std, _ = self.number_head(hidden[-1:], inputs)
        return NumberEstimate(float(mean), float(std), memory_relevance(hidden[s:s + m], hidden[-1]).cpu())

    @torch.no_grad()
    def generate(self, memory_tokens: torch.Tensor, question: str, max_new_tokens: int = 16,
                 entry_grid: tuple[int, int] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 num_samples: int = 0, seed: int = 0) -> GeneratedText | None:
        """Greedy answer for one memory set: memory_tokens [1,M,C_in]; with `num_samples`, also
        that many answers drawn by ancestral sampling (temperature 1, deterministic in `seed`).
        The prompt runs once: greedy row and samples decode as one batch sharing its keys/values.

        `should_stop` is polled before every decoding step; when it returns True generation stops
        and None is returned (a canceled query frees the model within one token)."""
        if memory_tokens.ndim != 3 or memory_tokens.shape[0] != 1:
            raise ValueError(f"generate takes one memory set [1,M,C], got {tuple(memory_tokens.shape)}")
        if max_new_tokens < 1 or num_samples < 0:
            raise ValueError("max_new_tokens must be >= 1 and num_samples >= 0")
        device = memory_tokens.device
        batch = self.encode_prompts(memory_tokens.shape[1], [question], None, device)
        positions = self.position_ids(batch, entry_grid)
        out = self.decoder(inputs_embeds=self._inputs_embeds(memory_tokens, batch),
                           attention_mask=batch.attention_mask, position_ids=positions, use_cache=True)
        s, m = batch.memory_start, batch.num_memory
        keys = out.last_hidden_state[0, s:s + m]                                     # [M,d]
        next_position = int(positions[..., -1].max()) + 1
        rows = 1 + num_samples                                                       # R: greedy row 0, then samples
        past = out.past_key_values
        if num_samples:
            past.batch_select_indices(torch.zeros(rows, dtype=torch.long, device=device))   # [R,...] per layer
            generator = torch.Generator(device=device).manual_seed(seed)
        hidden = out.last_hidden_state[:, -1].expand(rows, -1)                       # [R,d]
        eos = torch.tensor(sorted(self.eos_token_ids), device=device)
        tokens = torch.zeros(rows, 0, dtype=torch.long, device=device)               # [R,t]
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)
        probs: list[float] = []                                                      # greedy row's
        relevance: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            if should_stop is not None and should_stop():
                return None
            distribution = torch.softmax(self.lm_head(hidden).float(), dim=-1)      # [R,V]
            token = distribution[:1].argmax(dim=-1, keepdim=True)                    # [1,1]
            if num_samples:
                token = torch.cat([token, torch.multinomial(distribution[1:], 1, generator=generator)])  # [R,1]
            ended = torch.isin(token[:, 0], eos) & ~finished
            if not finished[0]:
                step_relevance = memory_relevance(keys, hidden[0])
                if not ended[0]:
                    probs.append(float(distribution[0, token[0, 0]]))
                    relevance.append(step_relevance)
                elif not relevance:
                    relevance.append(step_relevance)
            lengths[ended] = step
            finished |= ended
            tokens = torch.cat([tokens, token], dim=1)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            position = torch.full((rows, 1), next_position + step, dtype=torch.long, device=device)
            if self._rope_index is not None:
                position = position.unsqueeze(0).expand(3, -1, -1)
            out = self.decoder(inputs_embeds=self.embed_tokens(token), position_ids=position, past_key_values=past,
                               use_cache=True)
            hidden = out.last_hidden_state[:, -1]
        answers = [tokens[r, :lengths[r]].tolist() for r in range(rows)]
        text = [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]
        return GeneratedText(text[0], answers[0], probs, torch.stack(relevance).mean(dim=0).cpu(), tuple(text[1:]))
