"""How many threads torch may use here: the policy, in one place.

Two processes that each run torch with as many intra-op threads as the machine has
cores slow each other far more than twice (OpenMP's threads wait for each other at
every operation, and a thread that is not running holds up the rest): on a 2-core
machine with other CPU-bound work running, a PPGN sampler step took 5-20x longer with 2
threads than with 1, and training the demo network 4x longer. So:

* command-line tools (``generator.record``, ``generator.ppgn`` outside the sampler)
  use as many intra-op threads as the process has CPUs
  (:func:`common.cpus.available_cpus`: the affinity mask, the cgroup quota and
  ``$SELECTIVITY_CPUS``), never ``os.cpu_count()`` (:func:`use_available_cpus`);
  ``generator.record`` leaves the cores its image-decoding processes take;
* the PPGN sampler on the CPU runs one batch per available CPU, each in its own thread
  with one intra-op thread (:func:`generator.ppgn.generate`, :func:`worker_pool`): the
  demo's small layers parallelise badly inside an operation and well across batches,
  and the images then do not depend on the CPU count;
* training the demo networks and the demo generator uses :data:`TRAINING_THREADS`
  intra-op threads whatever the machine: how a reduction is split across threads
  changes its rounding, and a few hundred optimizer steps turn that into other weights
  (trained with 1 and with 2 threads, the demo network's weights differ by up to 0.02
  after 40 steps). One thread is what every machine has, so a cache never depends on
  the CPU count and training never oversubscribes. The demo generator and its AM
  measurement still use the CPUs: each batch is cut into a fixed number of parts
  computed in parallel threads and summed in a fixed order
  (:func:`generator.digits_generator.train_demo_generator`), the same bits on 1 CPU or 2.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from common.cpus import available_cpus

__all__ = ["TRAINING_THREADS", "available_cpus", "use_available_cpus", "torch_threads",
           "worker_pool"]

log = logging.getLogger(__name__)

#: Intra-op threads for training the demo networks and generator (fixed: see above).
TRAINING_THREADS = 1


def use_available_cpus() -> int:
    """Set torch's intra-op thread count to the CPUs this process may use; returns it."""
    n = available_cpus()
    torch.set_num_threads(n)
    log.debug("torch: %d intra-op thread(s)", n)
    return n


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def worker_pool(workers: int, threads: int = 1) -> ThreadPoolExecutor:
    """``workers`` threads for torch work, each with ``threads`` intra-op threads from its
    first operation (OpenMP keeps a thread count per thread: a new thread would otherwise
    start with the default, every CPU). torch's operations release the GIL, so the
    threads compute at once."""
    return ThreadPoolExecutor(max(1, workers), thread_name_prefix="torch-worker",
                              initializer=torch.set_num_threads, initargs=(threads,))
