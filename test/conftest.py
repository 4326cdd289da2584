"""Shared fixtures: small deterministic frames and a tiny engine with freshly initialised weights."""
import numpy as np
import pytest
import torch


def make_frames(n: int, height: int = 96, width: int = 128, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model_factory():
    """Builds the tiny preset's model with fixed untrained weights (independent of shipped ones)."""
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config

    def build(memory_mode: str = "dual", seed: int = 0):
        torch.manual_seed(seed)
        return build_model(preset_config("tiny", memory_mode=memory_mode))
    return build


@pytest.fixture
def tiny_engine(tiny_model_factory):
    from vlm2_ros.engine.engine import SpatialMemoryEngine
    return SpatialMemoryEngine(tiny_model_factory(), weights="test-untrained(seed=0)")
