"""Language bridge (tiny causal LM, tiny Qwen2.5-VL, LLaVA-Video's LM) and the word-level tokenizer."""
import re

import pytest
import torch

from vlm2_ros.model.hf_backbone import BackboneLoader
from vlm2_ros.model.language_bridge import (LanguageBridge, LanguageBridgeConfig, NumberHead, PromptBatch,
                                            memory_relevance)
from vlm2_ros.model.number_pointers import BoxLayout
from vlm2_ros.model.semantic_encoder import SemanticEncoder, SemanticEncoderConfig
from vlm2_ros.model.tiny_checkpoints import save_tiny_llava_onevision, save_tiny_qwen2_5_vl
from vlm2_ros.model.tiny_language_model import (DEFAULT_WORDS, build_tiny_language_model, build_word_tokenizer,
                                                build_word_vocabulary, create_tiny_language_model,
                                                default_vocabulary)

QUESTIONS = ["How many chair(s) are in this room?",
             "What is the size of this room (in square meters)? Options: A. 12 B. 20 C. 35 D. 50"]
ANSWERS = ["3", "B"]
SMALL_LM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return create_tiny_language_model(tmp_path_factory.mktemp("tiny_lm"), seed=3, **SMALL_LM)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def causal_bridge(tiny_dir):
    torch.manual_seed(0)
    return LanguageBridge(LanguageBridgeConfig(checkpoint_dir=str(tiny_dir), memory_dim=32))


@pytest.fixture(scope="module")
def qwen_bridge(qwen_dir):
    torch.manual_seed(0)
    return LanguageBridge(LanguageBridgeConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir), memory_dim=64,
                                               memory_entry_grid=(2, 2)))


def memory(m, c, seed=0):
    return torch.randn(len(QUESTIONS), m, c, generator=torch.Generator().manual_seed(seed))


def teacher_forced_argmax(bridge, memory_tokens, question, token_ids):
    """Greedy tokens re-predicted with the whole answer in one forward pass (the loss's positions)."""
    prompt = bridge.encode_prompts(memory_tokens.shape[1], [question])
    length = prompt.input_ids.shape[1]
    ids = torch.cat([prompt.input_ids, torch.tensor([token_ids])], dim=1)
    batch = PromptBatch(ids, torch.ones_like(ids), torch.full_like(ids, -100), prompt.memory_start, prompt.num_memory)
    with torch.no_grad():
        hidden = bridge._hidden(memory_tokens, batch).last_hidden_state
    return bridge.lm_head(hidden[0, length - 1:length - 1 + len(token_ids)]).argmax(-1).tolist()


# ----------------------------------------------------------------------------- tokenizer
def test_word_tokenizer_round_trips_numbers_letters_and_maps_unknowns():
    tok = build_word_tokenizer(default_vocabulary())
    for text in ["3.75", "12", "0.5 meters", "A", "B. 2.5", "How many chair(s) are in this room?",
                 "front-left", "Answer: D"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(tok("3.75", add_special_tokens=False)["input_ids"]) == ["▁", "3", ".", "7", "5"]
    ids = tok("the zebra", add_special_tokens=False)["input_ids"]
    assert ids[1] == tok.unk_token_id and ids[0] != tok.unk_token_id
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<unk>", "<bos>", "<eos>", "<memory>"]


def test_build_word_vocabulary_is_general_and_deterministic():
    texts = ["Where is the wombat?", "The wombat is 4.2 m away."]
    vocabulary = build_word_vocabulary(texts, extra_words=["kettle"])
    assert vocabulary == sorted(set(vocabulary)) == build_word_vocabulary(reversed(texts), ["kettle"])
    for piece in ["▁wombat", "▁Where", "▁The", "?", ".", "▁", "0", "9", "▁kettle", "▁Kettle", "kettle"]:
        assert piece in vocabulary
    assert "<unk>" not in vocabulary and "▁chair" not in vocabulary
    tok = build_word_tokenizer(vocabulary)
    assert tok.decode(tok("The wombat is 4.2 m away.", add_special_tokens=False)["input_ids"]) == \
        "The wombat is 4.2 m away."
    assert len(default_vocabulary()) > 3 * len(DEFAULT_WORDS) // 2


def test_vocabulary_version_2_reads_every_word_of_the_question_templates():
    from vlm2_ros.model.prompt import CHOICE_INSTRUCTION, OPEN_INSTRUCTION
    from vlm2_ros.sim.questions import TEMPLATES, TURNS
    from vlm2_ros.sim.scene import SEMANTIC_CLASSES

    texts = [re.sub(r"\{\w+\}", "chair", t) for templates in TEMPLATES.values() for t in templates]   # fillers known
    texts += [CHOICE_INSTRUCTION, OPEN_INSTRUCTION]
    texts += [*SEMANTIC_CLASSES, *TURNS, "Options:"]
    v1, v2 = (build_word_tokenizer(default_vocabulary(version)) for version in (1, 2))
    unknown = {version: [t for t in texts if tok.unk_token_id in tok(t, add_special_tokens=False)["input_ids"]]
               for version, tok in ((1, v1), (2, v2))}
    assert unknown[2] == []
    # version 1 is the shipped weights' and stays as it was, "further" and all
    assert any("further" in t for t in unknown[1]) and set(default_vocabulary(1)) < set(default_vocabulary(2))
    model, tok = build_tiny_language_model(vocabulary_version=2, **SMALL_LM)
    assert tok.get_vocab() == v2.get_vocab() and model.config.vocab_size == len(v2)
    with pytest.raises(ValueError, match="vocabulary_version"):
        default_vocabulary(3)


def test_tiny_lm_directory_loads_through_the_auto_classes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = build_tiny_language_model(seed=3, **SMALL_LM)
    loaded = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded_tok.special_tokens_map == tok.special_tokens_map
    text = "If I am standing by the door and facing the window, is the lamp to my left? 3.75"
    ids = loaded_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and loaded_tok.decode(ids) == text
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    # the default tiny LM: ~3.4 M parameters, same weights for the same seed, global RNG untouched
    state = torch.random.get_rng_state()
    a, _ = build_tiny_language_model(seed=1)
    b, _ = build_tiny_language_model(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert 3e6 < sum(p.numel() for p in a.parameters()) < 4e6
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ----------------------------------------------------------------------------- causal LM bridge
def test_prompt_layout_and_labels(causal_bridge):
    batch = causal_bridge.encode_prompts(8, QUESTIONS, ANSWERS)
    s = batch.memory_start
    assert (batch.input_ids[:, s:s + 8] == causal_bridge.placeholder_id).all()
    assert causal_bridge.tokenizer.convert_ids_to_tokens(causal_bridge.placeholder_id) == "<memory>"
    assert batch.input_ids[0, 0] == causal_bridge.tokenizer.bos_token_id
    for i, answer in enumerate(ANSWERS):
        labelled = batch.labels[i][batch.labels[i] != -100].tolist()
        assert labelled == causal_bridge.answer_ids(answer) and labelled[-1] == causal_bridge.eos_token_ids[0]
        assert batch.attention_mask[i].sum() == len(batch.input_ids[i]) - (batch.input_ids[i] == causal_bridge.pad_id).sum()


def test_causal_loss_backprops_and_handles_padding(causal_bridge):
    causal_bridge.zero_grad()
    mem = memory(8, 32)
    loss = causal_bridge.loss(mem, QUESTIONS, ANSWERS)
    assert torch.isfinite(loss)
    loss.backward()
    assert causal_bridge.projector.fc1.weight.grad.abs().sum() > 0
    assert causal_bridge.embed_tokens.weight.grad is not None
    # padding does not change anything: the batch loss is the token-weighted mean of single losses
    with torch.no_grad():
        single = [causal_bridge.loss(mem[i:i + 1], QUESTIONS[i:i + 1], ANSWERS[i:i + 1]) for i in range(2)]
        counts = [len(causal_bridge.answer_ids(a)) for a in ANSWERS]
        expected = sum(l * n for l, n in zip(single, counts)) / sum(counts)
        assert torch.allclose(causal_bridge.loss(mem, QUESTIONS, ANSWERS), expected, atol=1e-5)


@pytest.mark.parametrize("bridge_name", ["causal_bridge", "qwen_bridge"])
def test_loss_per_memory_equals_the_expanded_loss_and_backprops(bridge_name, request):
    # several questions on one memory share its keys/values (causal_lm): same value, same gradients
    bridge = request.getfixturevalue(bridge_name)
    dim = bridge.config.memory_dim
    mem = memory(8, dim)
    questions = [["How many chairs are in this room?", "Is the lamp to my left or right?", QUESTIONS[1]],
                 [QUESTIONS[0]]]
    answers = [["3", "left", ANSWERS[1]], [ANSWERS[0]]]
    expanded = mem[[0, 0, 0, 1]]
    bridge.zero_grad()
    reference = bridge.loss(expanded, [q for qs in questions for q in qs], [a for ans in answers for a in ans])
    reference.backward()
    grad = bridge.projector.fc1.weight.grad.clone()
    bridge.zero_grad()
    shared = bridge.loss_per_memory(mem, questions, answers)
    shared.backward()
    assert torch.allclose(shared, reference, atol=1e-5)
    assert torch.allclose(bridge.projector.fc1.weight.grad, grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="per memory set"):
        bridge.loss_per_memory(mem, questions, [["3"], [ANSWERS[0]]])


def test_option_text_answers_teach_the_options_text(tiny_dir):
    question = "Which quarter holds the bed?\nOptions:\nA. north-east\nB. south-west\nAnswer with the option's letter."
    letter = LanguageBridge(LanguageBridgeConfig(checkpoint_dir=str(tiny_dir), memory_dim=32))
    text = LanguageBridge(LanguageBridgeConfig(checkpoint_dir=str(tiny_dir), memory_dim=32,
                                               choice_answer="option_text"))
    assert letter.target_ids(question, "B") == letter.answer_ids("B")
    assert text.target_ids(question, "B") == text.answer_ids("south-west")
    # not a listed letter, or no option list: the answer itself
    assert text.target_ids(question, "C") == text.answer_ids("C")
    assert text.target_ids("How many beds are in this room?", "2") == text.answer_ids("2")
    batch = text.encode_prompts(4, [question], ["B"])
    assert batch.labels[0][batch.labels[0] != -100].tolist() == text.answer_ids("south-west")
    with pytest.raises(ValueError, match="choice_answer"):
        LanguageBridgeConfig(choice_answer="word")


@pytest.mark.parametrize("bridge_name", ["causal_bridge", "qwen_bridge"])
def test_option_scores_are_the_teacher_forced_log_likelihoods(bridge_name, request):
    bridge = request.getfixturevalue(bridge_name)
    mem = memory(8, bridge.config.memory_dim)[:1]
    question = "Is the lamp to my left, right, or back?"
    options = ["left", "right", "turn back"]
    scored = bridge.score_options(mem, question, options)
    with torch.no_grad():
        expected = [-float(bridge.loss(mem, [question], [o])) * len(bridge.answer_ids(o)) for o in options]
    assert torch.allclose(scored.log_likelihoods, torch.tensor(expected), atol=1e-4)
    # the memory's relevance as a whole prompt's forward pass gives it (plain positions score the
    # options over one run of the memory prefix)
    batch = bridge.encode_prompts(8, [question], [options[0]])
    with torch.no_grad():
        hidden = bridge._hidden(mem, batch).last_hidden_state[0]
    first_answer = int((batch.labels[0] != -100).nonzero()[0])
    relevance = memory_relevance(hidden[batch.memory_start:batch.memory_start + 8], hidden[first_answer - 1])
    assert torch.allclose(scored.memory_relevance, relevance, atol=1e-5)
    assert scored.memory_relevance.shape == (8,) and abs(float(scored.memory_relevance.sum()) - 1) < 1e-5
    with pytest.raises(ValueError, match="one memory set"):
        bridge.score_options(memory(8, bridge.config.memory_dim), question, options)


@pytest.mark.parametrize("bridge_name", ["causal_bridge", "qwen_bridge"])
def test_answer_pass_hidden_states_are_the_question_rows_of_a_whole_prompt(bridge_name, request):
    # the hidden states after layer k over each question's tokens, then its answer's, as a whole
    # prompt's forward pass gives them at those positions
    bridge = request.getfixturevalue(bridge_name)
    mem = memory(8, bridge.config.memory_dim)
    questions, answers = [[QUESTIONS[0], QUESTIONS[1]], [QUESTIONS[1]]], [[ANSWERS[0], ANSWERS[1]], [ANSWERS[1]]]
    with torch.no_grad():
        result = bridge.answer_pass(mem, questions, answers, hidden_layer=1)
        assert torch.allclose(result.loss, bridge.loss_per_memory(mem, questions, answers), atol=1e-5)
        # each question's own loss, as a prompt of that question alone gives it
        alone = [bridge.loss(mem[[m]], [q], [a]) for m, q, a in ((0, QUESTIONS[0], ANSWERS[0]),
                                                                 (0, QUESTIONS[1], ANSWERS[1]), (1, QUESTIONS[1], ANSWERS[1]))]
        assert torch.allclose(result.question_losses, torch.stack(alone), atol=1e-5)
        assert not result.question_losses.requires_grad
        batch = bridge.encode_prompts(8, [QUESTIONS[0], QUESTIONS[1], QUESTIONS[1]], [ANSWERS[0], ANSWERS[1], ANSWERS[1]])
        whole = bridge.decoder(inputs_embeds=bridge._inputs_embeds(mem[[0, 0, 1]], batch),
                               attention_mask=batch.attention_mask, position_ids=bridge.position_ids(batch),
                               output_hidden_states=True).hidden_states[1]
    start = batch.memory_start + batch.num_memory
    for row in range(3):
        length = int(batch.attention_mask[row].sum()) - start
        assert torch.allclose(result.hidden[row, :length], whole[row, start:start + length], atol=1e-4)
    assert bridge.answer_pass(mem, questions, answers).hidden is None
    with pytest.raises(ValueError, match="hidden_layer"):
        bridge.answer_pass(mem, questions, answers, hidden_layer=bridge.num_layers + 1)


@pytest.mark.parametrize("kind,pointers", [("causal_lm", False), ("qwen2_5_vl", False), ("causal_lm", True),
                                            ("qwen2_5_vl", True)])
def test_number_head_reads_the_answer_position_alike_in_training_and_at_a_question(kind, pointers, tiny_dir, qwen_dir):
    # the trainer's number loss reads answer_pass.final at answer_position (with memory pointers
    # also the question's and the memory's states, pointer_inputs); estimate_number reads the same
    # states at inference: the two must be one
    torch.manual_seed(0)
    config = (LanguageBridgeConfig(checkpoint_dir=str(tiny_dir), memory_dim=32, number_head=True,
                                   number_pointers=pointers) if kind == "causal_lm"
              else LanguageBridgeConfig(kind=kind, checkpoint_dir=str(qwen_dir), memory_dim=64, number_head=True,
                                        number_pointers=pointers))
    bridge = LanguageBridge(config, box_layout=BoxLayout(box_offset=11, scale_m=4.0) if pointers else None).eval()
    mem = memory(8, config.memory_dim)
    mem[:, -2:] = 0.0                         # empty tokens, as an object memory pads its unused ones
    with torch.no_grad():
        result = bridge.answer_pass(mem, [[QUESTIONS[0]], [QUESTIONS[0]]], [[ANSWERS[0]], ["12"]])
        states = result.final[:, bridge.answer_position(QUESTIONS[0])]
        inputs = bridge.pointer_inputs(result, [QUESTIONS[0]] * 2, [0, 1], mem) if pointers else None
        mean, std, reading = bridge.number_head(states, inputs)
    if pointers:
        assert reading.logits.shape == (2, 2, 8) and bool((reading.logits[..., -2:] < -1e3).all())
        assert torch.isfinite(reading.measures).all()
        bridge.number_head.measure_weights.bias.data.fill_(0.5)    # the measures now move the answer
        with torch.no_grad():
            mean, std, _ = bridge.number_head(states, inputs)
    for row in range(2):
        estimate = bridge.estimate_number(mem[[row]], QUESTIONS[0])
        assert estimate.log_mean == pytest.approx(float(mean[row]), abs=1e-4)
        assert estimate.log_std == pytest.approx(float(std[row]), rel=1e-4) and estimate.log_std > 0
        assert estimate.memory_relevance.shape == (8,) and abs(float(estimate.memory_relevance.sum()) - 1) < 1e-5
    with pytest.raises(ValueError, match="one memory set"):
        bridge.estimate_number(mem, QUESTIONS[0])


def test_number_head_likelihood_trains_and_a_bridge_without_one_says_so(tiny_dir, causal_bridge):
    head = NumberHead(16)
    hidden, values = torch.randn(32, 16, generator=torch.Generator().manual_seed(1)), torch.full((32,), 2.5)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    start_std = float(head(hidden)[1].mean())
    for _ in range(300):
        optimizer.zero_grad()
        loss = NumberHead.nll(*head(hidden)[:2], values).mean()
        loss.backward()
        optimizer.step()
    mean, std, _ = head(hidden)
    assert float((mean.exp() / values - 1).abs().median()) < 0.05 and float(std.median()) < start_std / 2
    assert causal_bridge.number_head is None
    with pytest.raises(RuntimeError, match="number_head"):
        causal_bridge.estimate_number(memory(8, 32)[:1], QUESTIONS[0])


def test_phrase_positions_point_at_the_last_token_of_each_whole_word_name(causal_bridge):
    question = "Of trash can, chair, tv, which (chair) lies furthest east? Options: A. trash can B. armchair"
    tokens = causal_bridge.tokenizer.convert_ids_to_tokens(
        causal_bridge.tokenizer(causal_bridge.question_text(question), add_special_tokens=False)["input_ids"])
    trash_can = causal_bridge.phrase_positions(question, "trash can")
    chair = causal_bridge.phrase_positions(question, "chair")
    assert len(trash_can) == 2 and [tokens[i] for i in trash_can] == ["▁can"] * 2
    assert [tokens[i].removeprefix("▁") for i in chair] == ["chair"] * 2       # not armchair
    assert tokens[trash_can[0] - 1] == "▁trash"
    assert causal_bridge.phrase_positions(question, "bed") == []


def test_causal_generate_relevance_and_memory_effect(causal_bridge):
    mem = memory(8, 32)[:1]
    out = causal_bridge.generate(mem, QUESTIONS[0], max_new_tokens=5)
    assert isinstance(out.text, str) and len(out.token_ids) == 5      # random weights: no EOS in 5 steps
    assert len(out.token_probs) == len(out.token_ids)
    assert all(0.0 <= p <= 1.0 for p in out.token_probs)
    assert out.memory_relevance.shape == (8,) and (out.memory_relevance >= 0).all()
    assert torch.isclose(out.memory_relevance.sum(), torch.tensor(1.0))
    assert teacher_forced_argmax(causal_bridge, mem, QUESTIONS[0], out.token_ids) == out.token_ids
    with torch.no_grad():
        a = causal_bridge.next_token_logits(mem, QUESTIONS[:1])
        b = causal_bridge.next_token_logits(mem + 1.0, QUESTIONS[:1])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("bridge_name", ["causal_bridge", "qwen_bridge"])
def test_samples_share_the_prompt_and_are_reproducible(bridge_name, request, monkeypatch):
    bridge = request.getfixturevalue(bridge_name)
    mem = memory(8, bridge.config.memory_dim)[:1]
    alone = bridge.generate(mem, QUESTIONS[0], max_new_tokens=4)
    out = bridge.generate(mem, QUESTIONS[0], max_new_tokens=4, num_samples=12, seed=5)
    assert alone.samples == () and len(out.samples) == 12 and all(isinstance(t, str) for t in out.samples)
    assert out.text == alone.text and out.token_ids == alone.token_ids       # the greedy row is unchanged
    assert out.samples == bridge.generate(mem, QUESTIONS[0], max_new_tokens=4, num_samples=12, seed=5).samples
    assert len(set(out.samples)) > 1                 # random weights: a flat distribution
    assert bridge.generate(mem, QUESTIONS[0], num_samples=3, should_stop=lambda: True) is None
    # every row drawing its most likely token gives the greedy answer: the rows' shared keys/values
    # and positions are those of a generation without samples
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, generator=None: probs.argmax(-1, keepdim=True))
    assert bridge.generate(mem, QUESTIONS[0], max_new_tokens=4, num_samples=4).samples == (alone.text,) * 4


def test_frozen_language_model_still_trains_the_projector(tiny_dir):
    bridge = LanguageBridge(LanguageBridgeConfig(checkpoint_dir=str(tiny_dir), memory_dim=48,
                                                 freeze_language_model=True))
    assert not bridge.projector.residual                     # 48 -> 64: plain MLP
    bridge.loss(memory(4, 48), QUESTIONS, ANSWERS).backward()
    assert bridge.projector.fc1.weight.grad.abs().sum() > 0 and bridge.projector.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bridge.decoder.parameters())


def test_default_bridge_is_the_embedded_tiny_lm():
    bridge = LanguageBridge(LanguageBridgeConfig())
    assert bridge.hidden_size == 256 and bridge.projector.residual     # old checkpoints: not standardised
    assert 3e6 < sum(p.numel() for p in bridge.parameters()) < 4e6
    out = bridge.generate(torch.randn(1, 12, 256), "How many lamp(s) are in this room?", max_new_tokens=2)
    assert out.memory_relevance.shape == (12,)
    for bad in (dict(kind="llm"), dict(kind="qwen2_5_vl"), dict(memory_dim=0), dict(memory_entry_grid=(0, 2)),
                dict(dtype="int8"), dict(system_prompt=" "), dict(checkpoint_dir="/x", tiny_lm={"seed": 1})):
        with pytest.raises(ValueError):
            LanguageBridgeConfig(**bad)


def test_standardized_memory_keeps_small_scene_differences_apart():
    from vlm2_ros.model.language_bridge import MemoryProjector

    torch.manual_seed(0)
    offset = 17.0 * torch.nn.functional.normalize(torch.randn(32), dim=0)        # shared by every token
    tokens = offset + 0.2 * torch.randn(8, 20, 32)                               # [E,M,C] scenes differ by ~1 %
    plain, standardized = MemoryProjector(32, 32, 32), MemoryProjector(32, 32, 32, standardize=True)
    assert plain.residual and not standardized.residual

    def spread(projector):          # how far apart two scenes' projected tokens are, relative to their size
        out = projector(tokens)
        return float((out[0] - out[1]).norm(dim=-1).mean() / out.norm(dim=-1).mean())

    with torch.no_grad():
        assert spread(plain) < 0.15                         # the offset swamps the scenes
        standardized.standardize.momentum = None            # cumulative statistics: exact after one batch
        standardized.train()(tokens)                        # running statistics from a training batch
        assert spread(standardized.eval()) > 0.5
    assert "standardize.running_mean" in dict(standardized.named_buffers())     # saved with the weights


def test_bfloat16_language_model_on_cpu(tiny_dir):
    bridge = LanguageBridge(LanguageBridgeConfig(checkpoint_dir=str(tiny_dir), memory_dim=32, dtype="bfloat16"))
    assert bridge.embed_tokens.weight.dtype == torch.bfloat16
    assert bridge.projector.fc1.weight.dtype == torch.float32
    loss = bridge.loss(memory(8, 32), QUESTIONS, ANSWERS)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert bridge.projector.fc1.weight.grad.abs().sum() > 0
    out = bridge.generate(memory(8, 32)[:1], QUESTIONS[0], max_new_tokens=3)
    assert all(0.0 <= p <= 1.0 for p in out.token_probs) and out.memory_relevance.dtype == torch.float32


# ----------------------------------------------------------------------------- Qwen2.5-VL bridge
def test_qwen_positions_are_3d_mrope(qwen_bridge):
    seen = []
    hook = qwen_bridge.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True)
    try:
        qwen_bridge.loss(memory(12, 64), QUESTIONS, ANSWERS)
        qwen_bridge.generate(memory(12, 64)[:1], QUESTIONS[0], max_new_tokens=3)
    finally:
        hook.remove()
    assert all(p.ndim == 3 and p.shape[0] == 3 for p in seen)
    positions = seen[0][:, 0]                                    # [3, L] of the first row
    s = qwen_bridge.encode_prompts(12, QUESTIONS).memory_start
    block = positions[:, s:s + 12]                               # 3 entries of 2x2 tokens
    assert block[0].tolist() == [s] * 4 + [s + 2] * 4 + [s + 4] * 4      # time: 1 s apart, 2 tokens/s
    assert block[1].tolist() == [s, s, s + 1, s + 1] * 3 and block[2].tolist() == [s, s + 1] * 6
    text = positions[:, s + 12:]
    assert (text[0] == text[1]).all() and text[0, 0] == block.max() + 1    # text resumes after the memory
    assert seen[1].shape[1] == 1 and all(p.shape[-1] == 1 for p in seen[2:])  # prompt, then one token per step


def test_qwen_loss_generate_and_memory_effect(qwen_bridge):
    qwen_bridge.zero_grad()
    mem = memory(12, 64)
    loss = qwen_bridge.loss(mem, QUESTIONS, ANSWERS)
    assert torch.isfinite(loss)
    loss.backward()
    assert qwen_bridge.projector.fc2.weight.grad.abs().sum() > 0
    out = qwen_bridge.generate(mem[:1], QUESTIONS[0], max_new_tokens=4)
    assert out.memory_relevance.shape == (12,) and all(0.0 <= p <= 1.0 for p in out.token_probs)
    assert len(out.token_ids) == 4 and out.text == qwen_bridge.tokenizer.decode(out.token_ids).strip()
    assert teacher_forced_argmax(qwen_bridge, mem[:1], QUESTIONS[0], out.token_ids) == out.token_ids
    with torch.no_grad():
        a = qwen_bridge.next_token_logits(mem, QUESTIONS)
        b = qwen_bridge.next_token_logits(torch.cat([mem[:, 4:], mem[:, :4]], dim=1), QUESTIONS)
    assert not torch.allclose(a, b)                              # order of entries matters (positions)
    with pytest.raises(ValueError, match="whole entries"):
        qwen_bridge.loss(memory(10, 64), QUESTIONS, ANSWERS)


def test_qwen_bridge_in_bfloat16(qwen_dir):
    bridge = LanguageBridge(LanguageBridgeConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir), memory_dim=64,
                                                 dtype="bfloat16"))
    assert torch.isfinite(bridge.loss(memory(8, 64), QUESTIONS, ANSWERS))
    assert bridge.generate(memory(8, 64)[:1], QUESTIONS[0], max_new_tokens=2).memory_relevance.shape == (8,)


# ----------------------------------------------------------------------------- LLaVA-Video
def test_llava_checkpoint_shared_by_encoder_and_bridge(tmp_path):
    directory = save_tiny_llava_onevision(tmp_path / "llava")
    loader = BackboneLoader()
    encoder = SemanticEncoder(SemanticEncoderConfig(kind="llava_video", checkpoint_dir=str(directory), out_dim=64),
                              loader=loader)
    bridge = LanguageBridge(LanguageBridgeConfig(checkpoint_dir=str(directory), memory_dim=64), loader=loader)
    assert len(loader) == 1
    whole = loader.get(directory).model
    assert type(whole).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert encoder.backend.tower is whole.model.vision_tower and bridge.decoder is whole.model.language_model
    tokens = encoder(torch.rand(1, 3, 84, 112)).flatten(1, 2)               # [1, 9, 64] in the LM's space
    out = bridge.generate(tokens, QUESTIONS[0], max_new_tokens=3)
    assert out.memory_relevance.shape == (9,)
    assert torch.isfinite(bridge.loss(tokens.expand(2, -1, -1), QUESTIONS, ANSWERS))
    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        LanguageBridge(LanguageBridgeConfig(kind="qwen2_5_vl", checkpoint_dir=str(directory), memory_dim=64),
                       loader=loader)


def test_generation_stops_at_eos_and_leaves_it_out(qwen_bridge):
    mem = memory(12, 64)[:1]
    full = qwen_bridge.generate(mem, QUESTIONS[0], max_new_tokens=4)
    eos = qwen_bridge.eos_token_ids
    try:
        qwen_bridge.eos_token_ids = (full.token_ids[1],)
        stopped = qwen_bridge.generate(mem, QUESTIONS[0], max_new_tokens=4)
        qwen_bridge.eos_token_ids = (full.token_ids[0],)
        empty = qwen_bridge.generate(mem, QUESTIONS[0], max_new_tokens=4)
    finally:
        qwen_bridge.eos_token_ids = eos
    assert stopped.token_ids == full.token_ids[:1] and stopped.token_probs == full.token_probs[:1]
    assert empty.text == "" and empty.token_ids == [] and empty.token_probs == []
    assert empty.memory_relevance.shape == (12,) and torch.isclose(empty.memory_relevance.sum(), torch.tensor(1.0))
    # one answer token: its relevance is the first step's, the same step an empty answer reports
    assert torch.allclose(stopped.memory_relevance, empty.memory_relevance)
