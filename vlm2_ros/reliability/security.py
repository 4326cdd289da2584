"""Static scan for unsafe loading: code that would run what a file or a hub hands it.

Walks the Python syntax tree (so a comment or docstring that mentions pickle is not a finding)
and reports, with file and line:
- importing a module that unpickles or evaluates data: pickle, cPickle, dill, cloudpickle,
  joblib, shelve, marshal;
- torch.load without weights_only=True;
- numpy.load without allow_pickle=False;
- yaml.load / yaml.unsafe_load / yaml.full_load (yaml.safe_load is fine);
- trust_remote_code set to anything but False;
- the builtins eval and exec.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _dotted(node: ast.AST) -> str:
    """'torch.load' for the call target torch.load (attribute chains of names only)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def scan_source(source: str, path: str = "<string>") -> list[Finding]:
    findings = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    findings.append(Finding(path, node.lineno, f"imports {name}"))
        if not isinstance(node, ast.Call):
            continue
        target = _dotted(node.func)
        if target in ("torch.load",) and not _keyword_is(node, "weights_only", True):
            findings.append(Finding(path, node.lineno, "torch.load without weights_only=True"))
        elif target in ("np.load", "numpy.load") and not _keyword_is(node, "allow_pickle", False):
            findings.append(Finding(path, node.lineno, f"{target} without allow_pickle=False"))
        elif target in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            findings.append(Finding(path, node.lineno, f"{target} (use yaml.safe_load)"))
        elif target in ("eval", "exec"):
            findings.append(Finding(path, node.lineno, f"builtin {target}()"))
        for keyword in node.keywords:
            if keyword.arg == "trust_remote_code" and not (isinstance(keyword.value, ast.Constant)
                                                           and keyword.value.value is False):
                findings.append(Finding(path, node.lineno, "trust_remote_code not False"))
    return findings


def scan_tree(root: Path) -> tuple[int, list[Finding]]:
    """(files scanned, findings) for every .py file under root."""
    files = sorted(Path(root).rglob("*.py"))
    findings = []
    for path in files:
        findings += scan_source(path.read_text(encoding="utf-8"), str(path))
    return len(files), findings
