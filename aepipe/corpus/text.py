"""Document bytes -> text: an encoding fallback and the checks that quarantine bad documents.
(Text -> vectors is aepipe.features.text.)"""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass

from aepipe.corpus.base import BadItem

log = logging.getLogger(__name__)

# Share of control characters (other than whitespace) above which decoded text is not text.
MAX_CONTROL_SHARE = 0.05
_DECLARED = re.compile(rb"""(?:charset|coding)\s*[:=]\s*["']?([-\w.:]+)""", re.IGNORECASE)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str  # the codec that decoded it; "latin-1 (fallback)" when nothing else did


def _codec(name: str) -> str | None:
    try:
        return codecs.lookup(name.decode("ascii", "ignore") if isinstance(name, bytes) else name).name
    except LookupError:
        return None


def _detect(data: bytes) -> str | None:
    """charset-normalizer's guess, when it is installed (it is optional)."""
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        return None
    best = from_bytes(data[:65_536]).best()
    return best.encoding if best is not None else None


def decode_text(
    data: bytes, declared: str | None = None, max_bytes: int | None = None, check: bool = True
) -> DecodedText:
    """UTF-8 (or the encoding of a byte-order mark), then the declared encoding (``declared``, or a
    ``charset=`` / ``coding:`` declaration near the start), then a detected one, then Latin-1.
    Raises BadItem for binary data, undecodable bytes, empty and oversized documents. ``check=False``
    only decodes: for a file of many documents (a CSV), whose rows are checked one by one."""
    checked = check_text if check else (lambda doc: doc)
    if max_bytes is not None and len(data) > max_bytes:
        raise BadItem(f"document of {len(data)} bytes exceeds corpus.documents.max_doc_bytes {max_bytes}")
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return checked(DecodedText(data.decode(name), name))
            except UnicodeDecodeError:
                raise BadItem(
                    f"undecodable bytes: starts with a {name} byte-order mark but does not decode as {name}"
                ) from None
    if check and b"\x00" in data[:8192]:
        raise BadItem("binary file (NUL bytes)")
    candidates = ["utf-8"]
    found = _DECLARED.search(data[:1024])
    for named in (declared, found.group(1).decode("ascii", "ignore") if found else None):
        codec = _codec(named) if named else None
        if codec and codec not in candidates:
            candidates.append(codec)
    for codec in candidates:
        try:
            return checked(DecodedText(data.decode(codec), codec))
        except (UnicodeDecodeError, LookupError):
            continue
    detected = _detect(data)
    if detected and _codec(detected) not in candidates:
        try:
            return checked(DecodedText(data.decode(detected), _codec(detected) or detected))
        except (UnicodeDecodeError, LookupError):
            pass
    return checked(DecodedText(data.decode("latin-1"), "latin-1 (fallback)"))


def check_text(doc: DecodedText) -> DecodedText:
    """Raise BadItem for text that is empty or mostly control characters (binary data)."""
    text = doc.text
    if not text.strip():
        raise BadItem("empty document")
    sample = text[:65_536]
    if "\x00" in sample:
        raise BadItem("binary data (NUL characters)")
    controls = sum(1 for ch in sample if (ord(ch) < 32 and ch not in "\t\n\r\f\v") or 0x7F <= ord(ch) < 0xA0)
    if controls > MAX_CONTROL_SHARE * len(sample):
        raise BadItem(
            f"undecodable bytes: {controls} of {len(sample)} characters are control characters "
            f"after decoding as {doc.encoding} (binary data?)"
        )
    bad = sample.count("\ufffd")
    if bad > MAX_CONTROL_SHARE * len(sample):
        raise BadItem(f"undecodable bytes: {bad} replacement characters")
    return doc


def snippet(text: str, n_chars: int) -> str:
    """The first ``n_chars`` characters with runs of whitespace collapsed."""
    flat = " ".join(text[: n_chars * 4].split())
    return flat if len(flat) <= n_chars else flat[: n_chars - 1].rstrip() + "…"
