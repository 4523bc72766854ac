"""Where seeds run: a device mesh with a `seeds` axis, and how many seeds share one step.

A seed group's state has a leading seed axis; it is split over the mesh's devices (each device
trains K/D whole seeds, no communication inside the step) whenever K is a multiple of the device
count. Data and the pretrained anchor are replicated. Groups are padded to K with repeats of
their last seed (results discarded), so every group of a study has the same shape and the
whole study compiles one train step.
"""
import dataclasses
import math

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@dataclasses.dataclass
class Layout:
  mesh: Mesh

  @classmethod
  def create(cls, devices=None):
    devices = list(devices or jax.devices())
    return cls(Mesh(np.asarray(devices), ("seeds",)))

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  def seed_sharding(self, k: int):
    """Leading axis over the devices when it divides evenly, else replicated."""
    if k % self.num_devices == 0:
      return NamedSharding(self.mesh, P("seeds"))
    return self.replicated


def bytes_per_seed(num_params: int, batch: int, seq: int, hidden: int, layers: int, heads: int,
                   compute_bytes: int = 4) -> int:
  """Rough training memory of one seed: fp32 params, grads and two Adam moments, plus
  activations kept for the backward pass (about 34·s·h + 5·heads·s² values per layer and
  example, after Korthikanti et al. 2022)."""
  state = 4 * 4 * num_params
  acts = batch * layers * (34 * seq * hidden + 5 * heads * seq * seq) * compute_bytes
  return int(state + acts)


def free_bytes(device) -> int:
  """Free memory of a device, or 0 when the platform does not say (CPU)."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return 0
  limit = stats.get("bytes_limit", 0)
  return max(int(limit) - int(stats.get("bytes_in_use", 0)), 0)


def seeds_per_step(requested: int, num_seeds: int, layout: Layout, per_seed_bytes: int,
                   shared_bytes: int) -> int:
  """K: `requested` if > 0; else as many seeds as fit in 80% of free device memory (all seeds
  when the platform reports no memory), rounded to a multiple of the device count."""
  d = layout.num_devices
  if requested > 0:
    k = requested
  else:
    free = free_bytes(layout.mesh.devices.flat[0])
    if free:
      fit = max(int((0.8 * free - shared_bytes) // max(per_seed_bytes, 1)), 1) * d
      k = min(num_seeds, fit)
      logging.info("seeds_per_step=0: %.2f GB free per device, %.2f GB per seed (estimate) -> K=%d",
                   free / 1e9, per_seed_bytes / 1e9, k)
    else:
      k = num_seeds
  if d > 1 and k % d:
    k = math.ceil(k / d) * d  # pad the group rather than leave devices idle
  return max(k, 1)


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1):
  """Joins a multi-process run. With no arguments on a TPU VM, jax finds its peers itself;
  elsewhere pass the coordinator address, process count and this process's id. CPU processes
  talk through gloo."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by CPU devices
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
  """Only process 0 writes shared files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_host(x) -> np.ndarray:
  """A device array as numpy on every process, gathering shards other processes hold."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
