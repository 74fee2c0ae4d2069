"""Is a file a PyTorch checkpoint at all? Said before torch is asked, whose answer for a
README or a JPEG is a long paragraph about `weights_only` (issue 27, trap 6).

`what_it_is(head, zip_names)` is a pure function of the file's first bytes (and, for a
zip archive, its member names); `sniff(path)` reads them. A file `torch.save` wrote is
either a zip archive holding `<name>/data.pkl` (the default since torch 1.6) or a pickle
starting with torch's legacy magic number.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Sequence

from models.oracle.networks import ModelLoadError

# pickle protocol 2, then the long 0x1950a86a20f9469cfc6c (torch/serialization.py MAGIC_NUMBER)
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
ZIP_MAGIC = b"PK\x03\x04"
HEAD_BYTES = 64


class NotACheckpoint(ModelLoadError):
    """The file is no `torch.save` output; `what` says what it looks like."""

    def __init__(self, path, what: str):
        self.path, self.what = path, what
        super().__init__(f"{path} is not a PyTorch checkpoint ({what})")


def what_it_is(head: bytes, zip_names: Optional[Sequence[str]] = None) -> Optional[str]:
    """None when `head` (the file's first bytes) starts a PyTorch checkpoint; otherwise what
    the file looks like, in a few words. `zip_names`: the members, when it is a zip archive."""
    if not head:
        return "an empty file"
    if head.startswith(ZIP_MAGIC):
        if zip_names is not None and not any(n.endswith("/data.pkl") or n == "data.pkl" for n in zip_names):
            return "a zip archive without the data.pkl torch.save writes"
        return None
    if head.startswith(LEGACY_MAGIC[: len(head)]) and len(head) >= 4:
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, not one torch.save wrote"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"a text file beginning {first[:40]!r}"
    return f"binary data beginning {head[:8]!r}"


def sniff(path: Path) -> None:
    """Raise `NotACheckpoint` unless `path` looks like a PyTorch checkpoint."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    names = None
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise NotACheckpoint(path, "a damaged zip archive") from None
    what = what_it_is(head, names)
    if what is not None:
        raise NotACheckpoint(path, what)
