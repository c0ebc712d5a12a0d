"""The prompt set: prompts/manifest.yaml and the audio files it names (SPEC R4).

Prompts are data: code names prompt ids, the manifest maps each id to a file
and its words per language, and these tests keep the two in step. Regenerate the audio
with scripts/render-prompts.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path, PurePosixPath

import pytest
import yaml

from ivr.prompts import PROMPT_IDS

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
MANIFEST = PROMPTS_DIR / "manifest.yaml"

# Ids the call flows play (the config refuses to start without them): every language
# in the manifest must provide all of them.
REQUIRED_IDS = frozenset(PROMPT_IDS)

# SPEC R4, word for word.
SPEC_OFFER = (
    "Current wait times are longer than expected. If you would like a call back, please "
    "press 1 or continue to wait for the next available representative."
)
SPEC_CONFIRMATION = (
    "You have requested a callback. We'll call you back as soon as a representative is "
    "available. Goodbye!"
)

MIN_SECONDS = 0.3
MAX_SECONDS = 15.0

# WAVE_FORMAT_PCM. Asterisk's format_wav only plays tag 1 (not WAVE_FORMAT_EXTENSIBLE),
# mono, 16-bit, 8000 Hz, from a file with a lowercase .wav extension.
WAVE_FORMAT_PCM = 1


def _load_manifest() -> dict[str, dict[str, dict[str, str]]]:
    raw: object = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and raw, "manifest: expected language -> prompts"
    manifest: dict[str, dict[str, dict[str, str]]] = {}
    for lang, prompts in raw.items():
        assert isinstance(lang, str), f"manifest: language {lang!r} is not a string"
        assert isinstance(prompts, dict), f"manifest: {lang}: expected id -> entry"
        manifest[lang] = {}
        for prompt_id, entry in prompts.items():
            where = f"manifest: {lang}.{prompt_id}"
            assert isinstance(prompt_id, str), f"{where}: id is not a string"
            assert isinstance(entry, dict), f"{where}: expected a mapping"
            assert set(entry) == {"file", "text"}, f"{where}: expected exactly file and text"
            file, text = entry["file"], entry["text"]
            assert isinstance(file, str) and isinstance(text, str), f"{where}: not strings"
            manifest[lang][prompt_id] = {"file": file, "text": text}
    return manifest


def _entries() -> list[tuple[str, str, str]]:
    return [
        (lang, prompt_id, entry["file"])
        for lang, prompts in _load_manifest().items()
        for prompt_id, entry in prompts.items()
    ]


def _fmt_tag(path: Path) -> int:
    """Audio format tag of the RIFF/WAVE file's fmt chunk."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", f"{path.name}: not RIFF/WAVE"
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        if chunk_id == b"fmt ":
            assert size >= 16, f"{path.name}: short fmt chunk"
            (tag,) = struct.unpack_from("<H", data, offset + 8)
            return int(tag)
        offset += 8 + size + (size & 1)  # chunks are word aligned
    raise AssertionError(f"{path.name}: no fmt chunk")


def test_manifest_languages_and_ids() -> None:
    manifest = _load_manifest()
    assert "en" in manifest
    for lang, prompts in manifest.items():
        missing = REQUIRED_IDS - set(prompts)
        assert not missing, f"{lang}: missing prompt ids {sorted(missing)}"
        assert set(prompts) == set(manifest["en"]), f"{lang}: ids differ from en"


def test_manifest_entries_are_well_formed() -> None:
    for lang, prompts in _load_manifest().items():
        for prompt_id, entry in prompts.items():
            where = f"{lang}.{prompt_id}"
            assert entry["text"].strip(), f"{where}: empty text"
            assert not any(c in entry["text"] for c in "\t\r\n"), f"{where}: one line only"
            path = PurePosixPath(entry["file"])
            assert not path.is_absolute() and ".." not in path.parts, f"{where}: outside"
            assert not path.suffix, f"{where}: file is named without extension"


def test_spec_r4_texts_are_exact() -> None:
    en = _load_manifest()["en"]
    assert en["offer"]["text"] == SPEC_OFFER
    assert en["confirmation"]["text"] == SPEC_CONFIRMATION


@pytest.mark.parametrize(("lang", "prompt_id", "file"), _entries())
def test_prompt_file_plays_in_asterisk(lang: str, prompt_id: str, file: str) -> None:
    path = PROMPTS_DIR / f"{file}.wav"
    assert path.is_file(), f"{lang}.{prompt_id}: {path} missing (run scripts/render-prompts)"
    assert _fmt_tag(path) == WAVE_FORMAT_PCM
    with wave.open(str(path), "rb") as wav:
        assert wav.getframerate() == 8000
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        seconds = wav.getnframes() / wav.getframerate()
    assert MIN_SECONDS <= seconds <= MAX_SECONDS, f"{lang}.{prompt_id}: {seconds:.2f} s"
