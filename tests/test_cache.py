"""The package cache and the C build cache: where they live, when they are refused or replaced by a
temporary one, immutable entries under concurrent use, verified C libraries, build messages, and
thread-safe first use."""
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import ssmc
from ssmc import compiler
from ssmc.errors import CompileError, SSMCError
from ssmc.reference import selective_scan_ref
from ssmc.runtime import backend, cache, cbuild

from conftest import rel_error, scan_inputs

ROOT = Path(__file__).resolve().parents[1]
needs_cc = pytest.mark.skipif(backend.c_compiler() is None and not os.environ.get("CI"), reason="no C compiler")
ANSWER = "int ssmc_answer(void) { return ANSWER; }\n"


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """A cache module that has resolved nothing yet, and no fallback, in `tmp_path/cache`."""
    monkeypatch.setattr(cache, "_ROOTS", {})
    monkeypatch.setattr(cache, "_READY", {})
    monkeypatch.setattr(cache, "_FALLBACK", [])
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def python(script, *args, env=None, cwd=ROOT, check=True):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                            text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# ---- where the cache is -----------------------------------------------------------------------------

def test_relative_and_tilde_paths_are_resolved_once(fresh_cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSMC_CACHE_DIR", "rel-cache")
    assert cache.root() == tmp_path / "rel-cache" and cache.root().is_dir()
    monkeypatch.chdir(ROOT)
    assert cache.directory("packages") == tmp_path / "rel-cache" / "packages"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SSMC_CACHE_DIR", "~/c")
    assert cache.root() == tmp_path / "home" / "c"
    monkeypatch.delenv("SSMC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.root() == tmp_path / "xdg" / "ssmc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.root() == tmp_path / "home" / ".cache" / "ssmc"


def test_relative_cache_survives_chdir_in_a_fresh_process(tmp_path):
    """The generated package's kernels are imported lazily, after the chdir."""
    (tmp_path / "work").mkdir()
    script = """
        import os, sys, torch, ssmc
        from ssmc.compiler import compile_package
        package = compile_package(ssmc.presets.mamba(d_state=4, name="chdir_check"))
        os.chdir(sys.argv[1])
        x = torch.randn(1, 3, 5)
        y = package.apply(x, x, -torch.rand(3, 4), torch.randn(1, 4, 5), torch.randn(1, 4, 5), D=torch.randn(3),
                          z=x, delta_bias=torch.randn(3))
        assert os.path.isabs(package.__file__) and y.shape == (1, 3, 5)
        print(package.__file__)
    """
    out = python(script, tmp_path, cwd=tmp_path / "work",
                 env={"SSMC_CACHE_DIR": "relative-cache", "SSMC_BACKEND": "torch"}).stdout
    assert out.startswith(str(tmp_path / "work" / "relative-cache" / "packages"))


def test_empty_home_uses_a_temporary_cache_with_one_warning(tmp_path):
    """No SSMC_CACHE_DIR and an empty HOME: never /.cache; the torch backend needs no C cache."""
    script = """
        import os, sys, warnings, torch, ssmc
        from ssmc.compiler import compile_package
        from ssmc.runtime import cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = compile_package(ssmc.presets.mamba(d_state=4, name="nohome_a"))
            b = compile_package(ssmc.presets.mamba(d_state=4, name="nohome_b"))
        messages = [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]
        assert len(messages) == 1, messages
        assert "HOME is empty" in messages[0] and "temporary cache" in messages[0], messages
        x = torch.randn(1, 3, 5)
        a.apply(x, x, -torch.rand(3, 4), torch.randn(1, 4, 5), torch.randn(1, 4, 5), D=torch.randn(3), z=x,
                delta_bias=torch.randn(3))
        print(cache.root())
        assert not os.path.exists(os.path.join(sys.argv[1], ".cache"))
    """
    env = {k: v for k, v in os.environ.items() if k not in ("SSMC_CACHE_DIR", "XDG_CACHE_HOME")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), "/"], capture_output=True, text=True,
                            cwd=ROOT, env={**env, "HOME": "", "SSMC_BACKEND": "torch", "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    temporary = Path(result.stdout.strip())
    assert temporary.parent == tmp_path and temporary.name.startswith("ssmc-cache-")
    assert not temporary.exists(), "the temporary cache outlived its process"


def test_unusable_cache_falls_back_once(fresh_cache, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SSMC_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(cache.CacheWarning, match=re.escape(f"the cache directory {blocker / 'cache'} is not usable")):
        packages = cache.directory("packages")
    assert packages.is_dir() and packages.parent.name.startswith("ssmc-cache-")
    # a writable root whose c/ is unusable (say, a read-only mount): c/ goes to the same fallback
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path / "ok"))
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "c").write_text("")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no second warning
        assert cache.directory("c") == packages.parent / "c"
        assert cache.directory("packages") == tmp_path / "ok" / "packages"
    monkeypatch.setattr(cache, "_READY", {})
    monkeypatch.setattr(cache, "_writable", lambda path: "Read-only file system")
    assert cache.directory("packages") == packages


def test_the_cache_warning_points_at_the_callers_line(fresh_cache, tmp_path, monkeypatch):
    """Not at a line of ssmc (compiler.py): at the first frame outside it, here this test."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SSMC_CACHE_DIR", str(blocker / "cache"))
    spec = ssmc.presets.mamba(d_state=4, name=f"pointed_{uuid.uuid4().hex[:8]}")
    with pytest.warns(cache.CacheWarning) as caught:
        line = sys._getframe().f_lineno + 1
        compiler.compile_package(spec)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


@pytest.mark.parametrize("where", ["", "packages", "c"])
@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_cache_others_can_write_is_refused(fresh_cache, where, mode):
    path = fresh_cache / where if where else fresh_cache
    path.mkdir(parents=True)
    os.chmod(path, mode)
    who = "group" if mode == 0o775 else "others"
    for kind in ("packages", "c"):
        if where in ("", kind):
            with pytest.raises(SSMCError, match=re.escape(f"cache directory {path} is writable by {who}") +
                               ".*" + re.escape(f"chmod go-w {path}")):
                cache.directory(kind)


def test_a_cache_owned_by_another_user_is_refused_before_importing(fresh_cache, monkeypatch):
    spec = ssmc.presets.mamba(d_state=4, name=f"planted_{uuid.uuid4().hex[:8]}")
    entry = fresh_cache / "packages" / compiler.package_key(spec)
    entry.mkdir(parents=True)
    (entry / "__init__.py").write_text("raise SystemExit('planted code ran')\n")
    monkeypatch.setattr(cache.os, "getuid", lambda: os.stat(fresh_cache).st_uid + 1)
    owned = re.escape(f"cache directory {fresh_cache} is owned by uid") + ".*SSMC_CACHE_DIR"
    with pytest.raises(SSMCError, match=owned):
        compiler.compile_package(spec)


def test_cache_entries_follow_the_umask_but_never_group_write(tmp_path):
    script = """
        import os, sys, ssmc
        from ssmc.compiler import compile_package
        for umask in sys.argv[2:]:
            os.umask(int(umask, 8))
            os.environ["SSMC_CACHE_DIR"] = os.path.join(sys.argv[1], umask)
            print(os.path.dirname(compile_package(ssmc.presets.mamba(d_state=4, name="modes" + umask)).__file__))
    """
    cases = (("002", 0o755, 0o644), ("077", 0o700, 0o600))
    entries = python(script, tmp_path, *(case[0] for case in cases)).stdout.split()
    for (umask, dirs, files), entry in zip(cases, map(Path, entries)):
        cache_dir = tmp_path / umask
        modes = {p.stat().st_mode & 0o777 for p in entry.iterdir() if p.is_file()}
        assert modes == {files}, (umask, modes)
        for directory in (cache_dir, cache_dir / "packages", entry):
            assert directory.stat().st_mode & 0o777 == dirs, (umask, directory)


# ---- immutable package entries ----------------------------------------------------------------------

def test_a_damaged_entry_is_left_alone(fresh_cache):
    spec = ssmc.presets.mamba(d_state=4, name=f"damaged_{uuid.uuid4().hex[:8]}")
    key = compiler.package_key(spec)
    first = compiler._cache_entry(spec, key)
    assert first == fresh_cache / "packages" / key and (first / compiler.MARKER).is_file()
    assert compiler._cache_entry(spec, key) == first               # found, not rewritten
    (first / "kernels_torch.py").write_text("raise SystemExit('edited')\n")
    second = compiler._cache_entry(spec, key)
    assert second == fresh_cache / "packages" / f"{key}.1"
    assert (first / "kernels_torch.py").read_text() == "raise SystemExit('edited')\n"
    legacy = ssmc.presets.mamba(d_state=4, name=f"legacy_{uuid.uuid4().hex[:8]}")
    (fresh_cache / "packages" / compiler.package_key(legacy)).mkdir()   # written before markers
    assert compiler._cache_entry(legacy, compiler.package_key(legacy)).name.endswith(".1")
    assert not [p for p in (fresh_cache / "packages").iterdir() if p.name.startswith(".")]


IMPORTER = """
import os, sys, time, torch, ssmc
from ssmc.compiler import compile_package
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
gen = torch.Generator().manual_seed(5)
u, delta = torch.randn(1, 3, 7, generator=gen), torch.randn(1, 3, 7, generator=gen)
A, B, C = -torch.rand(3, 4, generator=gen), torch.randn(1, 4, 7, generator=gen), torch.randn(1, 4, 7, generator=gen)
y = compile_package(ssmc.presets.mamba(d_state=4, name="race")).apply(u, delta, A, B, C, D=A[:, 0], z=u,
                                                                      delta_bias=A[:, 1])
print(repr(y.flatten().tolist()))
"""


def test_concurrent_processes_compile_and_import_one_entry(tmp_path):
    """Fresh processes compile and import the same spec into one fresh cache at once: all succeed
    with one result, one entry, no temporaries left."""
    go = tmp_path / "go"
    env = {**os.environ, "SSMC_CACHE_DIR": str(tmp_path / "cache"), "SSMC_BACKEND": "torch"}
    children = [subprocess.Popen([sys.executable, "-c", IMPORTER, str(go)], env=env, cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    time.sleep(0.5)
    go.touch()
    results = [child.communicate(timeout=240) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err
    assert len({out for out, _ in results}) == 1
    entries = os.listdir(tmp_path / "cache" / "packages")
    assert len(entries) == 1 and not entries[0].startswith("."), entries


# ---- first use from several threads ----------------------------------------------------------------

def test_first_use_from_several_threads(backend):
    backend("torch")
    spec = ssmc.presets.mamba(d_state=4, name=f"threads_{uuid.uuid4().hex[:8]}")
    x = scan_inputs(batch=1, dim=3, length=9, n_state=4)
    optional = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"])
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], **optional, delta_softplus=True)
    barrier, results, errors = threading.Barrier(4), [None] * 4, []

    def first_call(i):
        try:
            barrier.wait()
            results[i] = compiler.compile_package(spec).apply(x["u"], x["delta"], x["A"], x["B"], x["C"], **optional)
        except BaseException as exc:       # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=first_call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(rel_error(y, ref) < 1e-5 for y in results)


def test_a_module_is_never_seen_half_executed(tmp_path):
    """import_package holds the module's lock while it runs: a second thread waits, then gets the
    whole module (the bug: `module has no attribute 'apply'`)."""
    (tmp_path / "__init__.py").write_text("import time\ntime.sleep(0.3)\napply = 'done'\n")
    name = f"ssmc_test_half_{uuid.uuid4().hex[:8]}"
    found = []
    threads = [threading.Thread(target=lambda: found.append(compiler.import_package(tmp_path, name).apply))
               for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert found == ["done"] * 3
    sys.modules.pop(name, None)


def test_kernel_set_loads_a_backend_once_across_threads(backend):
    backend("torch")
    package = compiler.compile_package(ssmc.presets.mamba(d_state=4, name=f"kset_{uuid.uuid4().hex[:8]}"))
    kernels = type(package.KERNELS)(package.__name__)
    barrier, found = threading.Barrier(4), []

    def load():
        barrier.wait()
        found.append(kernels.get("torch"))
    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 4 and all(module is found[0] and hasattr(module, "scan_fwd") for module in found)


# ---- the C build cache -------------------------------------------------------------------------------

CALL = """
import ctypes, sys
from ssmc.runtime import cbuild
path = cbuild.compile_library(sys.argv[1], "answer")
print(ctypes.CDLL(str(path)).ssmc_answer(), cbuild.build_count())
"""


def call_answer(value, env):
    """(what the cached library returns, how many builds it took) in a fresh process."""
    out = python(CALL, ANSWER.replace("ANSWER", str(value)), env=env).stdout.split()
    return int(out[0]), int(out[1])


def entry_files(cache_dir):
    return sorted(p.name for p in (cache_dir / "c").iterdir())


@needs_cc
def test_loading_the_kernels_leaves_the_process_floating_point_mode_alone(tmp_path):
    """Linked with -ffast-math, a library gets crtfastmath.o, whose load turns on flush-to-zero for the whole
    process: the user's torch and numpy would flush subnormals ever after. The libraries are linked without it
    (fast math only when compiling), the generated kernels' included, and they are still built with fast math."""
    script = """
        import ctypes, sys, torch
        import ssmc
        from ssmc.runtime import cbuild
        tiny = torch.tensor([1e-39])
        assert (tiny * 1.0).item() > 0, "subnormals flushed before anything was loaded"
        ctypes.CDLL(str(cbuild.compile_library(sys.argv[1], "fast_math")))
        seen = [(tiny * 1.0).item() > 0]
        layer = ssmc.compile(ssmc.presets.mamba(d_state=4, name="ftz_check"))(d_model=8)
        layer(torch.randn(1, 5, 8), torch.randn(1, 5, 8)).sum().backward()
        seen.append((tiny * 1.0).item() > 0)
        print(seen)
    """
    source = "#include <math.h>\nfloat ssmc_fast(float x) { return expf(x) + x * 0.5f; }\n"
    result = python(script, source, env={"SSMC_CACHE_DIR": str(tmp_path), "SSMC_BACKEND": "c"})
    assert result.stdout.split("\n")[-2] == "[True, True]", result.stdout + result.stderr
    manifest, = (tmp_path / "c").glob("fast_math-*.json")
    assert "-ffast-math" in json.loads(manifest.read_text())["flags"]


@needs_cc
def test_damaged_libraries_are_rebuilt(tmp_path):
    env = {"SSMC_CACHE_DIR": str(tmp_path)}
    assert call_answer(42, env) == (42, 1)
    assert call_answer(42, env) == (42, 0)
    manifest_path, = (tmp_path / "c").glob("*.json")
    manifest = json.loads(manifest_path.read_text())
    library = tmp_path / "c" / manifest["library"]
    assert library.is_file() and manifest["size"] == library.stat().st_size
    # another library's bytes in its place (an edited, rebuilt-by-hand or swapped file): rebuilt
    other = cbuild.compile_library(ANSWER.replace("ANSWER", "7"), "other")
    library.write_bytes(other.read_bytes())
    assert call_answer(42, env) == (42, 1)
    # truncated (a full disk, a killed copy): mapping it would SIGBUS; rebuilt instead
    data = library.read_bytes()
    library.write_bytes(data[: len(data) // 3])
    assert call_answer(42, env) == (42, 1)
    # the manifest lost: rebuilt, the (sound) library kept
    manifest_path.unlink()
    assert call_answer(42, env) == (42, 1) and manifest_path.is_file()
    manifest_path.write_text("{garbage")
    assert call_answer(42, env) == (42, 1)
    assert entry_files(tmp_path) == sorted([manifest_path.name, library.name])



@needs_cc
def test_load_library_verifies_an_entry_once_per_process(tmp_path, monkeypatch):
    """The manifest and the library's sha256 are checked on the first load of a key, not again on
    every load_library call (one per kernel function and precision in a generated package)."""
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    source = tmp_path / "once.c"
    source.write_text(f"/* {uuid.uuid4().hex} */\n" + ANSWER.replace("ANSWER", "13"))
    checked, cached = [], cbuild._cached
    monkeypatch.setattr(cbuild, "_cached", lambda *args: checked.append(args) or cached(*args))
    first = cbuild.load_library(source, symbols=("ssmc_answer",))
    assert cbuild.load_library(source, symbols=("ssmc_answer",)) is first and first.ssmc_answer() == 13
    assert len(checked) == 1, checked
    with pytest.raises(CompileError, match="lacks ssmc_missing"):
        cbuild.load_library(source, symbols=("ssmc_missing",))

@needs_cc
def test_the_cached_source_is_never_compiled(tmp_path, monkeypatch):
    """Builds compile the text the caller holds: a planted `<name>-<key>.c` changes nothing."""
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    path = cbuild.compile_library(ANSWER.replace("ANSWER", "5"), "planted")
    stem = path.name.rsplit("-", 1)[0]
    (path.parent / f"{stem}.c").write_text(ANSWER.replace("ANSWER", "666"))
    path.unlink()
    assert call_answer_from(ANSWER.replace("ANSWER", "5"), "planted", tmp_path) == 5


def call_answer_from(source, name, cache_dir):
    script = ("import ctypes, sys\nfrom ssmc.runtime import cbuild\n"
              "print(ctypes.CDLL(str(cbuild.compile_library(sys.argv[1], sys.argv[2]))).ssmc_answer())\n")
    return int(python(script, source, name, env={"SSMC_CACHE_DIR": str(cache_dir)}).stdout)


@needs_cc
def test_a_compiler_that_writes_nothing_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/true")
    with pytest.raises(CompileError, match="reported success but wrote no library"):
        cbuild.compile_library(ANSWER.replace("ANSWER", "1"), "empty")
    assert entry_files(tmp_path) == []
    monkeypatch.delenv("CC")
    with pytest.raises(CompileError, match="lacks the symbols ssmc_missing"):
        cbuild.compile_library(ANSWER.replace("ANSWER", "1"), "nosym", symbols=("ssmc_answer", "ssmc_missing"))
    assert entry_files(tmp_path) == []


@needs_cc
def test_cc_with_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    compiler_path = backend.c_compiler()[0]
    monkeypatch.setenv("CC", f"{compiler_path} -DANSWER=31")
    assert backend.c_compiler() == (compiler_path, "-DANSWER=31")
    import ctypes
    assert ctypes.CDLL(str(cbuild.compile_library(ANSWER, "cc_args"))).ssmc_answer() == 31
    monkeypatch.setenv("CC", "gcc 'unbalanced")
    with pytest.raises(SSMCError, match="CC=.*cannot be split"):
        backend.c_compiler()


def test_unbalanced_quote_in_cflags_names_the_variable(monkeypatch):
    monkeypatch.setenv("SSMC_CFLAGS", "-DX='1")
    with pytest.raises(CompileError, match="SSMC_CFLAGS=.*cannot be split into flags"):
        cbuild.extra_flags()


@needs_cc
def test_orphaned_temporaries_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    directory = cbuild.cache_dir()
    old = time.time() - 2 * cache.ORPHAN_AGE_S
    orphans = [directory / ".ssmc-tmp-kernels-abc", directory / ".kernels_c-a1b2c3d4.so",
               directory / ".kernels_c-zz99yy88.c"]
    keep = [directory / ".ssmc-tmp-young", directory / ".mine", directory / "notes.txt"]
    orphans[0].mkdir()
    (orphans[0] / "x.c").write_text("")
    for path in orphans[1:] + keep:
        path.write_text("")
    for path in orphans + keep[2:]:
        os.utime(path, (old, old))
    cbuild.compile_library(ANSWER.replace("ANSWER", "3"), "orphans")
    assert not any(path.exists() for path in orphans)
    assert all(path.exists() for path in keep)


def test_only_ssmcs_own_temporaries_are_removed(tmp_path):
    """With SSMC_CACHE_DIR=$HOME, ~/c/ is the user's: a name like an old mkstemp one
    (`.notes-abcdefgh`) is not enough; ssmc removes `.ssmc-tmp-` files and flat directories, and the
    exact `.kernels_c-XXXXXXXX.so/.c` files of older versions in c/, never anything else."""
    old = time.time() - 2 * cache.ORPHAN_AGE_S
    removed, kept = [], []
    for kind in ("packages", "c"):
        directory = tmp_path / kind
        directory.mkdir()
        (directory / ".notes-abcdefgh").mkdir()
        (directory / ".notes-abcdefgh" / "mine.txt").write_text("precious")
        (directory / ".todo-abcdefgh.c").write_text("precious")
        (directory / ".kernels_c-abcdefgh").mkdir()                      # a legacy-like directory
        (directory / ".ssmc-tmp-nested").mkdir()                          # ssmc's are flat
        (directory / ".ssmc-tmp-nested" / "sub").mkdir()
        (directory / ".ssmc-tmp-link").symlink_to(directory / ".notes-abcdefgh")
        (directory / ".ssmc-tmp-stage-x1").mkdir()
        (directory / ".ssmc-tmp-stage-x1" / "__init__.py").write_text("")
        (directory / ".ssmc-tmp-probe-x2").write_text("")
        (directory / ".kernels_c-a1b2c3d4.so").write_text("")
        kept += [directory / name for name in (".notes-abcdefgh", ".notes-abcdefgh/mine.txt", ".todo-abcdefgh.c",
                                               ".kernels_c-abcdefgh", ".ssmc-tmp-nested/sub", ".ssmc-tmp-link")]
        removed += [directory / ".ssmc-tmp-stage-x1", directory / ".ssmc-tmp-probe-x2"]
        (kept if kind == "packages" else removed).append(directory / ".kernels_c-a1b2c3d4.so")
        for path in directory.iterdir():
            os.utime(path, (old, old), follow_symlinks=False)
        cache.clean_orphans(directory)
    assert [path for path in removed if os.path.lexists(path)] == []
    assert [path for path in kept if not os.path.lexists(path)] == []


def test_build_message_levels(tmp_path):
    """ssmc sets no logger level: unconfigured, the line is on stderr; a configured root logger's
    level decides (WARNING hides it, INFO shows it once); setLevel(WARNING) on `ssmc` silences it."""
    script = """
        import logging, sys
        from ssmc.runtime import cache
        def step(name):
            print(f"--{name}--", file=sys.stderr, flush=True)
            cache.announce("building %s", name)
        step("unconfigured")
        logging.basicConfig(level=logging.WARNING)
        step("basic-warning")
        logging.basicConfig(level=logging.INFO, force=True)
        step("basic-info")
        logging.getLogger("ssmc").setLevel(logging.WARNING)
        step("basic-info-ssmc-warning")
        logging.root.handlers.clear()                    # unconfigured again, ssmc still at WARNING
        logging.root.setLevel(logging.WARNING)
        step("ssmc-warning")
        print("--end--", file=sys.stderr, flush=True)
    """
    err = python(script).stderr
    parts = dict(re.findall(r"--([a-z-]+)--\n(.*?)(?=--[a-z-]+--)", err, re.S))
    assert parts == {"unconfigured": "ssmc: building unconfigured\n", "basic-warning": "",
                     "basic-info": "INFO:ssmc.build:building basic-info\n", "basic-info-ssmc-warning": "",
                     "ssmc-warning": ""}, err


def test_a_cc_that_is_not_found_warns_once_and_names_the_compiler_used(monkeypatch):
    missing = f"ssmc-no-such-cc-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CC", f"{missing} -O2")
    monkeypatch.setattr(backend.shutil, "which", lambda name: "/usr/bin/gcc" if name == "gcc" else None)
    with pytest.warns(backend.CompilerWarning, match=re.escape(f"CC='{missing} -O2' names no program found on "
                                                               f"PATH; using /usr/bin/gcc instead")) as caught:
        line = sys._getframe().f_lineno + 1
        assert backend.c_compiler() == ("/usr/bin/gcc",)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # once per CC value
        assert backend.c_compiler() == ("/usr/bin/gcc",)
    monkeypatch.setenv("CC", missing)
    monkeypatch.setattr(backend.shutil, "which", lambda name: None)
    with pytest.warns(backend.CompilerWarning, match="no other C compiler .* so the torch backend is used"):
        assert backend.c_compiler() is None


def test_sha256_file_hashes_regular_files_only(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    assert cache.sha256_file(tmp_path / "f") == cache.sha256_bytes(b"abc") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert [cache.sha256_file(tmp_path / name) for name in ("link", "d", "fifo", "absent")] == [None] * 4


@needs_cc
def test_a_build_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    source = ANSWER.replace("ANSWER", "11")
    with caplog.at_level(logging.INFO, logger="ssmc"):
        before = cbuild.build_count()
        path = cbuild.compile_library(source, "loud")
        cbuild.compile_library(source, "loud")
    lines = [r.getMessage() for r in caplog.records if r.name == "ssmc.build"]
    assert len(lines) == 1 and "compiling C kernels" in lines[0] and str(tmp_path / "c") in lines[0], lines
    assert cbuild.build_count() == before + 1 and path.is_file()


@needs_cc
def test_build_message_on_stderr_and_how_to_silence_it(tmp_path):
    script = """
        import logging, sys
        if sys.argv[2] == "quiet":
            logging.getLogger("ssmc").setLevel(logging.WARNING)
        from ssmc.runtime import cbuild
        cbuild.compile_library("int ssmc_x(void) { return 1; }\\n", sys.argv[1])
    """
    loud = python(script, "loud", "loud", env={"SSMC_CACHE_DIR": str(tmp_path)}).stderr
    assert loud.count("ssmc: compiling C kernels from loud") == 1, loud
    assert python(script, "quiet", "quiet", env={"SSMC_CACHE_DIR": str(tmp_path)}).stderr == ""


def test_package_generation_is_announced(fresh_cache, caplog, backend):
    backend("torch")
    spec = ssmc.presets.mamba(d_state=4, name=f"announced_{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.INFO, logger="ssmc"):
        compiler.compile_package(spec)
    lines = [r.getMessage() for r in caplog.records if r.name == "ssmc.build"]
    assert len(lines) == 1 and f"generating the package of spec '{spec.name}'" in lines[0], lines


@needs_cc
def test_run_compiled_example_tells_a_build_from_a_cache_hit(tmp_path, monkeypatch, capsys, backend):
    import importlib.util

    from ssmc import cli
    backend("c")
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path / "cache"))           # nothing built yet
    assert cli.main(["compile", str(ROOT / "examples" / "mamba.py"), "-o", str(tmp_path / "build")]) == 0
    loader = importlib.util.spec_from_file_location("run_compiled_example", ROOT / "examples" / "run_compiled.py")
    example = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(example)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        capsys.readouterr()
        example.main(str(tmp_path / "build"), "mamba")
        first = capsys.readouterr().out
        example.main(str(tmp_path / "build"), "mamba")
        second = capsys.readouterr().out
    finally:
        sys.modules.pop("mamba", None)
    assert "with the kernel build" in first and "no kernel build" in second, (first, second)
