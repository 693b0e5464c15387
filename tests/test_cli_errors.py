"""What a user sees for bad input to the nested commands: exit status 2 and one message that names
what was wrong and what is accepted, no traceback (`atomsim lammps export`, unknown subcommands)."""
from __future__ import annotations

import pytest

from atomsim.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())  # undo the console's line wrapping


@pytest.mark.parametrize("argv, expected", [
    # the default (egnn-universal-v1) covers SevenNet-0's 89 elements: not polonium
    (["--elements", "Cu,Po"], ["does not cover", "Po"]),
    (["--model", "egnn-emt-v1", "--elements", "Cu,Zr"], ["does not cover", "Zr"]),  # 7 EMT metals only
    (["--param", "foo"], ["--param", "KEY=VALUE expected", "'foo'"]),
    (["--param", "nonsense=1"], ["unknown key", "nonsense", "accepted"]),
    # float16 is a model dtype now (kernels/dtypes.py); float8 is not
    (["--dtype", "float8"], ["dtype", "float8", "float32", "float64", "float16"]),
    (["--model", "lj", "--elements", "Ar", "--param", "epsilon=abc"], ["--param", "epsilon='abc'", "lj"]),
    (["--model", "lj"], ["--elements"]),  # LJ takes any element: the LAMMPS types must be named
    (["--model", "no-such-model"], ["no-such-model"]),
])
def test_lammps_export_bad_input_exits_2_with_a_clear_message(capsys, tmp_path, argv, expected):
    out = tmp_path / "model.pkl"
    code, text = run_cli(capsys, "lammps", "export", "-o", str(out), *argv)
    assert code == 2, text
    assert text.startswith("atomsim: error:") and "Traceback" not in text, text
    for word in expected:
        assert word in text, (word, text)
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("argv, expected", [
    (["frobnicate"], ["invalid choice: 'frobnicate'", "run", "train", "lammps"]),
    (["lammps", "frobnicate"], ["atomsim lammps", "invalid choice: 'frobnicate'", "export", "check"]),
    (["lammps"], ["atomsim lammps", "required", "ACTION"]),
    (["bench", "frobnicate"], ["atomsim bench", "invalid choice: 'frobnicate'", "weak-scaling"]),
    (["bench"], ["atomsim bench", "required"]),
    (["lammps", "export", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    (["train"], ["atomsim train", "required", "config"]),
])
def test_unknown_nested_subcommands_name_the_choices(capsys, argv, expected):
    code, text = run_cli(capsys, *argv)
    assert code == 2, text
    assert "Traceback" not in text
    for word in expected:
        assert word in text, (word, text)
