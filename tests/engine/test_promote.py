"""Build once, promote: a kept build output delivered to other servers, byte for byte, with
no fetch and no build (builds.engine.artefacts, pipeline.promote), against real sshd targets
and a real Git repository."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.artefacts import ArtefactStore
from builds.engine.build import BuildCommandSpec
from builds.engine.errors import ArtefactCorrupt, ArtefactMissing
from tests.support.engine import RecordingReporter, deploy_spec, server_for, tree_digest

# Each build writes a value no second run could repeat: a promote that built again would show.
STAMP = BuildCommandSpec(
    command="date +%s%N > built-at.txt; head -c 16 /dev/urandom | od -x > noise.txt"
)


def _repo(git_repo_factory):
    repo = git_repo_factory()
    sha = repo.commit(
        {
            "index.html": "<h1>v1</h1>\n",
            "assets/app.js": "console.log(1)\n",
            "bin/run": "#!/bin/sh\n",
        },
        "v1",
        executable=["bin/run"],
        symlinks={"home.html": "index.html"},
    )
    return repo, sha


def _live(target) -> Path:
    return (target.deploy_path / "current").resolve()


def _staging(sshd_factory, git_repo_factory, tmp_path):
    repo, sha = _repo(git_repo_factory)
    staging, production = sshd_factory(), sshd_factory()
    store = ArtefactStore(tmp_path / "artefacts")
    spec = deploy_spec(
        repo,
        tmp_path,
        [server_for(staging, 1, environment="staging")],
        sha,
        build={"build_commands": (STAMP,)},
        artefacts=store,
    )
    result = pipeline.deploy(spec, RecordingReporter())
    assert result.ok, result.servers[0].error
    assert result.artefact is not None
    return repo, sha, staging, production, store, spec, result


def _promotion(spec, store, result, production, tmp_path, **overrides):
    promoted = dataclasses.replace(
        spec,
        deployment_id=2,
        servers=(server_for(production, 2, environment="production"),),
        started_at=None,
        **overrides,
    )
    artefact = pipeline.PromotedArtefact(
        store=store,
        digest=result.artefact.digest,
        revision=result.revision,
        source_deployment_id=1,
        scratch_dir=tmp_path / "promote-scratch",
    )
    return promoted, artefact


def test_it_promotes_byte_identical_files_with_no_fetch_and_no_build(
    sshd_factory, git_repo_factory, tmp_path
):
    repo, sha, staging, production, store, spec, result = _staging(
        sshd_factory, git_repo_factory, tmp_path
    )
    # The repository moves on, and the mirror is gone: a promote needs neither.
    repo.commit({"index.html": "<h1>v2</h1>\n"}, "v2")
    shutil.rmtree(tmp_path / "mirror.git")
    promoted, artefact = _promotion(spec, store, result, production, tmp_path)
    reporter = RecordingReporter()
    outcome = pipeline.promote(promoted, artefact, reporter)

    assert outcome.ok, outcome.servers[0].error
    assert outcome.revision == sha
    assert tree_digest(_live(production)) == tree_digest(_live(staging))
    assert (_live(production) / "built-at.txt").read_bytes() == (
        _live(staging) / "built-at.txt"
    ).read_bytes()
    assert os.access(_live(production) / "bin" / "run", os.X_OK)
    assert os.readlink(_live(production) / "home.html") == "index.html"
    steps = [name for name, _server, _outcome in reporter.steps]
    assert "fetch" not in steps and "checkout" not in steps and "build" not in steps
    assert "$ date" not in reporter.text
    assert (
        f"Promoting artefact of deployment #1 (revision {sha[:12]}): no fetch, no build; "
        in reporter.text
    )
    assert not (tmp_path / "mirror.git").exists()
    assert not (tmp_path / "promote-scratch" / "artefact").exists()


def test_it_refuses_a_tampered_artefact_and_sends_nothing(sshd_factory, git_repo_factory, tmp_path):
    _, _, _, production, store, spec, result = _staging(sshd_factory, git_repo_factory, tmp_path)
    manifest = store.manifest(result.artefact.digest)
    victim = store.object_path(manifest["index.html"].digest)
    os.chmod(victim, 0o644)
    victim.write_text("<h1>tampered</h1>\n")
    promoted, artefact = _promotion(spec, store, result, production, tmp_path)

    with pytest.raises(ArtefactCorrupt, match=r"index\.html .* does not match its manifest"):
        pipeline.promote(promoted, artefact, RecordingReporter())
    assert not (production.deploy_path / "releases").exists()


def test_it_refuses_an_artefact_removed_by_retention(sshd_factory, git_repo_factory, tmp_path):
    _, _, _, production, store, spec, result = _staging(sshd_factory, git_repo_factory, tmp_path)
    removed = store.remove([result.artefact.digest])
    assert removed.manifests == 1 and removed.objects > 0
    assert not any(path.is_file() for path in store.objects.rglob("*"))
    promoted, artefact = _promotion(spec, store, result, production, tmp_path)

    with pytest.raises(ArtefactMissing, match="not in the artefact store"):
        pipeline.promote(promoted, artefact, RecordingReporter())
    assert not (production.deploy_path / "releases").exists()


def test_it_stores_only_new_digests(tmp_path):
    from builds.engine.build import BuildOutput
    from builds.engine.manifest import Manifest

    first = tmp_path / "first"
    (first / "a").mkdir(parents=True)
    (first / "a" / "same.txt").write_text("same\n")
    (first / "old.txt").write_text("old\n")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    (second / "old.txt").write_text("new\n")
    store = ArtefactStore(tmp_path / "store")
    one = store.store(BuildOutput("a" * 40, first, Manifest.build(first)))
    two = store.store(BuildOutput("b" * 40, second, Manifest.build(second)))
    assert (one.new_objects, two.new_objects) == (2, 1)
    # The old artefact goes; the object both share stays for the kept one.
    assert store.remove([one.digest]).objects == 1
    out = store.materialise(two.digest, tmp_path / "out", revision="b" * 40)
    # Modes travel in the manifest (the store's objects are read-only); contents are equal.
    assert dict(out.manifest) == dict(Manifest.build(second))
    assert {p: e.digest for p, e in Manifest.build(out.root).items()} == {
        p: e.digest for p, e in out.manifest.items()
    }
