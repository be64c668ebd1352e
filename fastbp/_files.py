"""Writing files safely, and telling what a file is: the one helper through which fastbp writes every file
(checkpoints, ``--json`` reports, plots, predictions), and the checks of the files it reads.

``atomic_write`` writes to a temporary file next to the target, ``.fastbp-<target name>-<random>.tmp``, flushes
and fsyncs it, renames it over the target, then fsyncs the directory. While it writes, the writer holds an exclusive
``flock`` on its temporary file. A process killed mid-write leaves its temporary file behind, unlocked (the kernel
drops the locks of a dead process); the next write or checkpoint load of the same target removes the temporary files
of that target that nobody holds locked, and no others. The guarantees, as docs/guide/training.md states them:

- a kill (SIGKILL, a crash) at any moment leaves the target either as it was or complete with the new content, never
  partial, and at most one stale temporary file per interrupted write, removed by the next write (or load) of the
  target;
- once the write returned, the new content survives a power loss or an operating-system crash (the file's data is
  fsynced before the rename, the directory's entry after it); a power loss during the write leaves the old or the
  new content on file systems that journal the rename after the data they were told to sync (ext4, XFS, btrfs).

Without ``fcntl`` (Windows) the temporary files are not locked and stale ones are not removed.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock; temporary files are neither locked nor cleaned
    fcntl = None

PREFIX = ".fastbp-"
SUFFIX = ".tmp"
#: The target's name in its temporary files' names is cut to this many characters (file names have at most 255).
NAME_CHARS = 100
_RANDOM_CHARS = 16  # hex digits of the random part


def _temp_prefix(path):
    """The start of ``path``'s temporary files' names: its name, or, when longer than ``NAME_CHARS``, its start and a
    digest of the whole name (two long names that start alike keep apart)."""
    name = os.path.basename(path)
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS - 9] + "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    return f"{PREFIX}{name}-"


def _temp_pattern(path):
    """The names of ``path``'s temporary files: exactly those ``atomic_write`` makes."""
    return re.compile(re.escape(_temp_prefix(path)) + f"[0-9a-f]{{{_RANDOM_CHARS}}}" + re.escape(SUFFIX))


def _target(path):
    """The file a write of ``path`` replaces: a symbolic link's target (written through, as ``open`` and ``np.save``
    do, instead of replacing the link with a file), else ``path``."""
    path = os.fsdecode(path)
    return os.path.realpath(path) if os.path.islink(path) else path


def _directory(path):
    return os.path.dirname(os.path.abspath(path))


def stale_temp_files(path):
    """The temporary files of interrupted writes of ``path`` that no live process holds (full paths)."""
    return _temp_files(path, remove=False)


def remove_stale_temp_files(path):
    """Remove the temporary files of interrupted writes of ``path`` whose writer is gone; returns their paths.

    Only names of ``path``'s own pattern, only regular files, only files nobody holds an ``flock`` on (a live writer
    holds one on its temporary file until it has renamed it): taking the lock without waiting tells that the writer
    has exited, and the file is removed under that lock, after checking that the name still refers to it. Errors
    (a read-only directory, a file that vanished) leave the file alone."""
    return _temp_files(path, remove=True)


def _temp_files(path, remove):
    if fcntl is None:
        return []
    path = _target(path)
    directory, pattern = _directory(path), _temp_pattern(path)
    try:
        names = [name for name in os.listdir(directory) if pattern.fullmatch(name)]
    except OSError:
        return []
    found = []
    for name in names:
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # gone, a symbolic link, or not readable: not ours to judge
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its writer lives
            held = os.fstat(fd)
            current = os.stat(full, follow_symlinks=False)
            if not stat.S_ISREG(held.st_mode) or (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
                continue
            if remove:
                os.unlink(full)
            found.append(full)
        except OSError:  # locked by a live writer (BlockingIOError), renamed or removed meanwhile, or read-only
            continue
        finally:
            os.close(fd)
    return found


def _create_locked_temp(path):
    """A new temporary file for ``path``, open for writing and locked: (fd, name).

    Created with O_EXCL and mode 0o666, so the process's umask gives it the mode a plain ``open`` would (mkstemp makes
    0o600, and reading the umask to widen that means setting it, process-wide, racing other threads' files). Between
    the creation and the lock another process's cleaning may take the unlocked file for a stale one and remove it;
    the name then no longer refers to the locked file, and a new one is made."""
    directory = _directory(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        name = os.path.join(directory, _temp_prefix(path) + secrets.token_hex(_RANDOM_CHARS // 2) + SUFFIX)
        try:
            fd = os.open(name, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, name
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, current = os.fstat(fd), os.stat(name, follow_symlinks=False)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return fd, name
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed by a cleaner before we locked it: try a new name


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable. Some file systems cannot sync a directory (EINVAL): nothing to do."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def check_writable(path, what="output"):
    """Raise OSError (naming ``what`` and ``path``) when ``path`` cannot be written: a missing or unwritable
    directory, or a directory in its place. Checked before long work, so that it fails before it, not after."""
    path = os.fsdecode(path)
    directory = _directory(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {what} {path}: directory {directory} does not exist; create it first")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {what} {path}: it is a directory; give a file name")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path}: directory {directory} is not writable")
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no limit known
        name_max = None
    length = len(os.fsencode(os.path.basename(path)))  # the temporary file's name is cut to fit (_temp_prefix)
    if name_max is not None and name_max > 0 and length > name_max:
        raise OSError(
            f"cannot write {what} {path}: its file name has {length} bytes, but this file system takes at most "
            f"{name_max}; give a shorter name",
        )


def _write_error(err, what, path):
    """An OSError of the temporary file or the rename, as the error of writing ``what`` at ``path``."""
    reason = err.strerror or str(err)
    return type(err)(f"cannot write {what} {path}: {reason[:1].lower()}{reason[1:]}")


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, what="file"):
    """Context manager: a file object whose content replaces ``path`` atomically and durably when the block ends
    without an exception (see the module docstring); on an exception the temporary file is removed and ``path`` is
    left as it was. ``mode``: "wb" or "w" (text, with ``encoding``, default UTF-8). Stale temporary files of ``path``
    are removed first. A symbolic link is written through: its target gets the content, the link stays."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = _target(path)
    check_writable(path, what)
    remove_stale_temp_files(path)
    try:
        fd, tmp = _create_locked_temp(path)
    except OSError as err:
        raise _write_error(err, what, path) from None
    try:
        # the file (and with it the lock) stays open until after the rename: no cleaner can take it before
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise _write_error(err, what, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(_directory(path))


def _strict_json(value):
    """``value`` (dicts, lists, tuples, scalars) with each non-finite float replaced by None: strict JSON has no NaN
    or Infinity (Python's json module would write them, and other readers refuse the file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def save_json(data, path, what="--json"):
    """Write ``data`` to ``path`` as strict JSON (NaN and infinities as null), through ``atomic_write``.
    Returns the path."""
    with atomic_write(path, "w", what=what) as f:
        json.dump(_strict_json(data), f, indent=1, allow_nan=False)
    return path


def save_figure(fig, path, **kwargs):
    """``fig.savefig`` through ``atomic_write``; the format from the extension (PNG when there is none, as
    matplotlib does, which then appends ``.png``). Returns the path written."""
    path = os.fsdecode(path)
    ext = os.path.splitext(path)[1][1:].lower()
    if not ext:
        path, ext = path + ".png", "png"
    with atomic_write(path, "wb", what="plot") as f:
        fig.savefig(f, format=ext, **kwargs)
    return path


# ---------------------------------------------------------------------------------------------- what a file is
_MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip archive
    (b"\x93NUMPY", "npy"),
    (b"\x1f\x8b", "gzip"),
)


def kind(path):
    """What the file at ``path`` is, from its first bytes (see ``kind_of_bytes``). Raises OSError when it cannot
    be read."""
    with open(path, "rb") as f:
        return kind_of_bytes(f.read(512))


def kind_of_bytes(head):
    """What a file starting with the bytes ``head`` is: "empty", "zip" (an .npz is a zip archive), "npy", "pickle",
    "gzip", "text" or "binary"."""
    if not head:
        return "empty"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # the PROTO opcode of pickle protocols 2 to 5
        return "pickle"
    if b"\x00" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the bytes read
            return "binary"
    return "text"


DESCRIPTIONS = {
    "empty": "an empty file",
    "npy": "a NumPy .npy file (a single array)",
    "pickle": "a Python pickle (fastbp never loads pickles: loading one can run any code)",
    "gzip": "a gzip-compressed file",
    "text": "a text file",
    "binary": "a binary file that is not a zip archive",
}


def read_npz(path, what):
    """Every array of the ``.npz`` archive at ``path``, as a dict, read with ``allow_pickle=False``.

    Raises FileNotFoundError (and the other OSErrors of opening a file), or ValueError saying what the file is
    instead and that ``what`` (e.g. "a fastbp checkpoint") was expected: another kind of file, a truncated or damaged
    archive, or an entry that is not a plain array (an object array, which only pickle could read: it is refused,
    never unpickled)."""
    path = os.fsdecode(path)
    found = kind(path)
    if found != "zip":
        raise ValueError(f"{path} is {DESCRIPTIONS[found]}; expected {what}, an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # zipfile.BadZipFile (no central directory: truncated), ValueError, ...
        raise ValueError(f"{path} is a damaged or truncated .npz archive ({_brief(err)}); expected {what}") from err
    arrays = {}
    with archive:
        for name in archive.files:
            try:
                value = archive[name]
            except ValueError as err:
                if "allow_pickle" in str(err):
                    raise ValueError(
                        f"{path}: its entry {name!r} is an object array, which only pickle could read (refused: "
                        f"loading a pickle can run any code); expected {what}, of plain arrays"
                    ) from None
                raise ValueError(f"{path} is a damaged .npz archive ({_brief(err)}); expected {what}") from err
            except Exception as err:  # zipfile.BadZipFile (a bad CRC), EOFError, zlib.error, ...
                raise ValueError(f"{path} is a damaged .npz archive ({_brief(err)}); expected {what}") from err
            if not isinstance(value, np.ndarray):  # a member that is not in the .npy format: numpy gives its bytes
                raise ValueError(f"{path}: its entry {name!r} is not a NumPy array; expected {what}, of plain arrays")
            arrays[name] = value
    return arrays


def _brief(err):
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
