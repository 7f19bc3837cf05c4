"""Downloading an execution's result files into the run's spool folder, resumably.

- Each part is streamed to `part-NNNNN.csv.gz.partial`, gzip-compressed on the fly, and renamed to
  `part-NNNNN.csv.gz` once complete; `manifest.json` lists the complete parts. An attempt that finds
  complete parts (a crash, a restart, a retry-upload) downloads only the rest.
- Every stored part starts with exactly one header row. Whether AMC repeats the header in every part
  is unconfirmed: each part's first row is compared with the known column names (`outputColumns`, or
  the first part's header) and a header is written where a part has none.
- Pre-signed links expire (403 AccessDenied): fresh links are fetched, a dead one is never retried.
  A body cut short is fetched again.
- A full disk (or any other OS error writing the spool) removes the partial file and raises
  `SpoolError`, which says where and how much room is left.
- Every file operation runs on a thread, the writes too (a mebibyte at a time): a busy disk blocks even a
  write to the page cache, and the event loop is every other run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import csv
import errno
import functools
import io
import json
import os
import shutil
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from recomamp.amazon.executions import Executions
from recomamp.amazon.lwa import NETWORK_ERRORS
from recomamp.amazon.transport import AmcError, AmcTarget, AmcTransport, TokenSource
from recomamp.logs import get_logger

log = get_logger(__name__)

MANIFEST = "manifest.json"
_HEADER_PEEK_LIMIT = 1 << 20  # a header row longer than this is not a header row
_WRITE_BATCH_BYTES = 1 << 20  # received chunks go to the writer's thread a mebibyte at a time


class SpoolError(Exception):
    """The spool could not be written. Transient from the run's point of view: it is tried again."""

    def __init__(self, path: Path, exc: OSError) -> None:
        free_mb = _free_mb(path)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = f"disk full at {path} ({free_mb} MB free)"
        else:
            message = f"cannot write the spool at {path}: {exc.strerror or exc} ({free_mb} MB free)"
        super().__init__(message)
        self.path = path
        self.free_mb = free_mb


def _free_mb(path: Path) -> int | str:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free // (1 << 20)
        except OSError:
            continue
    return "?"


@dataclass(frozen=True)
class ResultFiles:
    directory: Path
    paths: tuple[Path, ...]  # gzip CSV, each with one header row
    columns: tuple[str, ...]
    size_bytes: int


def part_name(index: int) -> str:
    return f"part-{index:05d}.csv.gz"


def read_manifest(directory: Path) -> dict[str, object] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def kept_result(directory: Path, execution_id: str) -> ResultFiles | None:
    """A complete result of `execution_id` already in `directory`, if there is one."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("execution_id") != execution_id or not manifest.get("complete_result"):
        return None
    parts = int(str(manifest.get("parts", 0)))
    paths = tuple(directory / part_name(i) for i in range(parts))
    if not all(p.is_file() for p in paths):
        return None
    stored = manifest.get("columns")
    columns = tuple(str(c) for c in stored) if isinstance(stored, list) else ()
    return ResultFiles(directory, paths, columns, sum(p.stat().st_size for p in paths))


def _prepare_directory(directory: Path, execution_id: str) -> dict[str, object]:
    """The run's spool folder, with what an earlier attempt left of this execution's result (or nothing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SpoolError(directory, exc) from exc
    manifest = read_manifest(directory) or {}
    if manifest.get("execution_id") != execution_id:
        manifest = {"execution_id": execution_id, "complete": []}
        for stale in directory.glob("part-*"):
            stale.unlink(missing_ok=True)
    return manifest


def _write_manifest(directory: Path, data: dict[str, object]) -> None:
    temporary = directory / f"{MANIFEST}.partial"
    temporary.write_text(json.dumps(data))
    os.replace(temporary, directory / MANIFEST)


def _csv_line(values: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")


class _PartWriter:
    """Writes one part: header handling on the first line, then gzip on the fly, to a .partial file.

    Every method that touches the file runs on a thread. They hold one lock, so that a `discard` after a
    cancelled await waits for the thread still writing (or finishing) instead of closing the file under it.
    A discard says so before it waits for the lock: a batch in progress stops after its current chunk (a stop
    waits for one write, not a mebibyte of them), and a write or finish that comes after does nothing.
    """

    def __init__(self, path: Path, columns: tuple[str, ...] | None) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._lock = threading.Lock()
        self._file = self.partial.open("wb")
        self._gzip = zlib.compressobj(1, zlib.DEFLATED, 31)  # level 1: the network is the bottleneck
        self._columns = columns
        self._head = b""
        self._decided = False
        self._discarding = False  # set by `discard` before it waits for the lock
        self.header: tuple[str, ...] | None = None

    def write_all(self, chunks: Sequence[bytes]) -> None:
        with self._lock:
            for chunk in chunks:
                if self._discarding:
                    return
                self.write(chunk)

    def write(self, chunk: bytes) -> None:
        if not self._decided:
            self._head += chunk
            newline = self._head.find(b"\n")
            if newline < 0 and len(self._head) < _HEADER_PEEK_LIMIT:
                return
            self._decide(newline)
            return
        self._file.write(self._gzip.compress(chunk))

    def _decide(self, newline: int) -> None:
        self._decided = True
        first = self._head[: newline + 1] if newline >= 0 else self._head
        rest = self._head[newline + 1 :] if newline >= 0 else b""
        try:
            row = next(csv.reader([first.decode("utf-8").rstrip("\r\n")]), [])
        except (UnicodeDecodeError, csv.Error):
            row = []
        if self._columns is None:
            # Nothing known yet (no outputColumns, first part): its first row is the header.
            self.header = tuple(row)
            self._file.write(self._gzip.compress(first if first.endswith(b"\n") else first + b"\n"))
        elif [c.strip().lower() for c in row] == [c.lower() for c in self._columns]:
            self.header = tuple(row)
            self._file.write(self._gzip.compress(first))
        else:
            # No header in this part: the first row is data. Write the header it lacks.
            self.header = self._columns
            self._file.write(self._gzip.compress(_csv_line(self._columns) + first))
        if rest:
            self._file.write(self._gzip.compress(rest))
        self._head = b""

    def finish(self) -> int:
        with self._lock:
            if self._discarding:
                raise OSError(errno.ECANCELED, "the part was discarded", str(self.partial))
            if not self._decided:
                self._decide(self._head.find(b"\n"))
            self._file.write(self._gzip.flush())
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.partial, self.path)
            return self.path.stat().st_size

    def discard(self) -> None:
        """Close and remove the partial file. After a `finish` that renamed it, the part stays whole on disk; the
        manifest does not list it, so it is fetched again. Never raises: it runs while another error (or a
        cancel) is on its way up, which must not be replaced."""
        self._discarding = True
        with self._lock:
            # The close flushes what is buffered, into the error that brought us here (a full disk): not news.
            with contextlib.suppress(OSError):
                self._file.close()
            try:
                self.partial.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("amc_result_partial_left", path=str(self.partial), detail=exc.strerror or str(exc))


class Results:
    def __init__(self, transport: AmcTransport, executions: Executions) -> None:
        self._transport = transport
        self._executions = executions

    async def download(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        execution_id: str,
        directory: Path,
        *,
        columns: Sequence[str] = (),
    ) -> ResultFiles:
        """Every result part of `execution_id` in `directory`, downloading only what is not there yet."""
        # Every file operation of the spool on a thread: a busy disk made even an open() of the manifest hold
        # the event loop, which every other run shares, for 80 ms beside a CPU hog.
        kept = await asyncio.to_thread(kept_result, directory, execution_id)
        if kept is not None:
            log.info("amc_result_reused", result_files=len(kept.paths), result_bytes=kept.size_bytes)
            return kept
        manifest = await asyncio.to_thread(_prepare_directory, directory, execution_id)
        stored_complete = manifest.get("complete")
        complete = {int(i) for i in stored_complete} if isinstance(stored_complete, list) else set()
        stored_columns = manifest.get("columns")
        known: tuple[str, ...] | None = tuple(columns) or (
            tuple(str(c) for c in stored_columns) if isinstance(stored_columns, list) and stored_columns else None
        )
        policy = self._transport.policy
        urls = await self._executions.download_urls(target, tokens, execution_id)
        if not urls:
            raise AmcError(f"execution {execution_id} has no result files to download", transient=False)
        link_refreshes = 0
        file_attempts = 0
        index = 0
        while index < len(urls):
            if index in complete and await asyncio.to_thread((directory / part_name(index)).is_file):
                index += 1
                continue
            try:
                header = await self._stream(urls[index], directory / part_name(index), known)
            except _LinkExpired:
                link_refreshes += 1
                if link_refreshes > policy.max_attempts:
                    raise AmcError(
                        "result links kept expiring before they could be fetched", status=403, transient=True
                    ) from None
                log.info("amc_result_link_expired", file_index=index)
                urls = await self._executions.download_urls(target, tokens, execution_id)
                continue
            except _DOWNLOAD_ERRORS as exc:
                file_attempts += 1
                if file_attempts >= policy.max_attempts:
                    raise AmcError(
                        f"result file {index + 1} of {len(urls)} could not be downloaded: {type(exc).__name__}",
                        transient=True,
                    ) from exc
                wait = policy.wait(file_attempts)
                log.warning(
                    "amc_result_download_retry",
                    file_index=index,
                    exception_class=type(exc).__name__,
                    attempt=file_attempts,
                    wait_seconds=wait,
                )
                await self._transport.sleep(wait)
                continue
            except _DownloadFailed as exc:
                raise AmcError(str(exc), status=exc.status, transient=exc.status >= 500) from None
            if known is None:
                known = header
            complete.add(index)
            file_attempts = 0
            await self._save_manifest(directory, execution_id, known, complete, len(urls))
            index += 1
        await self._save_manifest(directory, execution_id, known, complete, len(urls), complete_result=True)
        paths = tuple(directory / part_name(i) for i in range(len(urls)))
        size = await asyncio.to_thread(lambda: sum(os.path.getsize(p) for p in paths))
        log.info("amc_result_downloaded", result_files=len(paths), result_bytes=size)
        return ResultFiles(directory, paths, known or (), size)

    async def _save_manifest(
        self,
        directory: Path,
        execution_id: str,
        columns: tuple[str, ...] | None,
        complete: set[int],
        parts: int,
        *,
        complete_result: bool = False,
    ) -> None:
        try:
            await asyncio.to_thread(
                _write_manifest,
                directory,
                {
                    "execution_id": execution_id,
                    "columns": list(columns or ()),
                    "complete": sorted(complete),
                    "parts": parts,
                    "complete_result": complete_result,
                },
            )
        except OSError as exc:
            raise SpoolError(directory, exc) from exc

    async def _stream(self, url: str, path: Path, columns: tuple[str, ...] | None) -> tuple[str, ...]:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._transport.policy.request_timeout_seconds)
        # Pre-signed links carry their own auth: no AMC headers, and the URL must be sent as given.
        async with self._transport.http.get(URL(url, encoded=True), timeout=timeout) as response:
            if response.status == 403:
                raise _LinkExpired
            if response.status != 200:
                raise _DownloadFailed(f"result file answered HTTP {response.status}", response.status)
            try:
                writer = await asyncio.to_thread(_PartWriter, path, columns)
            except OSError as exc:
                raise SpoolError(path.parent, exc) from exc
            try:
                batch: list[bytes] = []
                batch_bytes = 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    batch.append(chunk)
                    batch_bytes += len(chunk)
                    if batch_bytes >= _WRITE_BATCH_BYTES:
                        await asyncio.to_thread(writer.write_all, batch)
                        batch, batch_bytes = [], 0
                if batch:
                    await asyncio.to_thread(writer.write_all, batch)
                # The fsync waits for the disk, which a busy host makes slow (0.2-0.7 s held the loop in the
                # tests beside a CPU hog): on a thread, as every run's event loop is shared by all the others.
                await asyncio.to_thread(writer.finish)
            except OSError as exc:
                await _discard(writer)
                if isinstance(exc, _NETWORK_OS_ERRORS):
                    raise
                raise SpoolError(path.parent, exc) from exc
            except BaseException:
                await _discard(writer)  # a cancel, too
                raise
            return writer.header or ()


async def _discard(writer: _PartWriter) -> None:
    """Discard `writer`'s part on a thread, after the write or finish still running there. Shielded: a second
    cancel (a lost lease, then the daemon's drain) stops the wait for it, not the discard."""
    # The run's log context goes with it, as asyncio.to_thread's would.
    discard_in_context = functools.partial(contextvars.copy_context().run, writer.discard)
    await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, discard_in_context))


# A body cut short (ClientPayloadError) or a network failure: fetch that file again.
_DOWNLOAD_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientPayloadError, *NETWORK_ERRORS)
# OSErrors that come from the connection, not from the disk.
_NETWORK_OS_ERRORS: tuple[type[OSError], ...] = (ConnectionError, aiohttp.ClientOSError)


class _LinkExpired(Exception):
    pass


class _DownloadFailed(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
