"""Instructions per turn: `threadline serve` under callgrind, a count that does not move with the machine.

`turn_overhead.py` times a turn's CPU, and on a shared VM that figure drifts: one tree against itself moved by up to
5% between runs, so a change that saves 3% cannot be told from noise. Callgrind counts the instructions the server
process executes (all its threads, user space; not the kernel's work for its system calls, nor cache misses),
whatever else the machine does: two trees of the same code measured in one run differed by 0.1-0.2%, one tree
across runs by up to 5% (PostgreSQL; 2.5% SQLite). So the count, both trees in one run, is the figure for an A/B
of a change to the turn's own work; the CPU time stays the figure for round trips and waiting.

Each tree (this checkout, and each `--against` tree) is served under `valgrind --tool=callgrind` on a database of
its own with the stub upstream; one thread gets `--warmup` turns (counts, pools and caches), then the counters are
zeroed, `--turns` turns are made (the same sequential turns as `turn_overhead.py` sends, window 256: a 16-message
context), and the counters are dumped. Under valgrind a turn takes ~50x longer: 200 turns take about two minutes.
Enough turns that a young garbage collection (~150 M instructions, every few hundred turns for a tree whose turns
leave reference cycles) is paid for by the turns that caused it, not by whichever 40 turns it fell into.

    PYTHONPATH=src .venv/bin/python bench/turn_instructions.py [--backends sqlite,postgresql] [--turns 200]
                                                                [--against /tmp/before ...]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import REPO, stop
from turn_overhead import QUESTION, database, start_processes

WINDOW = 256


@dataclass
class Count:
    tree: Path
    backend: str
    instructions: int
    turns: int

    @property
    def per_turn(self) -> float:
        return self.instructions / self.turns


async def count(tree: Path, backend: str, turns: int, warmup: int) -> Count:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        out = workdir / "callgrind.out"
        under = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        async with database(backend, workdir) as url:
            procs, secret, _stub_port, port = await asyncio.to_thread(
                start_processes, url, WINDOW, workdir, backend, 1, tree / "src", under, 600
            )
            server = procs[1]
            try:
                headers = {"X-API-Key": secret}
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                    (await client.post("/v1/threads", json={"id": "bench"}, headers=headers)).raise_for_status()

                    async def turn() -> None:
                        body = {"thread": "bench", "inputs": QUESTION, "maxOutputTokens": 64}
                        response = await client.post("/v1/model/response", json=body, headers=headers)
                        if response.status_code != 200:
                            raise SystemExit(f"turn failed: {response.status_code} {response.text}")

                    for _ in range(warmup):
                        await turn()
                    await _control(server.pid, "--zero")
                    for _ in range(turns):
                        await turn()
                    await _control(server.pid, "--dump")
            finally:
                stop(procs)
            return Count(tree, backend, _instructions(workdir), turns)


def _instructions(workdir: Path) -> int:
    """The instructions of the dump: what ran since the zeroing (the file written at exit, the shutdown's, is left
    out)."""
    dumps = [path for path in workdir.glob("callgrind.out.*") if re.fullmatch(r"callgrind\.out\.\d+", path.name)]
    if len(dumps) != 1:
        raise SystemExit(f"expected one callgrind dump, found {sorted(p.name for p in dumps)}")
    totals = re.search(r"^totals: (\d+)", dumps[0].read_text(errors="replace"), re.MULTILINE)
    if totals is None:
        raise SystemExit(f"no totals in {dumps[0]}")
    return int(totals.group(1))


async def _control(pid: int, action: str) -> None:
    done = await asyncio.to_thread(subprocess.run, ["callgrind_control", action, str(pid)], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"callgrind_control {action} {pid}: {done.stderr.decode()}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--against", type=Path, action="append", default=[], help="another source tree (repeatable)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    trees = [REPO, *args.against]
    # Two at a time: valgrind runs a process on one core, and counts do not depend on what runs beside it.
    jobs = [(tree, backend) for backend in args.backends.split(",") for tree in trees]
    counts: list[Count] = []
    for start in range(0, len(jobs), 2):
        counts += await asyncio.gather(*(count(t, b, args.turns, args.warmup) for t, b in jobs[start : start + 2]))
    print(f"instructions per turn (callgrind, window {WINDOW}, {args.turns} turns after {args.warmup} warm-up)")
    for backend in args.backends.split(","):
        mine = next(c for c in counts if c.backend == backend and c.tree == REPO)
        for one in (c for c in counts if c.backend == backend):
            ratio = "" if one is mine else f"   this tree: {mine.per_turn / one.per_turn:.3f}x of it"
            name = "this tree" if one is mine else str(one.tree)
            print(f"{backend:10} {name:30} {one.per_turn / 1e6:8.2f} M{ratio}")


if __name__ == "__main__":
    asyncio.run(main())
