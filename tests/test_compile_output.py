"""`ssmc compile` output: it replaces only directories it wrote itself (the .ssmc-package marker),
refuses everything else with a message naming the path, and never reports success for nothing."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ssmc
from ssmc import cli, compiler
from ssmc.compiler import MARKER

ROOT = Path(__file__).resolve().parents[1]


def spec_file(tmp_path, body="src = ssmc.presets.mamba(d_state=4, name='src')\n"):
    path = tmp_path / "specs.py"
    path.write_text("import ssmc\n" + body)
    return str(path)


def compile_cli(capsys, *args):
    code = cli.main(["compile", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    """The reported case: a spec named `src` compiled with `-o .` deleted ./src/main.py."""
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "src" / "main.py").write_text("print('mine')\n")
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", out)
    assert code == 2 and f"{out / 'src'} exists and has no {MARKER} marker" in err and "--force" in err
    assert (out / "src" / "main.py").read_text() == "print('mine')\n"
    assert sorted(os.listdir(out)) == ["src"], "staging left behind"
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", out, "--force")
    assert code == 0, err
    assert not (out / "src" / "main.py").exists() and (out / "src" / "__init__.py").is_file()
    assert sorted(os.listdir(out)) == ["src"]


def test_replaces_its_own_package_and_writes_a_marker(tmp_path, capsys):
    out = tmp_path / "build"
    code, stdout, err = compile_cli(capsys, spec_file(tmp_path), "-o", out)
    assert code == 0, err
    marker = json.loads((out / "src" / MARKER).read_text())
    spec = ssmc.presets.mamba(d_state=4, name="src")
    assert marker["spec_hash"] == spec.content_hash() and marker["ssmc"] == ssmc.__version__
    assert marker["schedule"] == "auto"
    assert set(marker["files"]) == {p.name for p in (out / "src").iterdir()} - {MARKER}
    assert MARKER not in stdout
    (out / "src" / "__pycache__").mkdir()              # what importing it leaves: still ssmc's
    (out / "src" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (out / "src" / "ir.txt").unlink()                   # a generated file deleted: nothing lost
    code, _, err = compile_cli(capsys, spec_file(tmp_path, "src = ssmc.presets.mamba(d_state=6, name='src')\n"),
                               "-o", out)
    assert code == 0, err
    assert json.loads((out / "src" / MARKER).read_text())["spec_hash"] != spec.content_hash()
    assert (out / "src" / "ir.txt").is_file() and not (out / "src" / "__pycache__").exists()
    assert sorted(os.listdir(out)) == ["src"]


@pytest.mark.parametrize("change, expected", [
    (lambda d: (d / "notes.txt").write_text("mine"), "files ssmc did not write: notes.txt"),
    (lambda d: (d / "kernels_c.c").write_text("/* tuned by hand */"),
     "files changed since ssmc wrote them: kernels_c.c"),
    (lambda d: (d / MARKER).write_text("{not json"), f"has no {MARKER} marker"),
])
def test_refuses_its_own_package_once_the_user_changed_it(tmp_path, capsys, change, expected):
    out = tmp_path / "build"
    assert compile_cli(capsys, spec_file(tmp_path), "-o", out)[0] == 0
    change(out / "src")
    before = {p.name: p.read_bytes() for p in (out / "src").iterdir()}
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", out)
    assert code == 2 and str(out / "src") in err and expected in err
    assert {p.name: p.read_bytes() for p in (out / "src").iterdir()} == before


def test_two_specs_with_one_name_write_nothing(tmp_path, capsys):
    body = ("a = ssmc.presets.mamba(d_state=4, name='same')\n"
            "b = ssmc.presets.mamba(d_state=8, name='same')\n")
    out = tmp_path / "build"
    code, _, err = compile_cli(capsys, spec_file(tmp_path, body), "-o", out)
    assert code == 2 and "a, b are different specs with the same name 'same'" in err and "nothing was written" in err
    assert not out.exists() or not os.listdir(out)


def test_an_alias_of_one_spec_is_written_once(tmp_path, capsys):
    body = "a = ssmc.presets.mamba(d_state=4, name='one')\nb = a\n"
    code, stdout, err = compile_cli(capsys, spec_file(tmp_path, body), "-o", tmp_path / "build")
    assert code == 0, err
    assert "a = b: spec 'one'" in stdout and os.listdir(tmp_path / "build") == ["one"]


def test_all_targets_are_checked_before_anything_is_written(tmp_path, capsys):
    body = ("first = ssmc.presets.mamba(d_state=4, name='first')\n"
            "second = ssmc.presets.mamba(d_state=4, name='second')\n")
    out = tmp_path / "build"
    (out / "second").mkdir(parents=True)
    code, _, err = compile_cli(capsys, spec_file(tmp_path, body), "-o", out)
    assert code == 2 and str(out / "second") in err
    assert os.listdir(out) == ["second"], "the first package was written although the second was refused"


def test_a_symbolic_link_is_refused_even_with_force(tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    out = tmp_path / "build"
    out.mkdir()
    (out / "src").symlink_to(target)
    for extra in ((), ("--force",)):
        code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", out, *extra)
        assert code == 2 and f"{out / 'src'} is a symbolic link" in err
        assert (out / "src").is_symlink() and os.listdir(target) == ["keep.txt"]
    assert os.listdir(out) == ["src"]


def test_an_unwritable_output_directory_is_an_error(tmp_path, capsys, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", not_a_dir)
    assert code == 2 and f"--output: {not_a_dir} exists and is not a directory" in err
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", not_a_dir / "sub")
    assert code == 2 and f"output directory {not_a_dir / 'sub'}: cannot create it" in err

    def denied(*args, **kwargs):          # root ignores modes: simulate a directory we may not write
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(compiler.tempfile, "mkdtemp", denied)
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", tmp_path / "build")
    assert code == 2 and f"output directory {tmp_path / 'build'} is not writable: Permission denied" in err


def test_an_undeletable_package_is_an_error_and_stays(tmp_path, capsys, monkeypatch):
    out = tmp_path / "build"
    assert compile_cli(capsys, spec_file(tmp_path), "-o", out)[0] == 0
    before = {p.name: p.read_bytes() for p in (out / "src").iterdir()}
    rename = os.rename

    def refuse_old(src, dst):
        if Path(src) == out / "src":
            raise PermissionError(13, "Permission denied")
        return rename(src, dst)
    monkeypatch.setattr(compiler.os, "rename", refuse_old)
    code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", out)
    assert code == 2 and f"could not replace {out / 'src'}: moving it aside failed: Permission denied" in err
    assert {p.name: p.read_bytes() for p in (out / "src").iterdir()} == before
    assert os.listdir(out) == ["src"]


def test_a_lost_race_is_not_success(tmp_path, monkeypatch):
    """Someone creates OUT/<name> between the check and the rename: an error, never silence."""
    directory = tmp_path / "pkg"
    spec = ssmc.presets.mamba(d_state=4, name="pkg")
    stage = compiler._stage

    def stage_then_race(*args):
        staging = stage(*args)
        directory.mkdir()
        (directory / "theirs.txt").write_text("x")
        return staging
    monkeypatch.setattr(compiler, "_stage", stage_then_race)
    with pytest.raises(ssmc.SSMCError, match=f"could not create {directory}"):
        compiler.write_package(spec, directory, files={"__init__.py": ""})
    assert os.listdir(tmp_path) == ["pkg"] and os.listdir(directory) == ["theirs.txt"]


def test_output_follows_the_umask(tmp_path):
    """Files and directories get 0o777/0o666 less the umask (mkdtemp alone would give 0700)."""
    script = ("import os, sys; os.umask(0o027)\n"
              "import ssmc; from ssmc.compiler import write_package\n"
              "write_package(ssmc.presets.mamba(d_state=4, name='m'), sys.argv[1], files={'__init__.py': ''})\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "m")], check=True, cwd=ROOT)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750
    assert {(p.name, p.stat().st_mode & 0o777) for p in (tmp_path / "m").iterdir()} == {
        ("__init__.py", 0o640), (MARKER, 0o640)}


def test_an_old_version_that_cannot_be_removed_is_reported(tmp_path, monkeypatch):
    directory = tmp_path / "pkg"
    spec = ssmc.presets.mamba(d_state=4, name="pkg")
    compiler.write_package(spec, directory, files={"__init__.py": "old = 1\n"})

    def stuck(path):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(compiler, "_remove", stuck)
    with pytest.raises(ssmc.SSMCError, match="could not remove its previous version, now at .*Permission denied"):
        compiler.write_package(spec, directory, files={"__init__.py": "new = 1\n"})
    assert (directory / "__init__.py").read_text() == "new = 1\n"
    aside, = [p for p in tmp_path.iterdir() if p.name != "pkg"]
    assert (aside / "__init__.py").read_text() == "old = 1\n"


@pytest.mark.parametrize("replace", ["directory", "symlink to a copy", "symlink to a directory"])
def test_a_generated_file_replaced_by_something_else_is_a_change(tmp_path, capsys, replace):
    """Only a deleted generated file is nothing lost: a directory or a symbolic link in its place is
    the user's (the reported case: graph.json replaced by a directory holding mine.txt was deleted)."""
    out = tmp_path / "build"
    assert compile_cli(capsys, spec_file(tmp_path), "-o", out)[0] == 0
    name = "graph.json" if replace == "directory" else "ir.txt"
    path = out / "src" / name
    if replace == "directory":
        path.unlink()
        path.mkdir()
        (path / "mine.txt").write_text("precious\n")
    else:
        target = tmp_path / ("copy.txt" if replace == "symlink to a copy" else "mydir")
        if replace == "symlink to a copy":
            target.write_bytes(path.read_bytes())      # even the same bytes: a link is not ssmc's file
        else:
            target.mkdir()
            (target / "mine.txt").write_text("precious\n")
        path.unlink()
        path.symlink_to(target)
    for _ in range(2):                                  # a refusal changes nothing, so it refuses again
        code, _, err = compile_cli(capsys, spec_file(tmp_path), "-o", out)
        assert code == 2 and f"files changed since ssmc wrote them: {name}" in err and "--force" in err, err
    if replace == "directory":
        assert (path / "mine.txt").read_text() == "precious\n"
    else:
        assert path.is_symlink() and path.resolve() == target.resolve()
    assert sorted(os.listdir(out)) == ["src"], "staging left behind"


def test_a_failed_write_of_any_kind_leaves_no_staging_directory(tmp_path):
    with pytest.raises(TypeError):                      # not an OSError: still cleaned up
        compiler._stage(tmp_path, "pkg", {"__init__.py": "", "bad.py": 1}, "{}", compiler.cache.output_mode)
    assert os.listdir(tmp_path) == []


def test_packages_are_utf8_whatever_the_locale(tmp_path):
    """The sources hold `·` and `Σ`, the marker hashes UTF-8 bytes: an ASCII locale (no coercion, no
    UTF-8 mode) compiled nothing before, raised a raw UnicodeEncodeError and left a staging directory."""
    # ASCII only: the command line is decoded in the locale's encoding
    script = """
        import locale, os, pathlib, sys
        encoding = locale.getpreferredencoding(False)
        assert encoding.lower() in ("ascii", "ansi_x3.4-1968"), encoding
        os.environ["SSMC_CACHE_DIR"] = sys.argv[2]
        import ssmc
        from ssmc import cli
        from ssmc.compiler import compile_package, read_marker, _changed_files
        spec = ssmc.presets.s4d(d_state=4, name="s4d_locale")
        package = compile_package(spec)
        directory = os.path.dirname(package.__file__)
        assert not _changed_files(pathlib.Path(directory), read_marker(directory), True)
        texts = [open(os.path.join(directory, name), encoding="utf-8").read()
                 for name in read_marker(directory)["files"]]
        assert not "".join(texts).isascii(), "no non-ASCII text generated: this test would prove nothing"
        spec_path = os.path.join(sys.argv[1], "spec.py")
        with open(spec_path, "w", encoding="utf-8") as f:
            f.write("# coding: utf-8\\n# \\u03a3\\u00b7\\nimport ssmc\\ns = ssmc.presets.s4d(d_state=4, name='s')\\n"
                    "t = ssmc.presets.s4d(d_state=0)\\n")
        assert cli.main(["explain", spec_path]) == 2        # the error names the variable (read as UTF-8)
        with open(spec_path, "w", encoding="utf-8") as f:
            f.write("# coding: utf-8\\n# \\u03a3\\u00b7\\nimport ssmc\\ns = ssmc.presets.s4d(d_state=4, name='s')\\n")
        out = os.path.join(sys.argv[1], "out")
        for _ in range(2):                                   # the second replaces the first: its marker checks out
            assert cli.main(["compile", spec_path, "-o", out]) == 0
        print(sorted(os.listdir(os.path.join(sys.argv[2], "packages"))), sorted(os.listdir(out)))
    """
    env = {**os.environ, "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C", "SSMC_BACKEND": "torch"}
    env.pop("PYTHONUTF8", None)
    result = subprocess.run([sys.executable, "-X", "utf8=0", "-c", textwrap.dedent(script), str(tmp_path),
                             str(tmp_path / "cache")], capture_output=True, text=True, encoding="utf-8", cwd=ROOT,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "spec.py:5 (variable t)" in result.stderr, result.stderr
    assert result.stdout.strip().endswith("['s']"), result.stdout
    packages = result.stdout.strip().splitlines()[-1]
    assert ".ssmc-tmp-" not in packages and "s4d_locale_" in packages, packages
