"""Checks of ``ddpo train`` and ``ddpo sample`` flags that touch the machine, run before any model
loads: can the output folder be written?"""

import os
import tempfile
from pathlib import Path

__all__ = ["check_writable_folder"]


def check_writable_folder(folder: str | os.PathLike[str], *, flag: str) -> None:
    """Check, as the user running ``ddpo``, that ``folder`` can be created (if absent) and
    written: a probe file is created in it, or a probe folder in its nearest existing parent,
    and removed again. Nothing else is left behind; each probe has a unique name, so processes
    that check the same folder at once do not disturb each other.

    Raises:
        ValueError: naming ``flag``, the folder and the operating system's error.
    """
    target = Path(folder).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing == target and target.is_dir():
            handle, probe = tempfile.mkstemp(prefix=".ddpo-write-probe-", dir=target)
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".ddpo-write-probe-", dir=existing))
    except OSError as err:
        reason = f"{err.strerror} ({existing})" if err.strerror else str(err)
        where = "" if existing == target else f" (it would be created inside {existing})"
        raise ValueError(
            f"{flag}: cannot write the folder {target}{where}: {reason}; choose a folder you can "
            "write"
        ) from None
