"""Preparing chat inputs in worker processes (`ServerConfig.prepare_processes`).

Decoding an image, cutting its views and tokenizing hold the GIL in parts (base64, array
conversions); in threads that time is taken from the engine's thread, whose host time per step
then grows. In child processes it is not.

- Spawn, not fork: the server holds CUDA state and threads, which a forked child would inherit
  half-made.
- Each child gets the pixel cap in its initializer and the tokenizer (it pickles) in its first
  call (see `ready`), once, and prepares with `DeepseekOCR.prepare` itself (see `_Preparer`), so
  the inputs are the ones the server's threads would make.
- Results come back as `PreparedInputs` without their pixels going through the pipe: importing
  torch registers its reducers for tensors and storages on multiprocessing's ForkingPickler,
  which ProcessPoolExecutor pickles results with. The child moves each storage into shared
  memory and passes its file descriptor; the parent maps it. Measured on a CPU host, a Gundam
  page (global view and six crops, 21 MB of bf16 pixels): the server process spends 3.5-4 ms
  of CPU per page (submitting, receiving, mapping) instead of the 95-105 ms of preparing it in a
  thread, and instead of 34-41 ms were the tensors pickled as bytes. The pixels of the pages in
  flight therefore live in /dev/shm (give a container room: `--shm-size`), and each request
  holds a descriptor per tensor (five) in the server: `start()` raises the process's soft limit
  on open files to its hard limit.
- Library errors cross as themselves (exceptions pickle as type, args and attributes), so the
  backend answers them with the same 4xx as in a thread. A child that dies breaks the whole
  executor: the request that sees it is answered 503, and a new pool is started for the next
  ones.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from ..ocr import DeepseekOCR
from ..processing.prompt import PreparedInputs
from .errors import ServingError, ShuttingDownError
from .media import decode_data_url

logger = logging.getLogger(__name__)

WARM_TIMEOUT_S = 300.0  # a child's start is its imports (torch, the package), seconds: this bounds a hang
RESTART_RETRY_AFTER_S = 5  # what a client refused by a dead child should wait: about a new child's start


class PreparationFailedError(ServingError):
    """A preparing process died (killed, out of memory, a crash in a decoder): not the request's
    fault as far as the server can tell, so 503 and a retry."""

    status = 503
    kind = "server_unavailable"


class _Preparer:
    """What `DeepseekOCR.prepare` reads from its model, the tokenizer and the pixel cap, with
    that very method: the child prepares exactly as `ocr.prepare` does in the server."""

    prepare = DeepseekOCR.prepare

    def __init__(self, tokenizer, max_pixels: int):
        self.tokenizer = tokenizer
        self.max_pixels = max_pixels


_preparer: _Preparer | None = None  # set in each child by `ready`
_max_pixels = 0  # set by `_init`
_started = None  # set by `_init`: the child's copy of its pool's start barrier


def _init(max_pixels: int, started) -> None:
    global _max_pixels, _started
    # One torch thread per child: the processes are the parallelism, and N children each
    # starting one thread per core would oversubscribe the host the engine runs on.
    torch.set_num_threads(1)
    # Tensors cross as file descriptors (the sender chooses; Linux's default, set for other
    # hosts). Not "file_system": its torch_shm_manager daemon, started from this child, inherits
    # the child's pipes, among them the one whose closing tells the parent the child died, so a
    # dead child would go unnoticed and its requests would wait forever.
    if "file_descriptor" in torch.multiprocessing.get_all_sharing_strategies():
        torch.multiprocessing.set_sharing_strategy("file_descriptor")
    _max_pixels, _started = max_pixels, started


def ready(tokenizer) -> int:
    """Run `processes` times when a pool starts, each call in another child (it waits at the
    barrier for the others, so no child can take two): gives the child the tokenizer, and
    returns once every child has started.

    The tokenizer comes this way, through the call queue, rather than as an argument of the
    initializer: there its pickle (~5 MB) would follow the reference to this module in the
    child's start-up data, so writing it would wait for the child to import the package (~2 s),
    and the children would start one after another."""
    global _preparer
    _preparer = _Preparer(tokenizer, _max_pixels)
    _started.wait(WARM_TIMEOUT_S)
    return os.getpid()


def prepare(data: bytes | None, prompt: str, mode) -> PreparedInputs:
    """In a child: `ocr.prepare(data, prompt, mode)` with the views as uint8 levels (as the
    server's threads prepare them)."""
    if _preparer is None:
        raise RuntimeError("prepare_pool.prepare runs in a pool's child process only")
    return _preparer.prepare(data, prompt, mode, pixel_codes=True)


def prepare_data_url(url: str, param: str, prompt: str, mode) -> PreparedInputs:
    """In a child: decode a `data:` URL (its MalformedRequestError crosses as it is), then
    `prepare`. The base64 decoding is done here rather than in the server, where it holds the
    GIL for milliseconds per page."""
    return prepare(decode_data_url(url, param), prompt, mode)


def _raise_open_files_limit() -> None:
    """Soft limit on open files := the hard one: a request holds five descriptors (its tensors'
    shared memory) for its whole life, and 256 slots plus a queue of 256 need 2,560, past the
    1,024 many hosts set by default. Raising a soft limit up to the hard one needs no privilege."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            logger.info("open files limit raised from %d to %d for the preparing processes' results", soft, target)
        except (ValueError, OSError) as err:
            logger.warning("could not raise the open files limit (%d): %s", soft, err)


class PreparePool:
    """A ProcessPoolExecutor of `processes` spawned children that prepare chat inputs.

    Call `start()` (blocks until every child is up), `await run(fn, *args)` from the event
    loop with `prepare` or `prepare_data_url`, and `shutdown()`.
    """

    def __init__(self, processes: int, tokenizer, max_pixels: int):
        self.processes = processes
        self.tokenizer, self.max_pixels = tokenizer, max_pixels
        self._executor: ProcessPoolExecutor | None = None
        self.pids: list[int] = []  # the children's process ids (for tests and diagnostics)
        self._restarting: asyncio.Future | None = None
        self._closed = False

    def _new_executor(self) -> tuple[ProcessPoolExecutor, list[int]]:
        """A new pool whose children have all started, and their pids (blocking: run it off the
        event loop once serving). Submitting spawns a child while none is idle, so `processes`
        calls at once start them all, and the pool never spawns again while it lives."""
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_init,
                                       initargs=(self.max_pixels, context.Barrier(self.processes)))
        try:
            futures = [executor.submit(ready, self.tokenizer) for _ in range(self.processes)]
            done, pending = wait(futures, timeout=WARM_TIMEOUT_S)
            if pending:
                raise TimeoutError(f"preparing processes did not start within {WARM_TIMEOUT_S:g} s")
            pids = sorted(f.result() for f in done)  # raises BrokenProcessPool if a child failed to start
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        logger.info("%d preparing process(es) started (pids %s)", self.processes, pids)
        return executor, pids

    def start(self) -> None:
        if self._executor is None:
            self._closed = False
            _raise_open_files_limit()
            self._executor, self.pids = self._new_executor()

    async def run(self, fn, *args):
        """`fn(*args)` in a child. Raises PreparationFailedError (503) if the child died, and
        starts a new pool; requests arriving while it starts wait for it."""
        if self._restarting is not None:
            await asyncio.wait({self._restarting})
        executor = self._executor
        if executor is None or self._closed:
            raise ShuttingDownError("the server is not running")
        try:
            future: Future = executor.submit(fn, *args)
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._restart(executor)
            raise PreparationFailedError("a process preparing requests stopped unexpectedly; retry the request",
                                         headers={"Retry-After": str(RESTART_RETRY_AFTER_S)}) from None

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        """Replace `broken` once, however many requests saw it break."""
        if self._executor is not broken or self._restarting is not None or self._closed:
            return
        logger.error("a preparing process died; starting a new pool of %d", self.processes)
        broken.shutdown(wait=False, cancel_futures=True)
        self._restarting = asyncio.get_running_loop().run_in_executor(None, self._new_executor)
        self._restarting.add_done_callback(self._restarted)

    def _restarted(self, task: asyncio.Future) -> None:
        self._restarting = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # the next request that finds the old pool broken tries again
            logger.error("could not start new preparing processes: %r", error)
            return
        executor, pids = task.result()
        if self._closed:
            executor.shutdown(wait=False, cancel_futures=True)
        else:
            self._executor, self.pids = executor, pids

    def shutdown(self) -> None:
        """Stop the children (a preparation they are running is waited for)."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            self.pids = []
