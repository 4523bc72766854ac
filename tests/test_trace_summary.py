"""scripts/trace_summary.py: device busy/idle time from a Chrome-format profiler trace."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "trace_summary.py"
spec = importlib.util.spec_from_file_location("trace_summary", SCRIPT)
trace_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trace_summary)


def _meta(pid, name, tid=None):
  if tid is None:
    return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}
  return {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}


def test_idle_is_the_gap_between_device_ops_and_host_lanes_are_ignored():
  trace = {"traceEvents": [
      _meta(1, "/host:CPU"), _meta(2, "/device:GPU:0"),
      {"ph": "X", "pid": 1, "tid": 5, "ts": 0, "dur": 1000, "name": "python"},
      {"ph": "X", "pid": 2, "tid": 7, "ts": 100, "dur": 300, "name": "fusion.1"},
      {"ph": "X", "pid": 2, "tid": 8, "ts": 200, "dur": 300, "name": "fusion.2"},  # overlaps
      {"ph": "X", "pid": 2, "tid": 7, "ts": 900, "dur": 100, "name": "fusion.1"},
  ]}
  s = trace_summary.summarize(trace)
  assert s["lanes"] == ["/device:GPU:0"] and s["ops"] == 3
  assert abs(s["span_ms"] - 0.9) < 1e-9 and abs(s["busy_ms"] - 0.5) < 1e-9  # [100,500]+[900,1000]
  assert abs(s["idle"] - (1 - 0.5 / 0.9)) < 1e-9
  assert s["top"][0][0] == "fusion.1" and abs(s["top"][0][1] - 0.4) < 1e-9


def test_cpu_backend_uses_the_xla_threads():
  trace = {"traceEvents": [
      _meta(1, "/host:CPU"), _meta(1, "tf_XLAEigen/1", tid=3), _meta(1, "python", tid=4),
      {"ph": "X", "pid": 1, "tid": 4, "ts": 0, "dur": 50, "name": "dispatch"},
      {"ph": "X", "pid": 1, "tid": 3, "ts": 10, "dur": 10, "name": "dot.1"},
      {"ph": "X", "pid": 1, "tid": 3, "ts": 30, "dur": 10, "name": "dot.2"},
  ]}
  s = trace_summary.summarize(trace)
  assert s["ops"] == 2 and abs(s["idle"] - (1 - 20 / 30)) < 1e-9
  assert "idle 33.3%" in trace_summary.markdown("t", s)
