"""Host-side linear algebra on one BLAS thread.

Why: numpy's OpenBLAS starts as many threads as there are cores, and on the small matrices the
results computations factor (a dev slice of 277 x 64 to 1,000 x 1,024: the representation
measures' SVDs) its threads wait on one another: measured on a 2-core machine that another
process kept busy, one SVD of 277 x 64 took 0.42 s of CPU with the default threads and 0.002 s
with one, and 1,000 x 1,024 took 2.1 s against 0.54 s (scripts/bench_representations.py and
BUILD_NOTES "One BLAS thread"). A study's host-side numbers come after the accelerator's work,
often beside other processes (test workers, a second study), so one thread is the safe choice.
The limit holds only inside the decorated call; the caller's own setting is restored after.
"""
import functools

from threadpoolctl import threadpool_limits


def one_thread(fn):
  """`fn` with BLAS (OpenBLAS, MKL, BLIS) limited to one thread while it runs."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with threadpool_limits(limits=1, user_api="blas"):
      return fn(*args, **kwargs)
  return wrapped
