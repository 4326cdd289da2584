"""What the node trusts: nothing on a load path unpickles or runs remote code, snapshot reads stay
inside the snapshot directory, and the README says what is trusted and what is not."""
import json
import os
from pathlib import Path

import pytest
import torch

from vlm2_ros.engine.snapshot import INDEX_NAME, SnapshotError, read_snapshot, write_snapshot
from vlm2_ros.reliability.security import scan_source, scan_tree

ROOT = Path(__file__).resolve().parents[1]


def test_no_unsafe_loading_anywhere_in_the_package():
    scanned, findings = scan_tree(ROOT / "vlm2_ros")
    assert scanned > 50
    assert not findings, "\n".join(str(f) for f in findings)


@pytest.mark.parametrize("source, what", [
    ("import pickle", "imports pickle"),
    ("from joblib import load", "imports joblib"),
    ("import torch\ntorch.load(path)", "torch.load without weights_only=True"),
    ("import torch\ntorch.load(path, weights_only=False)", "torch.load without weights_only=True"),
    ("import numpy as np\nnp.load(path)", "np.load without allow_pickle=False"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)", "yaml.load (use yaml.safe_load)"),
    ("AutoModel.from_pretrained(path, trust_remote_code=True)", "trust_remote_code not False"),
    ("AutoModel.from_pretrained(path, trust_remote_code=flag)", "trust_remote_code not False"),
    ("eval(text)", "builtin eval()"),
])
def test_scanner_finds_each_unsafe_pattern(source, what):
    assert [f.what for f in scan_source(source)] == [what]


def test_scanner_accepts_the_safe_forms_and_mentions():
    safe = ('"""pickle files are never loaded"""\n# torch.load(x) would unpickle\n'
            "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nyaml.safe_load(t)\n"
            "AutoConfig.from_pretrained(p, trust_remote_code=False)\nmodel.eval()\n")
    assert scan_source(safe) == []


@pytest.fixture
def snapshot(tmp_path):
    directory = tmp_path / "snapshot"
    write_snapshot(directory, {"a": torch.arange(4)}, {"n": 1})
    return directory


def _point_index_at(directory: Path, name: str) -> None:
    index = json.loads((directory / INDEX_NAME).read_text())
    index["tensor_file"] = name
    (directory / INDEX_NAME).write_text(json.dumps(index))


@pytest.mark.parametrize("name", ["../x.safetensors", "../../x.safetensors", "/tmp/x.safetensors",
                                  "sub/x.safetensors", "x.pt"])
def test_snapshot_reads_are_confined_to_the_snapshot_directory(snapshot, name):
    """The index may name only a .safetensors file directly inside the directory."""
    outside = snapshot.parent / "x.safetensors"
    outside.write_bytes(next(snapshot.glob("memory-*.safetensors")).read_bytes())
    _point_index_at(snapshot, name)
    with pytest.raises(SnapshotError, match="invalid tensor_file"):
        read_snapshot(snapshot)


def test_snapshot_file_that_is_a_symlink_out_of_the_directory_is_refused(snapshot):
    tensor_file = next(snapshot.glob("memory-*.safetensors"))
    outside = snapshot.parent / "elsewhere.safetensors"
    tensor_file.rename(outside)
    os.symlink(outside, tensor_file)
    with pytest.raises(SnapshotError, match="leads outside the snapshot directory"):
        read_snapshot(snapshot)


def test_snapshot_writes_stay_in_the_snapshot_directory(tmp_path):
    directory = tmp_path / "snapshot"
    for n in range(3):
        write_snapshot(directory, {"a": torch.arange(4) + n}, {"n": n})
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.parent != directory) == []
    assert len(list(directory.iterdir())) == 2      # the index and one tensor file


def test_readme_states_what_the_node_trusts():
    readme = (ROOT / "README.md").read_text()
    assert "### What the node trusts" in readme
    section = readme.split("### What the node trusts", 1)[1].split("\n## ", 1)[0]
    for term in ("pickle", "trust_remote_code", "snapshot.dir", "model.checkpoint_dir", "camera", "query"):
        assert term in section, term
