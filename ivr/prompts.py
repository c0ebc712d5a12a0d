"""Prompts are data (SPEC R4): ids in code, files and words in ``prompts/manifest.yaml``.

The flows name prompt ids only. The manifest maps each id, per language, to a file
(path relative to the prompts folder, without extension: Asterisk picks the format by
extension) and the exact words spoken in it. Every id must exist for every language a
queue uses, and every file must be there: checked at load time, because Asterisk 22
answers a playback of a missing file with 201 and then plays nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from ivr.configdoc import ConfigError, SafeLoader, decode, is_file

# Prompt ids the flows play; each must exist in the manifest for every configured language.
PROMPT_IDS: tuple[str, ...] = (
    "offer",
    "offer_alternate",
    "confirmation",
    "already_scheduled",
    "enter_number",
    "number_readback",
    "confirm_number",
    "invalid_number",
    "back_to_queue",
    "request_failed",
    "unavailable",
    "preview_intro",
    "preview_waited",
    "minutes",
    "preview_accept",
    "callback_failed",
    "verify_customer",
    "connecting",
    # Position and expected wait (queues with announce_on_arrival / announce_with_offer):
    # "You are number <n> in line. The expected wait is about <n> minutes."
    "position_intro",
    "position_in_line",
    "wait_intro",
    "wait_under_minute",
    "wait_about",
    "wait_more_than",
    "minute",
    "wait_unknown",
    # Queues with several languages: the menu at entry (key 1, 2, ... in list order).
    "language_menu",
    # What a caller or customer hears when a step fails (never silence and a hang-up).
    "connect_failed",
    "verify_timeout",
    # A callback answered by an answering machine (queues with answering_machine: message).
    "callback_machine_message",
)

# Formats an operator may drop in under the same name (Asterisk plays any of them).
EXTENSIONS = (".wav", ".gsm", ".ulaw", ".sln")


@dataclass(frozen=True)
class PromptConfig:
    dir: Path
    """Local folder with ``manifest.yaml`` and the files (validated at start)."""
    asterisk_dir: str
    """The same folder as Asterisk sees it (``sound:<asterisk_dir>/<file>``)."""
    language: str
    files: Mapping[str, Mapping[str, str]]
    """language -> prompt id -> file path relative to ``dir``, without extension."""

    def uri(self, prompt_id: str, language: str | None = None,
            overrides: Mapping[str, str] | None = None) -> str:
        rel = (overrides or {}).get(prompt_id)
        if rel is None:
            rel = self.files[language or self.language][prompt_id]
        return f"sound:{self.asterisk_dir.rstrip('/')}/{rel}"


def file_exists(base: Path, rel: str) -> bool:
    return any(is_file(base / f"{rel}{ext}") for ext in EXTENSIONS)


def load_manifest(path: Path, line: int | None) -> dict[str, dict[str, str]]:
    """language -> prompt id -> file. Errors name ``prompts.dir`` and its ``line``."""
    if not is_file(path):
        raise ConfigError(f"no prompt manifest at {path}", "prompts.dir", line)
    try:
        data = yaml.load(decode(path.read_bytes(), str(path)), Loader=SafeLoader)
    except ConfigError as exc:
        raise ConfigError(f"bad prompt manifest {path}: {exc}", "prompts.dir", line) from None
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"cannot read prompt manifest {path}: {exc}", "prompts.dir",
                          line) from None
    if not isinstance(data, dict):
        raise ConfigError(f"prompt manifest {path} must map languages to prompts",
                          "prompts.dir", line)
    out: dict[str, dict[str, str]] = {}
    for lang, prompts in data.items():
        if not isinstance(prompts, dict):
            continue
        out[str(lang)] = {
            str(pid): str(p["file"]) if isinstance(p, dict) and "file" in p else f"{lang}/{pid}"
            for pid, p in prompts.items()
        }
    return out


def check_languages(prompts: PromptConfig, languages: Collection[str],
                    lines: Mapping[str, int]) -> None:
    """Every prompt id, with its file, for every language in use."""
    manifest = prompts.dir / "manifest.yaml"
    dir_line = lines.get("prompts.dir", lines.get("prompts"))
    for language in sorted(languages):
        have = prompts.files.get(language)
        if have is None:
            raise ConfigError(f"no prompts for language {language!r} in {manifest}",
                              "prompts.language", lines.get("prompts.language", dir_line))
        for pid in PROMPT_IDS:
            if pid not in have:
                raise ConfigError(f"prompt {pid!r} missing for {language!r} in {manifest}",
                                  "prompts.dir", dir_line)
            if not file_exists(prompts.dir, have[pid]):
                raise ConfigError(f"prompt file {prompts.dir / have[pid]}.wav does not exist",
                                  "prompts.dir", dir_line)
