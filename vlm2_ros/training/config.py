"""A training run as one YAML file (`vlm2 train --config FILE`); unknown keys are errors."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..model.object_memory import READOUT_SETTINGS, weighted_readout_fields
from ..sim.questions import MEMORY_TASKS, TASKS
from .perception_noise import PerceptionNoise

MODULES = ("geometry", "semantic", "depth_refinement", "fusion", "memory", "readout", "object_readout", "bridge")
# what a stage may train: a module, or the language bridge's number head alone (the language model
# and projector frozen, so that every answer but the numbers stays as it was)
TRAINABLE = (*MODULES, "number_head")
MEMORY_SOURCES = ("clip", "stream", "window", "oracle", "perceived")
SCENE_SOURCES = ("data", "generated")
BRIDGE_SOURCES = ("stream", "oracle", "perceived")   # memories built once per stage; only the language bridge learns
LOSS_WEIGHTS = ("depth_loss_weight", "answer_loss_weight", "category_loss_weight", "position_loss_weight",
                "point_loss_weight", "objectness_loss_weight", "grounding_loss_weight", "gather_loss_weight",
                "choice_loss_weight", "direction_loss_weight", "bearing_loss_weight", "order_loss_weight",
                "copy_loss_weight", "number_loss_weight", "pointer_loss_weight")
# The probes that read the language model's hidden states after grounding_layer layers.
LANGUAGE_PROBE_WEIGHTS = ("grounding_loss_weight", "gather_loss_weight", "choice_loss_weight",
                          "direction_loss_weight", "bearing_loss_weight", "order_loss_weight")
# The losses on the language model over memories built before the stage (its probes, its attention, its number head).
BRIDGE_LOSS_WEIGHTS = (*LANGUAGE_PROBE_WEIGHTS, "copy_loss_weight", "number_loss_weight", "pointer_loss_weight")
# Memory sources that train some modules on one loss: (the modules train may name, the loss weight
# that must be > 0, the weights that may be > 0 beside it (every other must be 0), why).
SINGLE_PURPOSE_SOURCES = {
    "stream": (["bridge", "number_head"], "answer_loss_weight", BRIDGE_LOSS_WEIGHTS,
               "freezes everything before the language model"),
    "window": (["geometry", "depth_refinement"], "depth_loss_weight", (),
               "runs the geometry encoder (and the depth refinement) alone"),
    "oracle": (["bridge", "number_head"], "answer_loss_weight", BRIDGE_LOSS_WEIGHTS,
               "gives the language model the scene's ground truth, not a perception"),
    "perceived": (["bridge", "number_head"], "answer_loss_weight", BRIDGE_LOSS_WEIGHTS,
                  "reads the frozen perception's objects out of streamed memories"),
}


class TrainConfigError(ValueError):
    """The training config is invalid; the message names the key."""


def check_modules(names: list[str], where: str, known: tuple[str, ...] = MODULES) -> None:
    unknown = [m for m in names if m not in known]
    if unknown:
        raise TrainConfigError(f"{where}: unknown modules {unknown}; choose from {known}")


@dataclass
class StageConfig:
    """One stage: which modules learn, from which losses, for how many steps."""
    name: str
    steps: int
    train: list[str]                        # modules (TRAINABLE) whose parameters learn
    lr: float = 3e-4
    warmup_steps: int = 20
    depth_loss_weight: float = 1.0          # supervised by the rendered metric depth
    answer_loss_weight: float = 1.0         # teacher-forced answer tokens
    # Per-patch object category of the tokens the memory stores (fused H_t, memory reads M_t),
    # through a linear probe that exists only during training, supervised by the rendered instance
    # masks: teaches the encoders, fusion and memory what is where before the language model reads them.
    category_loss_weight: float = 0.0
    # Where each category is: a second training-only linear probe on the same tokens predicts, per
    # class, the class's share times its world position in the patch (the class's first moment),
    # from the rendered depth and pose; only on clips given poses, whose points are in the world
    # frame. Moments average linearly, so a memory entry pooled for the language model still
    # encodes where each category sits in it.
    position_loss_weight: float = 0.0
    # Where each token is: a third training-only linear probe on the same tokens predicts the mean
    # world point of the token's patch, from the rendered depth and pose (clips given poses only).
    # With the category probe, every token then says what it shows and where; a reader finds a
    # category's position by weighing its tokens' points by their share of it (an attention can do
    # that; a class moment needs the share divided out of a linear map, which one token cannot do).
    point_loss_weight: float = 0.0
    # The readout's objectness score (model readout_pool "objectness", a part of the model, trained
    # with the "readout" module): binary cross-entropy against the share of each token's patch
    # that is an object rather than the room shell, from the rendered masks.
    objectness_loss_weight: float = 0.0
    # Where each object the question names is ("stream", "oracle"): a training-only linear probe on the
    # language model's hidden state after `grounding_layer` decoder layers, at the last token of
    # each name of an object that is the only one of its category, predicts that object's world
    # centre (from the scene). It teaches the language model to fetch a named object's position
    # from the memory into the question, early enough that later layers can compare positions;
    # from the answer tokens alone it did not learn to (the memory-only questions stayed at chance).
    grounding_loss_weight: float = 0.0
    grounding_layer: int = 2
    # The same at the answer: a second training-only linear probe on the hidden state after
    # `grounding_layer` layers, at the prompt's last token (the one that predicts the answer),
    # predicts the centres of the objects the question names (as for grounding), in the order the
    # question names them, up to trainer.GATHERED_OBJECTS. Looking each name up is learnt with the
    # grounding probe alone; carrying two looked-up positions to the answer, where they can be
    # compared, was not (a two-object comparison stayed at chance).
    gather_loss_weight: float = 0.0
    # The choice at the answer: a third probe at the same place classifies which of the named
    # objects (slot in the order the question names them, as for gather) the answer names, for
    # the questions whose answer is one of them (pair, furthest, relative distance). With both
    # positions gathered, the pair question's choice stayed at chance until it was taught.
    choice_loss_weight: float = 0.0
    # What is asked, at the same place: a fourth probe classifies the compass direction (sim.questions
    # COMPASS) a memory comparison asks (pair, furthest). The choice is the extreme along it; before
    # this probe the asked direction could be read at no position and layer (21-27 % of four).
    direction_loss_weight: float = 0.0
    # The angle a relative direction or route turns on, at the same place: a fifth probe gives
    # (cos, sin) of the third object's bearing seen from the first facing the second (relative
    # direction), or of each of a route's two turns (sim.questions.relation_angles). Left/right
    # was learnt from the answers alone; front/back (the hard quadrants) and the route's turns
    # were not (at chance after 900 steps): the answer needs an angle no other probe asks for.
    bearing_loss_weight: float = 0.0
    # When each named category was first seen, at its names: a sixth probe at the last token of
    # every name of a category the question names gives the rank of its first sighting among the
    # objects seen (data.first_sighting_ranks, the scale of the object tokens' order channel). An
    # appearance order compares four of these; with the order channel alone it stayed at chance
    # (even its first object: the choice probe 22 % of four), as a comparison of positions did
    # before the grounding probe fetched them to the names.
    order_loss_weight: float = 0.0
    # The copy, in the language model's own attention: where the answer names an object category
    # the question names (pair, furthest, relative distance, each category of an appearance
    # order), the first head of decoder layer `copy_layer` (negative: from the last) at the
    # position that predicts each of the name's tokens is trained to attend to where the question
    # holds that token (cross-entropy of its attention mass there).
    # Not a probe: no parameters of its own. With the choice made at layer 2 (choice probe right
    # from step 400), the answer still did not copy the chosen name 1,900 steps later.
    copy_loss_weight: float = 0.0
    copy_layer: int = -1
    # The measures (distances, sizes, areas) through the bridge's number head (model: {bridge:
    # {number_head: true}}): negative log-likelihood of each such answer's log under the head's
    # Gaussian. Part of the model, not a probe: it answers those questions at inference. Counts stay
    # with the answer tokens: the language model writes them (model.prompt.asks_measure).
    number_loss_weight: float = 0.0
    # The number head's memory pointers (model: {bridge: {number_pointers: true}}), supervised at
    # both hops: cross-entropy of pointer A's word attention on the name of the object a question
    # names first (of "room" for a room size) and of its memory weights on that object's token (the
    # room's; the token of its class nearest its true centre), the same for pointer B and the second
    # name (A and B may take the two either way round). Without it the answer's likelihood alone
    # trains them, and both objects of a distance were found for half the questions at best.
    pointer_loss_weight: float = 0.0
    # Where the memory the questions read comes from. "clip": the sample's clip is unrolled with
    # gradients (every module can learn). "stream": built as at inference, from every frame up to
    # the question through the frozen perception and memory, once per stage; only the language
    # bridge learns, and a step costs the language model alone. "window": no memory and no
    # questions: random windows of geometry_window consecutive frames from anywhere in the
    # episodes (as the engine decodes them) through the geometry encoder, depth loss only; a step
    # costs one window decode per episode, so the encoder sees far more frames than clips give it.
    # "oracle": a diagnostic of the language model alone: instead of a memory, the scene's ground
    # truth at the question (data.oracle_memory: the room and each object seen so far, as class,
    # centre and extents); only the language bridge learns. What the language model cannot learn
    # to answer from that, it will not learn from any memory. "perceived": the oracle's form (room
    # box, then one token per object by first sighting) built from a streamed memory instead of the
    # ground truth, exactly as the model's object readout reads the memory at a question
    # (model.object_memory.ObjectReadout, which such a stage needs enabled: its category head says
    # what each token shows, the token's point where, and tokens showing one category are grouped by
    # place into objects as model: {object_readout: ...} says); only the language bridge learns.
    memory: str = "clip"
    episodes_per_step: int | None = None    # None: the run's setting (a "stream" step is cheap: take more;
                                            # a "window" step takes one window from each)
    questions_per_episode: int | None = None
    # Pick each episode's questions task by task, so that every task weighs the same in the answer
    # loss whatever the data set's mix (it asks one room size per episode, up to 48 directions).
    balance_tasks: bool = False
    # Ask only these question types (sim.questions TASKS and MEMORY_TASKS; empty: all), e.g. the
    # memory-only questions first, so the language model learns to look an object up before the
    # VSI tasks ask it to combine look-ups. Samples without such a question sit the stage out.
    question_types: list[str] = field(default_factory=list)
    # Where an "oracle" stage's scenes come from. "data": the data set's episodes. "generated": new
    # scenes every step, never rendered (data.generated_oracle_sample: seeds no data set uses,
    # questions_per_task of each VSI task and memory_questions_per_task of each memory task): a
    # comparison the language model cannot learn from 200 scenes may need thousands, and an oracle
    # memory costs nothing to make.
    scenes: str = "data"
    # A "generated" stage's boxes made as wrong as a perception's (training.perception_noise
    # PerceptionNoise fields: objects missed, split, placed off, ...; `vlm2 train --perception-noise`
    # measures them for a run's perception). Empty: the oracle's perfect boxes.
    perception_noise: PerceptionNoise | dict = field(default_factory=dict)
    # A "perceived" stage's share of each step's episodes drawn instead as generated scenes' oracle
    # memories (with perception_noise; both are boxes in the same token layout), so that the bridge
    # meets unlimited scenes beside the few streamed ones. Measured from the shipped weights: it kept
    # no more of the bridge's reading of perfect boxes than a perceived stage alone (docs/design.md).
    generated_share: float = 0.0

    @property
    def probes_language_model(self) -> bool:
        """The stage trains a probe on the language model's hidden states after grounding_layer layers."""
        return any(getattr(self, weight) > 0 for weight in LANGUAGE_PROBE_WEIGHTS)

    def __post_init__(self) -> None:
        check_modules(self.train, f"stage {self.name!r}", TRAINABLE)
        if not isinstance(self.perception_noise, PerceptionNoise):
            try:                            # _make names a value that is not a mapping, or an unknown key
                self.perception_noise = _make(PerceptionNoise, self.perception_noise,
                                              f"stage {self.name!r} perception_noise")
            except TrainConfigError:
                raise
            except ValueError as e:         # a value out of range (PerceptionNoise's own check)
                raise TrainConfigError(f"stage {self.name!r}: {e}") from None
        if not 0 <= self.generated_share < 1:
            raise TrainConfigError(f"stage {self.name!r}: generated_share must be in [0, 1), got {self.generated_share}")
        if self.generated_share > 0 and (self.memory != "perceived" or self.scenes != "data"):
            raise TrainConfigError(f"stage {self.name!r}: generated_share mixes generated scenes into a stage on the "
                                   "data set's perceived memories: set memory: perceived")
        if self.perception_noise.enabled and self.scenes != "generated" and self.generated_share == 0:
            raise TrainConfigError(f"stage {self.name!r}: perception_noise changes generated scenes' oracle boxes: "
                                   "set scenes: generated, or generated_share > 0")
        if self.steps < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise TrainConfigError(f"stage {self.name!r}: steps must be >= 1, lr > 0, warmup_steps >= 0")
        weights = {name: getattr(self, name) for name in LOSS_WEIGHTS}
        if min(weights.values()) < 0 or sum(weights.values()) == 0:
            raise TrainConfigError(f"stage {self.name!r}: loss weights must be >= 0 and not all 0")
        if (self.episodes_per_step or 1) < 1 or (self.questions_per_episode or 1) < 1:
            raise TrainConfigError(f"stage {self.name!r}: episodes_per_step and questions_per_episode must be >= 1")
        if self.memory not in MEMORY_SOURCES:
            raise TrainConfigError(f"stage {self.name!r}: memory must be one of {MEMORY_SOURCES}, got {self.memory!r}")
        if self.memory in SINGLE_PURPOSE_SOURCES:
            modules, loss, allowed, why = SINGLE_PURPOSE_SOURCES[self.memory]
            others = [name for name in LOSS_WEIGHTS if name != loss and name not in allowed]
            if (not self.train or set(self.train) - set(modules) or weights[loss] == 0
                    or any(weights[name] for name in others)):
                raise TrainConfigError(f"stage {self.name!r}: memory {self.memory!r} {why}: train must name "
                                       f"some of {modules} (nothing else), {loss} > 0 and {', '.join(others)} 0")
        for probe in BRIDGE_LOSS_WEIGHTS:
            if getattr(self, probe) > 0 and self.memory not in BRIDGE_SOURCES:
                raise TrainConfigError(f"stage {self.name!r}: {probe} reads the language model over "
                                       f"memories built before the stage: set memory to one of {BRIDGE_SOURCES}")
        if self.grounding_layer < 0:
            raise TrainConfigError(f"stage {self.name!r}: grounding_layer must be >= 0, got {self.grounding_layer}")
        unknown = [t for t in self.question_types if t not in TASKS + MEMORY_TASKS]
        if unknown:
            raise TrainConfigError(f"stage {self.name!r}: unknown question_types {unknown}; "
                                   f"choose from {TASKS + MEMORY_TASKS}")
        if self.question_types and self.answer_loss_weight == 0:     # a "window" stage's is 0 too
            raise TrainConfigError(f"stage {self.name!r}: question_types needs a stage that asks questions "
                                   "(answer_loss_weight > 0)")
        if self.objectness_loss_weight > 0 and "readout" not in self.train:
            raise TrainConfigError(f"stage {self.name!r}: objectness_loss_weight trains the readout's score: "
                                   "add readout to train")
        if self.scenes not in SCENE_SOURCES:
            raise TrainConfigError(f"stage {self.name!r}: scenes must be one of {SCENE_SOURCES}, got {self.scenes!r}")
        if self.scenes == "generated" and self.memory != "oracle":
            raise TrainConfigError(f"stage {self.name!r}: scenes: generated gives the scenes' oracle memories, "
                                   "not rendered frames: set memory: oracle")


@dataclass
class TrainConfig:
    data: str                               # data set directory (`vlm2 sim dataset` layout)
    out: str                                # run directory: checkpoint/, state, log, plots
    stages: list[StageConfig]
    preset: str = "tiny"
    init_checkpoint: str | None = None      # start from these weights (default: the preset's init)
    # Instead: each named module (MODULES) from the checkpoint it maps to, the rest from the
    # preset's initialisation with `model` changes; e.g. a trained geometry encoder under a new
    # semantic encoder, or one run's perception under another run's language bridge.
    init_modules: dict[str, str] = field(default_factory=dict)
    # Training-only probes (trainer.PROBES) this run starts from, each mapped to the run directory
    # whose training state holds it, e.g. the category and point probes of the run the perception
    # comes from and the language probes of the run the bridge comes from. Probes taken count as
    # trained (a "perceived" stage reads the memory with the category and point probes).
    init_probes: dict[str, str] = field(default_factory=dict)
    # Model config fields (VLM2Config) changed from the preset's, for a run from the preset's
    # initialisation, e.g. {readout_pool: objectness}. Beside init_checkpoint, only the object
    # readout's run-time settings (object_memory.READOUT_SETTINGS), e.g. the per-class values
    # `vlm2 train --fit-readout` prints. The checkpoint records the result.
    model: dict = field(default_factory=dict)
    clip_frames: int = 16                   # frames per episode the stream is unrolled over
    questions_per_episode: int = 4
    # Generate each episode's questions again from its scene, this many per task, at the frame the
    # data set asks them (None: the data set's questions). More questions on the same frames cost
    # nothing to render or stream and give each memory more to answer.
    questions_per_task: int | None = None
    # With questions_per_task: this many of each training-only question that only the memory can
    # answer (sim.questions.MEMORY_TASKS: which quarter of the room an object is in, which of two
    # named objects lies further east, west, north or south, which of four furthest).
    memory_questions_per_task: int = 0
    episodes_per_step: int = 2
    pose_probability: float = 0.5           # share of clips given the camera poses (else predicted)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, StageConfig) else _make(StageConfig, s, "stages[]") for s in self.stages]
        if not self.stages:
            raise TrainConfigError("stages: at least one stage")
        if self.clip_frames < 2 or self.questions_per_episode < 1 or self.episodes_per_step < 1:
            raise TrainConfigError("clip_frames must be >= 2, questions_per_episode and episodes_per_step >= 1")
        if self.questions_per_task is not None and self.questions_per_task < 1:
            raise TrainConfigError(f"questions_per_task must be >= 1, got {self.questions_per_task}")
        if self.memory_questions_per_task < 0:
            raise TrainConfigError(f"memory_questions_per_task must be >= 0, got {self.memory_questions_per_task}")
        if self.memory_questions_per_task and self.questions_per_task is None:
            raise TrainConfigError("memory_questions_per_task needs questions_per_task: memory questions are "
                                   "generated with the others from each episode's scene")
        for stage in self.stages:
            if stage.scenes != "generated" and stage.generated_share == 0:
                continue
            if self.questions_per_task is None:
                raise TrainConfigError(f"stage {stage.name!r}: generated scenes ask questions_per_task "
                                       "questions of each task of each new scene; set questions_per_task")
            if self.memory_questions_per_task == 0 and set(stage.question_types) & set(MEMORY_TASKS):
                raise TrainConfigError(f"stage {stage.name!r}: question_types names memory tasks, which generated "
                                       "scenes ask memory_questions_per_task of; set it > 0")
        if len({s.grounding_layer for s in self.stages if s.probes_language_model}) > 1:
            raise TrainConfigError("the stages that train the grounding, gather, choice, direction, bearing or order probe "
                                   "read different grounding_layer values; there is one probe of each: give them "
                                   "the same layer")
        from ..model.vlm2 import VLM2Config
        unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(VLM2Config)})
        if unknown:
            raise TrainConfigError(f"model: unknown model config fields {unknown}")
        if not isinstance(self.init_modules, dict):
            raise TrainConfigError("init_modules maps each module to the checkpoint directory it is taken from, "
                                   f"e.g. {{geometry: ../out/run/checkpoint}}; got {self.init_modules!r}")
        check_modules(list(self.init_modules), "init_modules")
        if not isinstance(self.init_probes, dict):
            raise TrainConfigError("init_probes maps each training-only probe to the run directory it is taken from, "
                                   f"e.g. {{category: ../out/run, grounding: ../out/other}}; got {self.init_probes!r}")
        if self.init_modules and self.init_checkpoint:
            raise TrainConfigError("init_checkpoint takes the whole model, init_modules some modules from "
                                   "checkpoints and the rest fresh: use one")
        if self.model and self.init_checkpoint and not self.readout_settings_only():
            raise TrainConfigError("model changes the preset's config for a run from its initialisation; "
                                   "init_checkpoint's weights were trained with its own config (take some "
                                   "of its modules with init_modules); beside it, model may change only "
                                   f"object_readout's {READOUT_SETTINGS}")
        if not 0 <= self.pose_probability <= 1:
            raise TrainConfigError(f"pose_probability must be in [0, 1], got {self.pose_probability}")

    def readout_settings_only(self) -> bool:
        """Does `model` change only the object readout's run-time settings?"""
        return set(self.model) == {"object_readout"} and not weighted_readout_fields(self.model["object_readout"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _make(cls, values, where: str):
    if not isinstance(values, dict):
        raise TrainConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TrainConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(names)}")
    try:
        return cls(**values)
    except TypeError as e:          # a missing required key
        raise TrainConfigError(f"{where}: {e}") from None


def load_train_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TrainConfigError(f"{path}: cannot read ({e})") from e
    config = _make(TrainConfig, values, str(path))
    def resolve(value):                                  # relative paths: from the config's folder
        return str((path.parent / value).resolve()) if value and not Path(value).is_absolute() else value

    for key in ("data", "out", "init_checkpoint"):
        setattr(config, key, resolve(getattr(config, key)))
    config.init_modules = {module: resolve(str(checkpoint)) for module, checkpoint in config.init_modules.items()}
    config.init_probes = {probe: resolve(str(run)) for probe, run in config.init_probes.items()}
    return config
