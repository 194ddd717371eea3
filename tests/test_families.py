"""The model-family registry: the README's table and `edgepipe models` come from it."""

import re
from pathlib import Path

from click.testing import CliRunner

from edgepipe import families
from edgepipe.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_table_is_the_registry():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- models:begin -->\n(.*?)<!-- models:end -->", text, re.S)
    assert found, "README has no models table markers"
    assert found.group(1) == families.markdown_table(), (
        "README's supported-models table is stale: paste `edgepipe models --markdown` into it"
    )


def test_models_command_lists_every_family():
    result = CliRunner().invoke(main, ["models", "--markdown"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(families.FAMILIES)
    table = CliRunner().invoke(main, ["models"])
    assert table.exit_code == 0 and "llama" in table.output


def test_unsupported_type_is_one_line_with_the_list(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    result = CliRunner().invoke(main, ["build", "--model", str(tmp_path), "--target", "rpi5"])
    assert result.exit_code == 4
    line = result.output.strip().splitlines()[-1]
    assert "model_type 'mamba' is not supported" in line
    assert all(t in line for t in families.supported())
