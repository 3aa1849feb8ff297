"""The settings reference on the docs site, generated from the settings models at build time."""

from __future__ import annotations

import importlib.util
from types import ModuleType, SimpleNamespace

import pytest
from mkdocs.exceptions import PluginError

from api.settings import ApiSettings
from devharness.services import ROOT
from realtime.settings import RealtimeSettings
from worker.settings import WorkerSettings

HOOK = ROOT / "docs" / "hooks" / "settings_reference.py"


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    """The mkdocs hook module, loaded from its file as mkdocs loads it."""
    spec = importlib.util.spec_from_file_location("settings_reference", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page(src_uri: str) -> SimpleNamespace:
    return SimpleNamespace(file=SimpleNamespace(src_uri=src_uri))


def _rows(reference: str) -> dict[str, str]:
    """Each variable's table row, by variable name."""
    rows = {}
    for line in reference.splitlines():
        if line.startswith('| <span id="'):
            name = line.split('"')[1].upper()
            assert name not in rows, f"{name} is listed twice"
            rows[name] = line
    return rows


def _section(reference: str, title: str) -> str:
    start = reference.index(f"### {title} ")
    end = reference.find("\n### ", start + 1)
    return reference[start : end if end != -1 else None]


class TestEverySetting:
    """Every field of every service's settings is in the reference once, described."""

    # --8<-- [start:documented]
    def test_every_setting_has_a_description(self, hook: ModuleType) -> None:
        undocumented = [name for name in hook.field_names() if hook.description(name) is None]
        assert undocumented == [], "give these settings fields a docstring"

    # --8<-- [end:documented]

    def test_every_field_of_every_service_is_one_row(self, hook: ModuleType) -> None:
        fields = {
            name.upper()
            for model in (ApiSettings, RealtimeSettings, WorkerSettings)
            for name in model.model_fields
        }
        assert set(_rows(hook.render_reference())) == fields

    def test_a_field_without_a_description_fails_the_build(
        self, hook: ModuleType, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(hook, "description", lambda name: None)
        with pytest.raises(PluginError, match="has no description"):
            hook.render_reference()


class TestReaders:
    """Each variable is listed under the services whose settings read it."""

    def test_shared_and_own_fields_land_in_their_sections(self, hook: ModuleType) -> None:
        reference = hook.render_reference()
        assert "`DATABASE_URL`" in _section(reference, "Every service")
        assert "`WS_SEND_QUEUE_SIZE`" in _section(reference, "Realtime")
        assert "`JOB_LEASE_SECONDS`" in _section(reference, "Worker and scheduler")
        assert "`JOBS_MAX_ACTIVE_PER_USER`" in _section(reference, "API")

    def test_a_default_a_service_overrides_is_shown_per_service(self, hook: ModuleType) -> None:
        row = _rows(hook.render_reference())["SERVICE_NAME"]
        assert "api: `api`; realtime: `realtime`; worker: `worker`" in row


class TestSecrets:
    """A secret's row never shows a value: no default, and nothing from the environment."""

    def test_secrets_show_no_default(self, hook: ModuleType) -> None:
        rows = _rows(hook.render_reference())
        assert "| secret | none (secret) |" in rows["JWT_SECRET"]
        assert "| secret | none (secret) |" in rows["METRICS_TOKEN"]

    def test_values_in_the_environment_never_reach_the_page(
        self, hook: ModuleType, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secret = "builder-environment-secret-0123456789abcdef"
        monkeypatch.setenv("JWT_SECRET", secret)
        monkeypatch.setenv("METRICS_TOKEN", secret)
        monkeypatch.setenv("JOBS_MAX_ACTIVE_PER_USER", "7")
        reference = hook.render_reference()
        assert secret not in reference
        assert "| `20` |" in _rows(reference)["JOBS_MAX_ACTIVE_PER_USER"]


class TestPage:
    """The configuration page's marker becomes the reference; without it the build fails."""

    def test_marker_is_replaced_on_the_configuration_page(self, hook: ModuleType) -> None:
        page = hook.on_page_markdown(
            f"# Configuration\n\n{hook.MARKER}\n", page=_page(hook.PAGE), config=None, files=None
        )
        assert hook.MARKER not in page
        assert "### Every service {#every-service}" in page

    def test_configuration_page_without_the_marker_fails(self, hook: ModuleType) -> None:
        with pytest.raises(PluginError, match="exactly once"):
            hook.on_page_markdown(
                "# Configuration\n", page=_page(hook.PAGE), config=None, files=None
            )

    def test_other_pages_are_left_alone(self, hook: ModuleType) -> None:
        text = f"a page quoting {hook.MARKER}"
        assert hook.on_page_markdown(text, page=_page("jobs.md"), config=None, files=None) == text

    def test_the_configuration_page_holds_the_marker(self, hook: ModuleType) -> None:
        page = (ROOT / "docs" / hook.PAGE).read_text()
        assert page.count(hook.MARKER) == 1
