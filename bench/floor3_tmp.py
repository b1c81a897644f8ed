import sys, time, os, runpy
sys.path.insert(0, "/work/main")
import contribute
T = {}
orig_read, orig_write = contribute.Connection._read, contribute.Connection._write
def _read(self):
    try: orig_read(self)
    finally: T["reader"] = time.thread_time()
def _write(self):
    try: orig_write(self)
    finally: T["writer"] = time.thread_time()
contribute.Connection._read, contribute.Connection._write = _read, _write
t0 = time.process_time()
runpy.run_path("/work/main/bench/floor_bulk.py", run_name="__main__")
T["main"] = time.thread_time()
print(T, "startup-before-run %.3f" % t0, file=sys.stderr)
