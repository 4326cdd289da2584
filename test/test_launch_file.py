"""launch/vlm2.launch.py without `launch` (not installable here): it parses, declares the
arguments the README documents, and starts the node by the executable name the package installs.
test/test_vlm2_launch.py runs it for real where launch_testing is installed."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "vlm2.launch.py"
ARGUMENTS = {"namespace", "params_file", "use_sim_time", "autostart", "image_topic", "camera_info_topic",
             "log_level"}


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_launch_file_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared == ARGUMENTS
    readme = (ROOT / "README.md").read_text()
    for argument in ARGUMENTS:
        assert f"{argument}:=" in readme or f"`{argument}`" in readme, f"README does not document {argument}"


def test_launch_file_starts_the_installed_node_executable():
    tree = ast.parse(LAUNCH_FILE.read_text())
    (node,) = _calls(tree, "Node")
    keywords = {k.arg: k.value for k in node.keywords}
    assert keywords["package"].value == "vlm2_ros"
    assert keywords["executable"].value == "vlm2_node" and keywords["name"].value == "vlm2_node"
    assert (ROOT / "scripts" / "vlm2_node").is_file()
    assert "scripts/vlm2_node" in (ROOT / "CMakeLists.txt").read_text()
