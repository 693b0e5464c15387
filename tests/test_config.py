"""Input-file validation: each mistake raises InputError naming its key path and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from atomsim.engine.config import RunConfig, load_config, write_resolved_config
from atomsim.engine.errors import InputError, format_validation_error

# run inputs (other examples, e.g. training configs, have their own schema)
EXAMPLES = [p for p in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
            if "system" in (yaml.safe_load(p.read_text()) or {})]
MINIMAL = {"system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [2, 2, 2]}}}


def _write(tmp_path, data, name="in.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(tmp_path, data, overrides=()) -> str:
    with pytest.raises(InputError) as info:
        load_config(_write(tmp_path, data), list(overrides))
    return str(info.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_round_trip(path, tmp_path):
    cfg = load_config(path, [])
    written = write_resolved_config(cfg, tmp_path / "out")
    assert written.name == "resolved_config.yaml"
    assert load_config(written, []) == cfg  # the resolved file reproduces the run's config exactly


def test_defaults_and_empty_sections(tmp_path):
    cfg = load_config(_write(tmp_path, "system:\n  structure: {lattice: fcc, symbols: Ar}\ndynamics:\n"), [])
    assert cfg.dynamics.timestep_fs == RunConfig.model_fields["dynamics"].default_factory().timestep_fs
    assert cfg.system.structure.use_cubic() and cfg.parallel.grid == "auto"


# (overrides applied to MINIMAL, key path the message must name, extra text it must contain)
BAD = [
    (["dynamics.timestep_fs=0"], "dynamics.timestep_fs", "> 0"),
    (["dynamics.timestep_fs=-1"], "dynamics.timestep_fs", "> 0"),
    (["dynamics.timestep_fs=25"], "dynamics.timestep_fs", "<= 10"),
    (["system.temperature_K=-5"], "system.temperature_K", ">= 0"),
    (["dynamics.temperature_K=-1"], "dynamics.temperature_K", ">= 0"),
    (["system.structure.repeat=[4,0,4]"], "system.structure.repeat", ">= 1"),
    (["system.structure.repeat=0"], "system.structure.repeat", ">= 1"),
    (["neighbor.skin=-0.5"], "neighbor.skin", ">= 0"),
    (["dynamics.steps=abc"], "dynamics.steps", "integer"),
    (["dynamics.steps=1.5"], "dynamics.steps", "integer"),
    (["dynamics.integrator=langvin"], "dynamics.integrator", "did you mean `langevin`"),
    (["potential.dtype=float16"], "potential.dtype", "float32"),
    (["parallel.grid=[2,1]"], "parallel.grid", "three integers"),
    (["output.thermo_every=0"], "output.thermo_every", ">= 1"),
    (["system.structure.lattice=fc"], "system.structure.lattice", "did you mean `fcc`"),
    (["system.structure.symbols=Xx"], "system.structure.symbols", "unknown element 'Xx'"),
    (["system.structure.alloy={Au: 0.7, Ag: 0.5}"], "system.structure.alloy", "sum to 1.2 > 1"),
    (["system.structure.alloy={Qq: 0.1}"], "system.structure.alloy", "unknown element 'Qq'"),
    (["system.structure.cubic=true", "system.structure.lattice=hcp"], "system.structure.cubic", "no cubic cell"),
    (["system.structure.file=x.xyz"], "system.structure.file", "exactly one"),
    (["system.structure.vacuum_A=-1"], "system.structure.vacuum_A", ">= 0"),
]


@pytest.mark.parametrize("overrides,key,text", BAD, ids=[b[1] + ":" + b[0][0] for b in BAD])
def test_bad_values_name_the_key(tmp_path, overrides, key, text):
    message = _error(tmp_path, MINIMAL, overrides)
    assert f"`{key}`" in message and text in message, message


def test_unknown_key_in_file_suggests_nearest(tmp_path):
    data = {**MINIMAL, "dynamics": {"timestep": 2}}
    message = _error(tmp_path, data)
    assert "unknown key `dynamics.timestep`" in message and "did you mean `timestep_fs`?" in message


def test_unknown_section_suggests_nearest(tmp_path):
    message = _error(tmp_path, {**MINIMAL, "dynamic": {"steps": 3}})
    assert "unknown key `dynamic`" in message and "did you mean `dynamics`?" in message


def test_several_problems_listed_in_one_message(tmp_path):
    message = _error(tmp_path, MINIMAL, ["dynamics.timestep_fs=0", "neighbor.skin=-1"])
    assert message.count("\n  - ") == 2 and "dynamics.timestep_fs" in message and "neighbor.skin" in message


def test_missing_structure(tmp_path):
    message = _error(tmp_path, {"system": {"temperature_K": 10}})
    assert "missing required key `system.structure`" in message


def test_yaml_syntax_error_gives_line(tmp_path):
    message = _error(tmp_path, "system:\n  structure:\n    lattice: fcc\n     symbols: Ar\n")
    assert "line 4, column 13: YAML syntax error: mapping values are not allowed here" in message
    message = _error(tmp_path, "system:\n  structure:\n    repeat: [2, 2\n    lattice: fcc\n")
    assert "YAML syntax error" in message and "flow sequence that starts at line 3" in message


def test_duplicate_key_is_an_error(tmp_path):
    text = "system:\n  structure: {lattice: fcc, symbols: Ar}\n  seed: 1\n  seed: 2\n"
    message = _error(tmp_path, text)
    assert "'seed' appears twice" in message and "line 4" in message


def test_file_must_be_a_mapping(tmp_path):
    assert "mapping of sections" in _error(tmp_path, "- a\n- b\n")


def test_missing_input_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.yaml", [])


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), [
        "dynamics.steps=10", "parallel.grid=[2,1,1]", "potential.params.epsilon=1e-3",
        "system.structure.alloy.Au=0.25", "output.progress=false", "potential.params.sigma={Ar: 3.4}"])
    assert cfg.dynamics.steps == 10 and cfg.parallel.grid == [2, 1, 1]
    assert cfg.potential.params == {"epsilon": 1e-3, "sigma": {"Ar": 3.4}}
    assert isinstance(cfg.potential.params["epsilon"], float)  # YAML 1.1 would read 1e-3 as a string
    assert cfg.system.structure.alloy == {"Au": 0.25} and cfg.output.progress is False


@pytest.mark.parametrize("assignment,text", [
    ("dynamics.timestep=2", "unknown key `dynamics.timestep`; did you mean `timestep_fs`?"),
    ("dynamic.steps=2", "unknown key `dynamic`; did you mean `dynamics`?"),
    ("dynamics.steps.x=2", "`dynamics.steps` is a value, not a section"),
    ("dynamics.steps", "KEY.PATH=VALUE"),
    ("dynamics.steps=[1", "YAML syntax error"),
])
def test_bad_overrides(tmp_path, assignment, text):
    assert text in _error(tmp_path, MINIMAL, [assignment])


def test_structure_file_relative_to_input_and_missing_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ar.xyz").write_text("1\n\nAr 0 0 0\n")
    data = {"system": {"structure": {"file": "ar.xyz"}}}
    cfg = load_config(_write(tmp_path / "sub", data), [])
    assert Path(cfg.system.structure.file) == (tmp_path / "sub" / "ar.xyz").resolve()
    (tmp_path / "cwd.xyz").write_text("1\n\nAr 0 0 0\n")
    monkeypatch.chdir(tmp_path)  # a file named with --set is relative to the working directory
    cfg = load_config(tmp_path / "sub" / "in.yaml", ["system.structure.file=cwd.xyz"])
    assert Path(cfg.system.structure.file) == (tmp_path / "cwd.xyz").resolve()
    message = _error(tmp_path, {"system": {"structure": {"file": "missing.extxyz"}}})
    assert "`system.structure.file`" in message and "no such file" in message


def test_lattice_key_with_file_is_an_error(tmp_path):
    (tmp_path / "ar.xyz").write_text("1\n\nAr 0 0 0\n")
    message = _error(tmp_path, {"system": {"structure": {"file": "ar.xyz", "a": 4.0}}})
    assert "`system.structure.a` applies to a built lattice" in message


def test_compound_alloy_needs_site(tmp_path):
    data = {"system": {"structure": {"lattice": "rocksalt", "symbols": "NaCl", "a": 5.6, "alloy": {"K": 0.5}}}}
    assert "`system.structure.alloy_site` is required" in _error(tmp_path, data)
    message = _error(tmp_path, data, ["system.structure.alloy_site=Cu"])
    assert "`system.structure.alloy_site` = 'Cu' is not in the lattice" in message


def test_format_validation_error_direct():
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate({**MINIMAL, "neighbor": {"skn": 1.0}})
    assert format_validation_error(info.value) == (
        "invalid input: unknown key `neighbor.skn`; did you mean `skin`? valid keys in `neighbor`: skin, "
        "check_every")


def test_reference_doc_lists_every_key():
    """docs/input_reference.md documents every key of the schema."""
    from atomsim.engine.errors import _model_in

    doc = (Path(__file__).resolve().parents[1] / "docs" / "input_reference.md").read_text()

    seen = set()  # a section reused under another key (stages.dynamics is a `dynamics`) is documented once

    def keys(model, prefix=""):
        seen.add(model)
        for name, field in model.model_fields.items():
            yield prefix + name
            sub = _model_in(field.annotation)
            if sub is not None and sub not in seen:
                yield from keys(sub, prefix + name + ".")

    missing = [k for k in keys(RunConfig) if f"`{k}`" not in doc]
    assert not missing, f"undocumented keys: {missing}"
