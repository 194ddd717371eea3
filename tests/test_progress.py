"""Long loops report progress through edgepipe.progress; only the CLI's reporter writes anything."""

import io
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe import progress
from edgepipe.cli import progress_view


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, label, total):
        self.events.append(("start", label, total))

    def update(self, label, done, total):
        self.events.append(("update", label, done, total))

    def finish(self, label):
        self.events.append(("finish", label))


def test_without_a_reporter_a_task_is_silent(capsys):
    with progress.task("anything", 3) as advance:
        for _ in range(3):
            advance()
    assert capsys.readouterr() == ("", "")


def test_a_task_reports_counts_to_the_reporter_set_up_and_no_further():
    recorder = Recorder()
    with progress.reporting(recorder), progress.task("texts", 3) as advance:
        advance()
        advance(5)  # never past the total
    with progress.task("after", 2) as advance:
        advance()
    assert recorder.events == [
        ("start", "texts", 3),
        ("update", "texts", 1, 3),
        ("update", "texts", 3, 3),
        ("finish", "texts"),
    ]


def test_the_log_reporter_writes_a_line_now_and_then_with_time_left():
    out = io.StringIO()
    every = progress_view.LogReporter(out, every=0.0)
    with progress.reporting(every), progress.task("ranking MatMuls", 4) as advance:
        for _ in range(4):
            advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("  ranking MatMuls: 1/4 (25%), 0s, about ")
    assert re.fullmatch(r"  ranking MatMuls: 4/4 \(100%\), \d+s", lines[-1])
    quiet = io.StringIO()
    with (
        progress.reporting(progress_view.LogReporter(quiet, every=3600.0)),
        progress.task("ranking MatMuls", 4) as advance,
    ):
        for _ in range(3):
            advance()
    assert quiet.getvalue() == ""  # under the interval and not done: nothing yet


def test_a_pipe_gets_log_lines_and_a_terminal_a_bar():
    assert isinstance(progress_view.reporter(io.StringIO()), progress_view.LogReporter)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = progress_view.reporter(screen)
    assert isinstance(bar, progress_view.BarReporter)
    with progress.reporting(bar), progress.task("GPTQ 4-bit", 2) as advance:
        advance()
        advance()
    assert "GPTQ 4-bit" in screen.getvalue()


def _two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), n) for n in ("w1", "w2"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_calibration_pass_and_gptq_report_through_it():
    from edgepipe.graph import nbits

    rng = np.random.default_rng(1)
    texts = [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(5)]
    recorder = Recorder()
    with progress.reporting(recorder):
        codes = nbits.gptq_codes(_two_matmuls(), lambda: iter(texts), 4, 32)
    starts = [e[1:] for e in recorder.events if e[0] == "start"]
    assert starts == [("calibration pass (2 MatMul inputs)", 5), ("GPTQ 4-bit", 2)]
    done = [e[1:3] for e in recorder.events if e[0] == "update" and e[2] == e[3]]
    assert done == [("calibration pass (2 MatMul inputs)", 5), ("GPTQ 4-bit", 2)] and len(codes) == 2
