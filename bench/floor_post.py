"""The floor of the project's shape for the one-shot benchmarks: bench/bare_post.py's exchange,
after what `python contribute.py` costs before any line of ours runs, done the way contribute.py
does it:
- compiling contribute.py (Python compiles the script it is started with on every run, and
  caches no bytecode for it), with the garbage collector on, as Python does;
- importing click and websocket-client with the collector off, then freezing what they made
  out of later passes (contribute.py's started()).

What contribute.py spends beyond this figure is its own code: its module body, argument
parsing, the session, its threads and its output.

    python bench/floor_post.py ws://127.0.0.1:PORT/WebSocket
"""
import gc
import os

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, os.pardir, "contribute.py"), encoding="utf-8") as f:
    compile(f.read(), "contribute.py", "exec")
gc.disable()
import click  # noqa: E402,F401
import websocket  # noqa: E402,F401
gc.freeze()
gc.enable()
with open(os.path.join(here, "bare_post.py"), encoding="utf-8") as f:
    exec(compile(f.read(), "bare_post.py", "exec"))
