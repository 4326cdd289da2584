"""Working memory FIFO, episodic replacement, and the gated dual-memory read."""
import pytest
import torch
import torch.nn.functional as F

from vlm2_ros.model.dual_memory import DualMemory, DualMemoryConfig, MemoryState
from vlm2_ros.model.episodic_memory import EpisodicMemory, EpisodicMemoryConfig, place_redundancy
from vlm2_ros.model.provenance import Provenance
from vlm2_ros.model.working_memory import WorkingMemory

torch.manual_seed(0)


def prov(i: int, b: int = 1, n: int = 1) -> Provenance:
    """Frame i's provenance; each of its n tokens carries the point (i, token, 0)."""
    points = torch.stack([torch.full((n,), float(i)), torch.arange(n).float(), torch.zeros(n)], dim=-1)
    return Provenance.single(torch.full((b,), 1000 * i), torch.full((b,), i), points.expand(b, n, 3))


def test_working_memory_holds_exactly_the_last_entries():
    wm = WorkingMemory.empty(capacity=3, batch_size=1, num_tokens=2, dim=4)
    frames = [torch.full((1, 2, 4), float(i)) for i in range(7)]
    for i, f in enumerate(frames):
        wm = wm.push(f, prov(i, n=2))
        assert len(wm) == min(i + 1, 3)
    assert torch.equal(wm.tokens[0], torch.stack([frames[4][0], frames[5][0], frames[6][0]]))
    assert wm.provenance.frame_index.tolist() == [[4, 5, 6]]
    assert wm.provenance.stamp_ns.tolist() == [[4000, 5000, 6000]]


def test_working_memory_push_does_not_mutate_previous_state():
    wm = WorkingMemory.empty(2, 1, 1, 2).push(torch.ones(1, 1, 2), prov(0))
    before = wm.tokens.clone()
    wm.push(torch.zeros(1, 1, 2), prov(1)).push(torch.zeros(1, 1, 2), prov(2))
    assert torch.equal(wm.tokens, before)


def distinct_views(n: int, tokens: int = 3, dim: int = 16) -> list[torch.Tensor]:
    """Views whose token means are orthogonal, so their cosine similarity is ~0."""
    basis = torch.eye(dim)
    return [(basis[i].expand(tokens, dim) + 0.01 * torch.randn(tokens, dim)).unsqueeze(0) for i in range(n)]


def test_episodic_memory_appends_until_full_then_never_exceeds_capacity():
    em = EpisodicMemory.empty(EpisodicMemoryConfig(capacity=4), batch_size=1, num_tokens=3, dim=16)
    views = distinct_views(10)
    for i, v in enumerate(views):
        em, slot = em.insert(v, prov(i, n=3))
        assert len(em) == min(i + 1, 4)
        assert int(slot) == (i if i < 4 else int(slot))
    assert len(em) == 4 and em.replacements == 6


def test_repeated_view_replaces_its_twin_and_new_view_survives():
    em = EpisodicMemory.empty(EpisodicMemoryConfig(capacity=4), batch_size=1, num_tokens=3, dim=16)
    views = distinct_views(6)
    for i in range(4):
        em, _ = em.insert(views[i], prov(i, n=3))
    twin_of_2 = views[2] + 0.01 * torch.randn_like(views[2])
    em, slot = em.insert(twin_of_2, prov(10, n=3))
    assert int(slot) == 2                                   # the twin replaced entry 2 ...
    assert torch.equal(em.tokens[0, 2], twin_of_2[0])
    assert em.provenance.frame_index.tolist() == [[0, 1, 10, 3]]
    for i in (0, 1, 3):                                     # ... and nothing else changed
        assert torch.equal(em.tokens[0, i], views[i][0])
    # A new view takes some slot; afterwards, repeated views of the other places keep
    # replacing their own twins and never the new view.
    em, new_slot = em.insert(views[4], prov(11, n=3))
    others = [i for i in range(4) if i != int(new_slot)]
    for step in range(3):
        for slot in others:
            twin = em.tokens[:, slot] + 0.01 * torch.randn_like(em.tokens[:, slot])
            em, twin_slot = em.insert(twin, prov(20 + step, n=3))
            assert int(twin_slot) == slot
    assert torch.equal(em.tokens[0, int(new_slot)], views[4][0])
    assert em.provenance.frame_index[0, int(new_slot)] == 11


def test_episodic_replacement_picks_highest_cosine_per_batch_element():
    em = EpisodicMemory.empty(EpisodicMemoryConfig(capacity=3), batch_size=2, num_tokens=2, dim=8)
    for i in range(3):
        em, _ = em.insert(torch.randn(2, 2, 8), prov(i, b=2, n=2))
    query = torch.randn(2, 2, 8)
    keys = F.normalize(em.tokens.mean(2), dim=-1)
    expected = (keys @ F.normalize(query.mean(1), dim=-1).unsqueeze(-1)).squeeze(-1).argmax(1)
    em2, slots = em.insert(query, prov(5, b=2, n=2))
    assert slots.tolist() == expected.tolist()
    for b in range(2):
        assert torch.equal(em2.tokens[b, slots[b]], query[b])


def test_dual_memory_gate_matches_equation():
    dm = DualMemory(DualMemoryConfig(dim=8, num_heads=2)).eval()
    m_w, m_e = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    memory, g = dm.combine(m_w, m_e)
    g_ref = torch.sigmoid(dm.gate.fc2(F.gelu(dm.gate.fc1(torch.cat([m_w, m_e], -1)))))
    assert torch.allclose(g, g_ref) and ((g > 0) & (g < 1)).all()
    assert torch.allclose(memory, g_ref * m_w + (1 - g_ref) * m_e, atol=1e-6)


def test_dual_memory_step_reads_window_including_current_frame_and_episodic_before_insert():
    dm = DualMemory(DualMemoryConfig(dim=8, num_heads=2, working={"capacity": 2},
                                     episodic={"capacity": 3})).eval()
    state = dm.empty_state(batch_size=1, num_tokens=3)
    frames = [torch.randn(1, 3, 8) for _ in range(5)]
    with torch.no_grad():
        for i, h in enumerate(frames):
            prev: MemoryState = state
            memory, state, slot = dm(h, state, prov(i, n=3))
            working = prev.working.push(h, prov(i, n=3))
            m_w = dm.working_read(h, working.tokens)
            if i == 0:
                expected = m_w
            else:
                expected, _ = dm.combine(m_w, dm.episodic_read(h, prev.episodic.tokens))
            assert torch.allclose(memory, expected, atol=1e-6)
            assert torch.equal(state.episodic.tokens[0, int(slot)], memory[0])
    assert len(state.working) == 2 and len(state.episodic) == 3


@pytest.mark.parametrize("mode,working_len,episodic_len", [
    ("dual", 4, 5), ("working", 4, 0), ("episodic", 1, 5), ("none", 1, 0)])
def test_memory_modes(mode, working_len, episodic_len):
    dm = DualMemory(DualMemoryConfig(dim=8, num_heads=2, mode=mode, working={"capacity": 4},
                                     episodic={"capacity": 5})).eval()
    state = dm.empty_state(1, 3)
    with torch.no_grad():
        for i in range(9):
            _, state, _ = dm(torch.randn(1, 3, 8), state, prov(i, n=3))
    assert (len(state.working), len(state.episodic)) == (working_len, episodic_len)


def test_bad_memory_config_is_rejected_with_clear_message():
    with pytest.raises(ValueError, match="memory mode"):
        DualMemoryConfig(mode="triple")
    with pytest.raises(ValueError, match="capacity"):
        DualMemoryConfig(working={"capacity": 0})


def test_memory_step_is_differentiable_for_training():
    dm = DualMemory(DualMemoryConfig(dim=8, num_heads=2, working={"capacity": 2},
                                     episodic={"capacity": 2}))
    state = dm.empty_state(2, 3)
    for i in range(5):
        memory, state, _ = dm(torch.randn(2, 3, 8, requires_grad=True), state, prov(i, b=2, n=3))
    (state.episodic.tokens.sum() + memory.sum()).backward()
    assert dm.gate.fc1.weight.grad is not None and torch.isfinite(dm.gate.fc1.weight.grad).all()


def test_objectness_readout_gives_each_cell_its_most_object_like_token_unblended():
    from vlm2_ros.model.memory_readout import MemoryReadout

    readout = MemoryReadout(4, (6, 8), (2, 2), pool="objectness")
    with torch.no_grad():                            # the score: channel 0
        readout.objectness.weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
        readout.objectness.bias.zero_()
    tokens = torch.zeros(1, 2, 48, 4)                # [B,n,hs*ws,C]
    tokens[0, 1, 4 * 8 + 6] = torch.tensor([5.0, 7, 0, 0])   # entry 1, row 4, column 6: cell (1, 1)
    tokens[0, 1, 5 * 8 + 7] = torch.tensor([4.0, 1, 1, 1])   # same cell, lower score
    tokens[0, 0, 0 * 8 + 3] = torch.tensor([2.0, 0, 9, 0])   # entry 0, row 0, column 3: cell (0, 0)
    pooled = readout.pool(tokens)                    # [1,2,4,4]
    assert torch.equal(pooled[0, 1, 3], tokens[0, 1, 4 * 8 + 6]) and torch.equal(pooled[0, 0, 0], tokens[0, 0, 3])
    assert torch.equal(pooled[0, 0, 3], torch.zeros(4))           # a cell of plain tokens gives one of them
    mean = MemoryReadout(4, (6, 8), (2, 2)).pool(tokens)
    assert torch.allclose(mean[0, 1, 3], (tokens[0, 1, 4 * 8 + 6] + tokens[0, 1, 5 * 8 + 7]) / 12)   # blended


def test_objectness_readout_needs_whole_cells_and_a_known_pool():
    from vlm2_ros.model.memory_readout import MemoryReadout

    with pytest.raises(ValueError, match="whole cells"):
        MemoryReadout(4, (6, 8), (4, 3), pool="objectness")
    with pytest.raises(ValueError, match="readout_pool"):
        MemoryReadout(4, (6, 8), (2, 2), pool="max")


def test_carried_points_move_with_their_entries():
    """Each entry keeps the points of the frame it came from, through the FIFO and replacement."""
    wm = WorkingMemory.empty(capacity=2, batch_size=1, num_tokens=3, dim=4)
    for i in range(5):
        wm = wm.push(torch.randn(1, 3, 4), prov(i, n=3))
    assert wm.provenance.patch_points.shape == (1, 2, 3, 3)
    assert wm.provenance.patch_points[0, :, 0, 0].tolist() == [3.0, 4.0]      # frames 3 and 4
    assert wm.provenance.patch_points[0, 1, :, 1].tolist() == [0.0, 1.0, 2.0]  # token by token
    views = distinct_views(3, tokens=3, dim=16)
    em = EpisodicMemory.empty(EpisodicMemoryConfig(capacity=3), batch_size=1, num_tokens=3, dim=16)
    for i in range(3):
        em, _ = em.insert(views[i], prov(i, n=3))
    em, slot = em.insert(views[1] + 0.01, prov(7, n=3))                      # replaces frame 1's entry
    assert int(slot) == 1
    assert em.provenance.patch_points[0, :, 0, 0].tolist() == [0.0, 7.0, 2.0]


def placed(i: int, centre: tuple[float, float], posed: bool = True) -> Provenance:
    """Frame i's provenance, its 3 patches within 0.1 m of `centre` on the floor plane."""
    points = torch.tensor([[centre[0] + 0.1 * k, centre[1], 1.0] for k in range(3)])[None]   # [1,3,3]
    pose = torch.eye(4, dtype=torch.float64)[None] if posed else None
    return Provenance.single(torch.tensor([i]), torch.tensor([i]), points, pose)


def test_place_redundancy_is_the_share_of_patches_another_entry_covers():
    points = torch.tensor([[[0.1, 0.1, 0.1], [3.1, 0.1, 0.1]],      # entry 0: one patch shared, one alone
                           [[0.2, 0.2, 0.2], [0.3, 0.3, 0.3]],      # entry 1: both where entry 0's first is
                           [[9.1, 9.1, 0.1], [9.2, 9.2, 0.2]]])[None]  # entry 2: a place of its own
    assert place_redundancy(points, 0.5).tolist() == [[0.5, 1.0, 0.0]]
    assert place_redundancy(points, 50.0).tolist() == [[1.0, 1.0, 1.0]]   # one cell holds everything


@pytest.mark.parametrize("replacement, posed, replaced", [("place", True, 1), ("appearance", True, 2),
                                                          ("place", False, 2)])
def test_place_replacement_keeps_the_places_only_one_entry_shows(replacement, posed, replaced):
    """Entries 0 and 1 show one place, entry 2 another; the new view shows a third and looks most like
    entry 2. By place, one of the twins goes (1: the one more like the new view); by appearance, or
    without poses, entry 2 goes and its place is forgotten."""
    views = distinct_views(4, tokens=3, dim=16)
    em = EpisodicMemory.empty(EpisodicMemoryConfig(capacity=3, replacement=replacement), batch_size=1,
                              num_tokens=3, dim=16)
    for i, (view, centre) in enumerate(zip(views, [(0.0, 0.0), (0.05, 0.0), (5.0, 5.0)])):
        em, _ = em.insert(view, placed(i, centre, posed))
    new = views[2] + 0.5 * views[1]
    em, slot = em.insert(new, placed(3, (-5.0, 5.0), posed))
    assert int(slot) == replaced and em.provenance.frame_index[0, replaced] == 3
    assert torch.equal(em.tokens[0, replaced], new[0]) and em.replacements == 1


def test_episodic_replacement_is_validated():
    with pytest.raises(ValueError, match="replacement must be one of"):
        EpisodicMemoryConfig(replacement="newest")
    with pytest.raises(ValueError, match="place_cell_m"):
        EpisodicMemoryConfig(place_cell_m=0.0)



def test_a_patch_inherits_the_first_sighting_of_its_place_from_posed_remembered_patches():
    remembered = placed(2, (0.0, 0.0)).append(placed(5, (3.0, 0.0)), keep_last=4)
    new = placed(9, (3.0, 0.0)).with_first_sightings([remembered], cell_m=0.5)
    assert new.first_seen.tolist() == [[[5, 5, 5]]] and new.frame_index.tolist() == [[9]]
    assert placed(9, (7.0, 7.0)).with_first_sightings([remembered], 0.5).first_seen.tolist() == [[[9, 9, 9]]]
    # no common world frame: an unposed view inherits nothing, an unposed memory hands nothing on
    assert placed(9, (3.0, 0.0), posed=False).with_first_sightings([remembered], 0.5).first_seen.tolist() \
        == [[[9, 9, 9]]]
    unposed = placed(2, (3.0, 0.0), posed=False)
    assert placed(9, (3.0, 0.0)).with_first_sightings([unposed], 0.5).first_seen.tolist() == [[[9, 9, 9]]]
    # a patch keeps its own frame when that is earlier (never later than the frame itself)
    early = Provenance.single(torch.tensor([1]), torch.tensor([1]), placed(0, (3.0, 0.0)).patch_points[:, 0],
                              torch.eye(4, dtype=torch.float64)[None])
    assert early.with_first_sightings([remembered], 0.5).first_seen.tolist() == [[[1, 1, 1]]]


def test_the_first_sighting_of_a_place_outlives_the_entries_that_saw_it():
    """Two episodic entries and a one-entry window see place A at frame 0, B at frame 1, then A for
    six frames: each view of A overwrites the last entry of A, frame 0's among them, and A's
    patches still say frame 0."""
    memory = DualMemory(DualMemoryConfig(dim=16, num_heads=2, working={"capacity": 1},
                                         episodic={"capacity": 2, "replacement": "place"})).eval()
    state = memory.empty_state(1, 3)
    with torch.no_grad():
        for i, centre in enumerate([(0.0, 0.0), (5.0, 0.0)] + [(0.0, 0.0)] * 6):
            _, state, _ = memory(torch.randn(1, 3, 16), state, placed(i, centre))
    assert state.episodic.provenance.frame_index.tolist() == [[7, 1]]
    assert state.episodic.provenance.first_seen.tolist() == [[[0, 0, 0], [1, 1, 1]]]
    assert state.working.provenance.first_seen.tolist() == [[[0, 0, 0]]]
